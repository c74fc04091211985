"""bench/runs.py: runs to bug are deterministic and agree with the explorer (tests/test_bugs.py
pins clear-refs-softdirty-no-flush seed 1 at 14 runs, seed 4 at 1)."""

from bench import runs
from mmfuzz import explore


def test_runs_per_seed_match_the_explorer(capsys):
    assert runs.main(["--bugs", "clear-refs-softdirty-no-flush", "--seeds", "1,4",
                      "--runs-max", "100", "--per-seed", "--mainline"]) == 0
    out = capsys.readouterr().out
    assert "clear-refs-softdirty-no-flush" in out and " 2/2 " in out
    assert "1:14 4:1" in out and "clean" in out


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


def test_a_variant_by_module_path_is_measured(capsys):
    """MODULE:CLASS measures a variant that is not catalogued, its find the first violation
    of any property: the synthetic race of issue #8 under the hybrid, seed 1, run 517
    (tests/test_hybrid.py), mainline clean on as many runs."""
    assert runs.main(["--bugs", "tests.variants:VmaLockRecheckMapped", "--engine", "hybrid",
                      "--seeds", "1", "--runs-max", "600", "--per-seed", "--mainline"]) == 0
    out = capsys.readouterr().out
    assert "tests.variants:VmaLockRecheckMapped" in out and " 1/1 " in out
    assert "1:517" in out and "clean" in out


def test_the_guided_engine_is_measured_with_its_steps(capsys, tmp_path):
    """--engine guided: the same seeds as tests/test_guided.py pins (12 and 4 runs), mainline
    clean on as many guided runs, every row in --out with its model steps."""
    import json
    out_file = tmp_path / "rows.json"
    assert runs.main(["--bugs", "clear-refs-softdirty-no-flush", "--seeds", "1,4",
                      "--runs-max", "100", "--per-seed", "--mainline", "--engine", "guided",
                      "--out", str(out_file)]) == 0
    out = capsys.readouterr().out
    assert "engine guided" in out and "1:12 4:4" in out and "clean" in out
    rows = json.load(open(out_file))["rows"]
    assert [(r["seed"], r["runs"], r["steps"]) for r in rows] == [(1, 12, 1385), (4, 4, 386)]
    assert all(r["mainline"] is None and r["mainline_steps"] > 0 for r in rows)
