"""bench/runs.py: runs to bug are deterministic and agree with the explorer (tests/test_bugs.py
pins clear-refs-softdirty-no-flush seed 4 at 2 runs, seed 3 at 17)."""

import pytest

from bench import runs
from mmfuzz import explore


def test_runs_per_seed_match_the_explorer(capsys):
    assert runs.main(["--bugs", "clear-refs-softdirty-no-flush", "--seeds", "1,3",
                      "--runs-max", "100", "--per-seed", "--mainline"]) == 0
    out = capsys.readouterr().out
    assert "clear-refs-softdirty-no-flush" in out and " 2/2 " in out
    assert "1:2 3:2" in out and "clean" in out   # 3:17 before the paravirt IRQs-off hold;
    # 1:20 4:2 before the hot page


def test_a_candidate_policy_patches_only_the_measurement(capsys):
    before = explore.swarm_ops
    assert runs.main(["--bugs", "clear-refs-softdirty-no-flush", "--seeds", "1",
                      "--runs-max", "100", "--ops-policy", "geom-2"]) == 0
    assert explore.swarm_ops is before


def test_bad_input_is_one_line_and_exit_2(capsys):
    assert runs.main(["--bugs", "no-such-bug"]) == 2
    assert runs.main(["--seeds", "one"]) == 2
    assert runs.main(["--bugs", "tests.variants:NotThere"]) == 2
    err = capsys.readouterr().err
    assert "unknown bug 'no-such-bug'" in err and "bad --seeds 'one'" in err
    assert "not a subclass" in err and len(err.strip().splitlines()) == 3
    assert runs.main(["--slow-cpu", "0.3"]) == 2
    assert runs.main(["--hot", "hot"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["bench.runs: bad --slow-cpu '0.3'; use SHARE,FACTOR, e.g. 0.3,0.05",
                   "bench.runs: bad --hot 'hot'; use SHARE,P, e.g. 0.8,0.7"]
    assert runs.main(["--ipi-weights", "0.1,1"]) == 2
    assert runs.main(["--ipi-weights", "0,1,3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["bench.runs: bad --ipi-weights '0.1,1'; use three positive weights, e.g. 0.1,1,3",
                   "bench.runs: bad --ipi-weights '0,1,3'; use three positive weights, e.g. 0.1,1,3"]


def test_the_ipi_weights_option_measures_the_old_draw_and_restores_the_default(capsys):
    """zap-rmap-before-flush seed 1: 3,022 runs with the IPI weights before 2026-12-03
    (0.5, 1, 3), 64 with today's; the option patches the measurement only."""
    assert runs.main(["--bugs", "zap-rmap-before-flush", "--seeds", "1", "--runs-max", "100",
                      "--per-seed", "--ipi-weights", "0.5,1,3"]) == 0
    assert explore.IPI_WEIGHTS == (0.1, 1, 3)
    assert " 0/1 " in capsys.readouterr().out
    assert runs.main(["--bugs", "zap-rmap-before-flush", "--seeds", "1", "--runs-max", "100",
                      "--per-seed"]) == 0
    assert "1:64" in capsys.readouterr().out


@pytest.mark.cost(80)
def test_a_variant_by_module_path_is_measured(capsys):
    """MODULE:CLASS measures a variant that is not catalogued, its find the first violation
    of any property: the synthetic race of issue #8 under the hybrid, seed 1, run 8,835
    (tests/test_hybrid.py), mainline clean on as many runs."""
    assert runs.main(["--bugs", "tests.variants:VmaLockRecheckMapped", "--engine", "hybrid",
                      "--seeds", "1", "--runs-max", "8840", "--per-seed", "--mainline"]) == 0
    out = capsys.readouterr().out
    assert "tests.variants:VmaLockRecheckMapped" in out and " 1/1 " in out
    assert "1:8835" in out and "clean" in out   # 1:6611 before the hot page


def test_the_guided_engine_is_measured_with_its_steps(capsys, tmp_path):
    """--engine guided: the same seeds as tests/test_guided.py pins (19 and 16 runs), mainline
    clean on as many guided runs, every row in --out with its model steps."""
    import json
    out_file = tmp_path / "rows.json"
    assert runs.main(["--bugs", "clear-refs-softdirty-no-flush", "--seeds", "3,7",
                      "--runs-max", "100", "--per-seed", "--mainline", "--engine", "guided",
                      "--out", str(out_file)]) == 0
    out = capsys.readouterr().out
    assert "engine guided" in out and "3:19 7:16" in out and "clean" in out
    rows = json.load(open(out_file))["rows"]
    assert [(r["seed"], r["runs"], r["steps"]) for r in rows] == [(3, 19, 2355), (7, 16, 2103)]
    assert all(r["mainline"] is None and r["mainline_steps"] > 0 for r in rows)


def test_a_model_failure_is_saved_reported_and_never_a_find(capsys, tmp_path):
    """A run that raises in the model or the variant (here a synthetic variant that
    dereferences a missing PTE table) ends that seed's measurement: it is saved for `mmfuzz
    replay`, printed with the exception, never counted as found, and the measurement exits 3
    as `mmfuzz fuzz` does. (bench.runs used to die with a traceback and lose every row.)"""
    import json
    import os
    assert runs.main(["--bugs", "tests.variants:ZapNoPmdCheck", "--seeds", "1,2",
                      "--runs-max", "300", "--failures", str(tmp_path)]) == 3
    out = capsys.readouterr().out
    assert " 0/2 " in out and out.count("MODEL FAILURE seed") == 2
    assert "AttributeError: 'NoneType' object has no attribute 'ptl'" in out
    saved = sorted(os.listdir(tmp_path / "failures"))
    assert len(saved) == 2
    data = json.load(open(tmp_path / "failures" / saved[0]))
    assert data["kind"] == "mmfuzz-model-failure" and data["failure"]["type"] == "AttributeError"
    assert data["found"]["engine"] == "bench.runs/swarm"


def test_the_time_to_bug_bench_reports_a_model_failure_and_exits_3(tmp_path, capsys):
    """python -m bench: a seed whose run raises in the model gets a row that did not find,
    a MODEL FAILURE line with the saved file, and the bench exits 3 (it used to die with a
    traceback). The failure comes at run 19 of seed 1 whatever the budget."""
    from bench import harness
    out = tmp_path / "results.md"
    assert harness.main(["--seeds", "1", "--budget", "30", "--engines", "swarm",
                         "--skip-extras", "--bugs", "tests.variants:ZapNoPmdCheck",
                         "--out", str(out)]) == 3
    text = out.read_text()
    assert "| tests.variants:ZapNoPmdCheck (0) | swarm | 0/1 |" in text
    assert "MODEL FAILURE (not a find) tests.variants:ZapNoPmdCheck/swarm seed 1: AttributeError" in text


def test_the_time_to_bug_bench_counts_only_the_bugs_own_property():
    """python -m bench counted any violation on a bug's kernel as its find: dirty-cow's seed 5
    shows dirty-data-preserved first (run 3,004; bench/RESULTS-runs.md, "A hot page") and
    was a find in the 2026-12-03 table. Now it is not, as bench.runs and tests/test_bugs.py
    count; the property is kept as ``other``. A kernel by name counts any violation."""
    from bench import harness
    from mmfuzz.kernels import bug_by_slug
    bug = bug_by_slug("dirty-cow")
    row = {"found": True, "runs": 3004, "t_first": 9.0, "t_report": 9.5, "len": 20, "segs": 3,
           "len_raw": 200, "prop": "dirty-data-preserved"}
    judged = harness.judged(bug, row)
    assert judged["found"] is False and judged["other"] == "dirty-data-preserved"
    assert judged["runs"] == 3004 and harness.summarize([judged], 60)["found"] == "0/1"
    own = dict(row, prop=bug.prop)
    assert harness.judged(bug, own) is own
    variant = harness._bug("tests.variants:FreeBeforeFlush")
    assert harness.judged(variant, row) is row
    # a real seed: the bench's row carries the property it found
    r = harness.one_seed(bug_by_slug("clear-refs-softdirty-no-flush").kernel, "swarm", 4, 30)
    assert r["found"] and r["prop"] == "soft-dirty-accurate" and r["runs"] == 2


def test_the_directed_engine_is_measured_as_hunt_runs_it(capsys):
    """--engine directed: the runs of explore(..., policy="directed"), hunt's default for a
    variant (tests/test_directed.py pins madv-parallel-flush-miss seed 9 at 3 runs)."""
    assert runs.main(["--bugs", "madv-parallel-flush-miss", "--seeds", "9", "--runs-max", "100",
                      "--engine", "directed", "--per-seed"]) == 0
    out = capsys.readouterr().out
    assert "engine directed" in out and "    9:3\n" in out
