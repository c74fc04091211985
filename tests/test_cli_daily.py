"""The CLI as a daily tool: fresh and fixed seeds, a deterministic summary, --json, the progress
line (rich on a terminal, plain lines otherwise), --coverage, and a closed output pipe."""

import json
import os
import pty
import subprocess
import sys

import pytest

from mmfuzz.kernel import Mainline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT)


def mmfuzz(*args, **kw):
    return subprocess.run([sys.executable, "-m", "mmfuzz", *args], capture_output=True,
                          text=True, cwd=ROOT, env=ENV, timeout=300, **kw)


def _summary(r):
    return [ln for ln in r.stdout.splitlines() if ln.startswith("summary:")]


@pytest.mark.cost(3)
def test_fresh_seeds_differ_and_a_fixed_seed_repeats_the_summary():
    fresh = [mmfuzz("fuzz", "--examples", "20", "--quiet") for _ in range(2)]
    seeds = []
    for r in fresh:
        assert r.returncode == 0, r.stderr
        head = r.stderr.splitlines()[0]
        assert "(fresh; reproduce with --seed " in head
        seed = head.split("seed=")[1].split()[0]
        assert f"seed={seed}:" in _summary(r)[0]     # printed at the start and in the summary
        seeds.append(seed)
    assert seeds[0] != seeds[1]
    fixed = [mmfuzz("fuzz", "--seed", "5", "--examples", "40", "--quiet") for _ in range(2)]
    assert all(r.returncode == 0 for r in fixed)
    assert _summary(fixed[0]) == _summary(fixed[1]) != []
    assert "seed=5: no violation in " in _summary(fixed[0])[0]
    assert "fresh" not in fixed[0].stderr
    # timings are kept off the summary line, on a line of their own
    assert any(ln.startswith("time: ") for ln in fixed[0].stdout.splitlines())


def test_json_summary_and_the_fresh_seed_saved_in_the_counterexample(tmp_path):
    r = mmfuzz("fuzz", "--hypothesis", "--kernel", "tests.variants:FreeBeforeFlush",
               "--examples", "600",
               "--quiet", "--json", "--save", str(tmp_path))
    assert r.returncode == 1, r.stderr
    data = json.loads(r.stdout)         # exactly one JSON object on stdout
    assert data["kernel"] == "tests.variants:FreeBeforeFlush"
    assert data["engine"] == "hypothesis/swarm" and data["seed_fresh"] is True
    assert data["verdict"] == "violation" and data["property"] == "no-use-after-free-via-TLB"
    assert data["budget"] == {"examples": 600} and data["runs"] >= 1 and data["steps"] >= 1
    assert data["schedule_len"] >= 1 and data["why"]
    assert 1 <= data["rows"] <= data["schedule_len"]   # the report's rows (trace.segments)
    saved = json.load(open(data["saved"]))
    assert saved["found"]["seed"] == data["seed"]
    assert "VIOLATION no-use-after-free-via-TLB" in r.stderr    # the report goes to stderr
    r = mmfuzz("fuzz", "--seed", "5", "--examples", "30", "--quiet", "--json")
    data = json.loads(r.stdout)
    assert r.returncode == 0 and data["verdict"] == "clean" and data["property"] is None
    assert data["seed"] == 5 and data["saved"] is None and data["rows"] is None


def test_progress_is_plain_lines_off_a_terminal():
    r = mmfuzz("fuzz", "--seed", "1", "--examples", "30")
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("[mmfuzz] mainline")]
    assert lines and "runs " in lines[-1] and "steps/s" in lines[-1]
    assert "\x1b[" not in r.stderr


def test_progress_is_a_live_rich_line_on_a_terminal():
    master, slave = pty.openpty()
    env = {k: v for k, v in ENV.items() if k not in ("NO_COLOR", "TTY_COMPATIBLE",
                                                       "TTY_INTERACTIVE", "COLUMNS")}
    env["TERM"] = "xterm-256color"   # rich treats TERM=dumb (or unknown) as no live display
    p = subprocess.Popen([sys.executable, "-m", "mmfuzz", "fuzz", "--seed", "1", "--examples",
                          "40"], stdout=subprocess.PIPE, stderr=slave, cwd=ROOT, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    out, _ = p.communicate(timeout=300)
    os.close(master)
    tty = b"".join(chunks).decode(errors="replace")
    assert p.returncode == 0
    assert "\x1b[" in tty and "mmfuzz" in tty and "steps/s" in tty and "\r" in tty
    assert b"summary: kernel=mainline" in out


def test_closed_output_pipe_ends_quietly():
    """`mmfuzz bugs --json | head -c 400`: the reader is gone before mmfuzz writes."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    p = subprocess.run([sys.executable, "-m", "mmfuzz", "bugs", "--json"], stdout=write_end,
                       stderr=subprocess.PIPE, cwd=ROOT, env=ENV, timeout=60)
    os.close(write_end)
    assert p.stderr == b""
    assert p.returncode == 141
    r = subprocess.run(f"{sys.executable} -m mmfuzz bugs --json | head -c 40", shell=True,
                       capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=60)
    assert r.stderr == "" and len(r.stdout) == 40


def test_coverage_report_names_the_overridden_functions():
    r = mmfuzz("fuzz", "--hypothesis", "--kernel", "tests.variants:FreeBeforeFlush", "--seed",
               "0", "--examples",
               "300", "--quiet", "--coverage")
    assert r.returncode == 1, r.stderr
    out = r.stdout
    assert "model coverage: kernel tests.variants:FreeBeforeFlush" in out
    over = out.split("overridden by the variant")[1].splitlines()[1]
    assert "FreeBeforeFlush.tlb_remove_folio_pages_size" in over and "NEVER" not in over
    hit, total = over.split()[1].split("/")
    assert 0 < int(hit) <= int(total)
    assert "Memory.zap_pte_range" in out and "mmfuzz/kernel/memory.py" in out
    assert "LeakRmap" not in out     # only the variant's own classes of its module
    assert " total: " in out
    r = mmfuzz("fuzz", "--coverage", "--workers", "2")
    assert r.returncode == 2 and "--coverage measures this one process" in r.stderr


class NeverReached(Mainline):
    """A patch to a function no operation calls: the report must say the fuzzer never ran it."""

    def unused_helper(self, x):
        y = x + 1
        return y


def test_coverage_flags_an_override_the_campaign_never_ran():
    from mmfuzz.explore import explore
    from mmfuzz.modelcov import ModelCoverage
    with ModelCoverage(NeverReached) as cov:
        explore(NeverReached, 0, runs_max=20)
    text = cov.report()
    line = next(ln for ln in text.splitlines() if "NeverReached.unused_helper" in ln)
    assert "0/2" in line and "NEVER REACHED" in line
    fns = {f.function: f for f in cov.functions()}
    assert fns["Memory.zap_pte_range"].hit > 0
    data = cov.to_json()
    assert data["lines_hit"] > 0 and data["lines_total"] >= data["lines_hit"]


@pytest.mark.cost(5)
def test_docs_variants_walkthrough_is_what_the_tool_prints(tmp_path):
    """docs/variants.md quotes these numbers: the patch idea is found (and shrunk) under seed 0,
    mainline is clean on the same budget, the coverage report shows the override reached, and
    exhaust separates the two kernels on the saved scenario."""
    doc = open(os.path.join(ROOT, "docs", "variants.md")).read()
    r = mmfuzz("fuzz", "--hypothesis", "--kernel", "tests.variants:DelayRmapNoForceFlush",
               "--examples", "300",
               "--seed", "0", "--coverage", "--quiet", "--save", str(tmp_path))
    assert r.returncode == 1, r.stderr
    line = _summary(r)[0]
    assert "accounting after 67 runs; shrunk to 3 actions + 58 quiescence actions" in line
    assert line.split("; saved")[0] in doc
    over = next(ln for ln in r.stdout.splitlines() if "DelayRmapNoForceFlush.zap_present" in ln)
    assert over.strip() in doc
    assert "pfn 1 was freed while mapped (mapcount 1)" in r.stdout
    saved = line.split("; saved ")[1]
    assert os.path.basename(saved) in doc
    clean = mmfuzz("fuzz", "--hypothesis", "--kernel", "mainline", "--examples", "300", "--seed",
                   "0", "--quiet")
    assert clean.returncode == 0 and "no violation in" in _summary(clean)[0]
    r = mmfuzz("exhaust", saved, "--kernel", "mainline", "--preemptions", "1")
    assert r.returncode == 0 and "every interleaving is clean" in r.stdout
    r = mmfuzz("exhaust", saved, "--kernel", "tests.variants:DelayRmapNoForceFlush",
               "--preemptions", "0")
    assert r.returncode == 1 and "accounting found" in r.stdout
