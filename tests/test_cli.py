"""The user contract: commands, exit codes, one-line errors, the corpus round trip."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mmfuzz(*args, cwd=ROOT):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "mmfuzz.cli", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


@pytest.fixture(scope="module")
def hunted(tmp_path_factory):
    """`mmfuzz hunt` from scratch, with a deterministic run budget, saving to a temp dir."""
    d = tmp_path_factory.mktemp("cx")
    # hunt's default for a variant is the directed search (explore.DirectedPolicy): seed 30
    # finds the race at run 225 (tests/test_directed.py; with swarm, seed 19 at run 77,
    # tests/test_bugs.py)
    r = mmfuzz("hunt", "zap-rmap-before-flush", "--seed", "30", "--examples", "500",
               "--save", str(d), "--quiet")
    files = sorted(str(p) for p in d.rglob("*.json"))
    return r, files, d


def test_hunt_finds_saves_and_prints_rmap_before_flush(hunted):
    r, files, d = hunted
    assert r.returncode == 1, r.stderr
    assert len(files) == 1
    out = r.stdout
    assert "VIOLATION dirty-data-preserved" in out
    assert "kernel=bug:zap-rmap-before-flush" in out
    removal = out.index("page_remove_rmap [before flush]")
    assert removal < out.index("folio_mapped() = 0") < out.index("<-- violation")
    assert "replay: mmfuzz replay" in out
    assert os.path.exists(files[0][:-5] + ".txt")
    data = json.load(open(files[0]))
    assert data["format_version"] == 1 and data["kernel"] == "bug:zap-rmap-before-flush"
    assert data["violation"]["property"] == "dirty-data-preserved"
    assert data["found"]["seed"] == 30 and data["schedule"]
    assert "engine=explore/directed" in r.stderr


def test_replay_round_trip(hunted):
    _, files, _ = hunted
    r = mmfuzz("replay", files[0])
    assert r.returncode == 1, r.stdout + r.stderr
    assert "reproduced (dirty-data-preserved)" in r.stdout
    r = mmfuzz("replay", files[0], "--kernel", "mainline")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "clean on mainline" in r.stdout
    r = mmfuzz("show", files[0])
    assert r.returncode == 1 and "<-- violation" in r.stdout


def _one_line_error(r):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("mmfuzz: error: "), r.stderr
    return lines[0]


def test_truncated_file_exits_2_and_is_not_touched(hunted, tmp_path):
    _, files, _ = hunted
    text = open(files[0]).read()
    bad = tmp_path / "cut.json"
    bad.write_text(text[: len(text) // 2])
    before = bad.read_bytes()
    line = _one_line_error(mmfuzz("replay", str(bad)))
    assert "not valid JSON" in line and "cut.json" in line
    assert bad.read_bytes() == before


def test_old_format_version_exits_2(hunted, tmp_path):
    _, files, _ = hunted
    d = json.load(open(files[0]))
    d["format_version"] = 0
    old = tmp_path / "old.json"
    old.write_text(json.dumps(d))
    line = _one_line_error(mmfuzz("replay", str(old)))
    assert "format_version 0" in line and "re-record" in line


@pytest.mark.parametrize("args,needle", [
    (["fuzz", "--kernel", "bug:nope"], "unknown bug"),
    (["fuzz", "--kernel", "linux-2.4"], "unknown kernel"),
    (["fuzz", "--budget", "-1"], "--budget"),
    (["fuzz", "--seed", "x"], "--seed"),
    (["hunt", "no-such-bug"], "unknown bug"),
    (["replay", "/nonexistent/cx.json"], "cannot read"),
    (["frobnicate"], "invalid choice"),
    (["fuzz", "--kernel", "tests.variants:NotThere"], "not a subclass"),
    (["fuzz", "--fast", "--strategy", "rules"], "not a fast-mode strategy"),
    (["fuzz", "--strategy", "round-robin"], "invalid choice"),
])
def test_bad_input_is_one_line_exit_2(args, needle):
    line = _one_line_error(mmfuzz(*args))
    assert needle in line


def test_bugs_lists_catalogue():
    r = mmfuzz("bugs", "--json")
    assert r.returncode == 0
    rows = json.loads(r.stdout)
    assert {"slug": "zap-rmap-before-flush", "kernel": "bug:zap-rmap-before-flush",
            "fix": "5df397dec7c4", "property": "dirty-data-preserved",
            "title": "mm: delay page_remove_rmap() until after the TLB has been flushed",
            "found_from_scratch": True} in rows
    # the variants the search does not reach are listed too, marked as such
    unfound = [r["slug"] for r in rows if not r["found_from_scratch"]]
    assert "ksm-madvfree-clearrefs" in unfound and "zap-rmap-before-flush" not in unfound
    assert "gupfast-fork-no-write-protect-seq" not in unfound


def test_hunt_of_a_variant_the_search_does_not_reach_names_the_way_to_fuzz_it():
    r = mmfuzz("hunt", "ksm-madvfree-clearrefs", "--budget", "1")
    assert r.returncode == 2
    line = _one_line_error(r)
    assert "not found from scratch" in line
    assert "mmfuzz hunt --kernel bug:ksm-madvfree-clearrefs" in line


def test_fuzz_mainline_short_budget_is_clean():
    r = mmfuzz("fuzz", "--kernel", "mainline", "--examples", "150", "--seed", "1", "--quiet")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "summary: kernel=mainline engine=explore/swarm seed=1: no violation in" in r.stdout


def test_fuzz_cost_prints_mainline_against_the_generation_variant():
    r = mmfuzz("fuzz", "--fast", "--examples", "200", "--seed", "1", "--quiet",
               "--cost", "proposal:tlb-generation")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "cost per operation (mainline vs proposal:tlb-generation, same schedules, 200 runs)" in out
    row = next(line for line in out.splitlines() if line.strip().startswith("writeback"))
    flushes_a, ipis_a, _, bar, flushes_b, ipis_b, _ = row.split()[1:]
    assert bar == "|" and int(flushes_a) > 0 and int(ipis_a) > 0 and int(flushes_b) > 0
    assert "; cost: " in out and "(on proposal:tlb-generation: " in out
    bad = mmfuzz("fuzz", "--fast", "--examples", "10", "--cost", "nosuchkernel")
    assert bad.returncode == 2 and "unknown kernel" in bad.stderr


@pytest.mark.cost(2)
def test_fuzz_rule_machine_strategy_runs():
    r = mmfuzz("fuzz", "--strategy", "rules", "--examples", "60", "--seed", "1", "--quiet")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "engine=hypothesis/rules seed=1: no violation in" in r.stdout


def test_user_variant_by_module_path(tmp_path):
    r = mmfuzz("fuzz", "--kernel", "tests.variants:FreeBeforeFlush", "--fast", "--examples",
               "3000", "--seed", "1", "--quiet", "--save", str(tmp_path))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "VIOLATION no-use-after-free-via-TLB" in r.stdout


def test_exhaust_finds_bug_and_clears_mainline():
    f = sorted((p for p in __import__("glob").glob(os.path.join(
        ROOT, "corpus", "violations", "madv-parallel-flush-miss", "*.json"))))[0]
    r = mmfuzz("exhaust", f, "--preemptions", "0")
    assert r.returncode == 1 and "no-stale-translation-after-return found" in r.stdout
    assert "<-- violation" in r.stdout
    r = mmfuzz("exhaust", f, "--kernel", "mainline", "--preemptions", "1")
    assert r.returncode == 0 and "every interleaving is clean" in r.stdout, r.stdout
    r = mmfuzz("exhaust", f, "--kernel", "mainline", "--preemptions", "1", "--states-max", "50")
    assert r.returncode == 0 and "NOT exhaustive" in r.stdout
    r = mmfuzz("exhaust", f)   # no bound: every interleaving, the shortest violation
    assert r.returncode == 1 and "no preemption bound" in r.stdout
    assert "shortest schedule 14 actions" in r.stdout
    r = mmfuzz("exhaust", f, "--kernel", "mainline")
    assert r.returncode == 0 and "every interleaving is clean" in r.stdout, r.stdout


def test_hypothesis_workers_find_a_broken_kernel(tmp_path):
    r = mmfuzz("fuzz", "--kernel", "tests.variants:FreeBeforeFlush", "--hypothesis",
               "--examples", "600", "--workers", "2", "--seed", "1", "--quiet",
               "--save", str(tmp_path))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "VIOLATION no-use-after-free-via-TLB" in r.stdout and "engine=hypothesis/swarm" in r.stdout
    assert list(tmp_path.rglob("*.json"))


def test_hybrid_strategy_is_a_fast_engine():
    r = mmfuzz("hunt", "clear-refs-softdirty-no-flush", "--strategy", "hybrid", "--examples",
               "200", "--seed", "1", "--quiet")
    assert r.returncode == 1 and "engine=explore/hybrid" in r.stdout, r.stdout + r.stderr
    r = mmfuzz("fuzz", "--hypothesis", "--strategy", "hybrid", "--examples", "20", "--quiet")
    assert r.returncode == 2 and "fast-mode engine" in r.stderr
