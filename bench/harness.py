"""The mmfuzz benchmark: time-to-bug and throughput, written to bench/RESULTS.md.

    python -m bench [--seeds 10] [--budget 60] [--engines directed,swarm,pct,uniform,hyp-swarm,...]

For every catalogued bug and every engine: time to first failure, time to the shrunk report,
examples (runs) to bug, and the shrunk schedule length, as median and max over the seeds, each
seed on one core. Then model steps/s in fast mode and inside Hypothesis, the `pytest -n 2`
speedup on the fuzz tests, and peak memory of a chunked campaign. Never run as a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mmfuzz import __version__  # noqa: E402
from mmfuzz.explore import explore, shrink  # noqa: E402
from mmfuzz.kernel import Mainline  # noqa: E402
from mmfuzz.kernels import BUGS  # noqa: E402
from mmfuzz.run import ModelFailure  # noqa: E402
from mmfuzz.trace import segments  # noqa: E402
from strategies.schedules import CHUNK_EXAMPLES  # noqa: E402


def _commit() -> str:
    """The measured commit, with "+changes" if the work tree differs from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, text=True, capture_output=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + ("+changes" if dirty else "")


def _chunked(kernel, seed: int, budget: float, campaign) -> dict:
    """Chunks of CHUNK_EXAMPLES examples (as ``mmfuzz fuzz``) under successive seeds until a
    failure or the budget; the failure is then polished by the schedule shrinker.
    ``campaign(seed)`` returns (failure or None, examples run)."""
    t0 = time.perf_counter()
    runs = chunk = 0
    while time.perf_counter() - t0 < budget:
        failure, n = campaign(seed * 1_000_003 + chunk)
        runs += n
        if failure is not None:
            t1 = time.perf_counter()
            world, schedule = shrink(kernel, failure["world"], failure["schedule"],
                                     failure["violation"].prop)
            # Hypothesis shrinks inside the campaign, so "first failure" includes its shrink
            return {"found": True, "runs": runs, "t_first": t1 - t0,
                    "t_report": time.perf_counter() - t0, "len": len(schedule),
                    "segs": segments(schedule),
                    "len_raw": len(failure["schedule"]), "prop": failure["violation"].prop}
        chunk += 1
    return {"found": False, "runs": runs, "t_first": None, "t_report": None}


def one_seed(kernel, engine: str, seed: int, budget: float, actions_max: int | None = None) -> dict:
    """``engine``: directed (hunt's default for a variant), swarm, pct, uniform (the fast
    explorer's strategies), hybrid (mmfuzz/hybrid.py),
    guided (mmfuzz/guided.py), hyp-swarm, hyp-pct, hyp-uniform
    (the same policies as Hypothesis strategies), hyp-rules (the rule-based machine) or
    hyp-ops (strategies.machine.OpsMachine: operations as rules, each example's mix run under
    PCT and searched by exhaust). ``actions_max``: the fast engines' run length (a bug's own
    Bug.actions_max, as ``mmfuzz hunt`` runs it)."""
    if engine in ("hyp-ops", "hyp-rules"):
        from strategies.machine import run_hypothesis, run_ops_hypothesis
        run_machine = run_ops_hypothesis if engine == "hyp-ops" else run_hypothesis

        def campaign(s):
            failure, cls = run_machine(kernel, s, CHUNK_EXAMPLES, polish=False,
                                       hypothesis_shrink=False)
            return failure, cls.runs_total
        return _chunked(kernel, seed, budget, campaign)
    if engine.startswith("hyp-"):
        from strategies.schedules import run_schedules_hypothesis
        policy = engine[4:]

        def campaign(s):
            failure, stats = run_schedules_hypothesis(kernel, s, CHUNK_EXAMPLES, policy,
                                                      polish=False)
            return failure, stats.runs_total
        return _chunked(kernel, seed, budget, campaign)
    t0 = time.perf_counter()
    try:
        if engine == "hybrid":
            from mmfuzz.hybrid import explore_hybrid
            found, stats = explore_hybrid(kernel, seed, budget_s=budget, actions_max=actions_max)
        elif engine == "guided":
            from mmfuzz.guided import explore_guided
            found, stats = explore_guided(kernel, seed, budget_s=budget, actions_max=actions_max)
        else:
            found, stats = explore(kernel, seed, budget_s=budget, policy=engine,
                                   actions_max=actions_max)
    except ModelFailure as mf:   # never a find: saved for `mmfuzz replay`, the bench exits 3
        import tempfile
        from bench.runs import save_model_failure
        saved = save_model_failure(mf, kernel.name, seed, f"bench/{engine}",
                                   tempfile.mkdtemp(prefix="mmfuzz-bench-failure-"))
        return {"found": False, "runs": saved["runs"], "t_first": None, "t_report": None,
                "model_failure": saved["summary"], "failure_path": saved["path"], "seed": seed}
    if found is None:
        return {"found": False, "runs": stats["runs"], "t_first": None, "t_report": None}
    t1 = time.perf_counter()
    world, schedule = shrink(kernel, found.world, found.actions, found.prop)
    t2 = time.perf_counter()
    return {"found": True, "runs": found.runs, "t_first": t1 - t0, "t_report": t2 - t0,
            "len": len(schedule), "segs": segments(schedule), "len_raw": len(found.actions),
            "prop": found.prop}


def _bug(slug: str):
    """A catalogued bug by slug, or a kernel by name (``tests.variants:VmaLockRecheckByRange``,
    the synthetic rare-interleaving race): a Bug-like record with its kernel."""
    bug = next((b for b in BUGS if b.slug == slug), None)
    if bug is not None:
        return bug
    from types import SimpleNamespace
    from mmfuzz.kernels import resolve_kernel
    return SimpleNamespace(slug=slug, kernel=resolve_kernel(slug), actions_max=None,
                           diagram_steps=0, prop=None)


def judged(bug, r: dict) -> dict:
    """``r`` with a violation of another property than the bug's not counted as its find
    (as bench.runs and tests/test_bugs.py count): ``found`` False, the property kept under
    ``other``. A kernel by name (no catalogued property) counts any violation."""
    if r["found"] and bug.prop is not None and r.get("prop") != bug.prop:
        return {"found": False, "runs": r["runs"], "t_first": None, "t_report": None,
                "other": r.get("prop"), "other_t_first": r["t_first"]}
    return r


def _worker(args):
    slug, engine, seed, budget = args
    bug = _bug(slug)
    return slug, engine, seed, judged(bug, one_seed(bug.kernel, engine, seed, budget,
                                                    bug.actions_max))


def summarize(rows: list[dict], budget: float) -> dict:
    found = [r for r in rows if r["found"]]
    out = {"found": f"{len(found)}/{len(rows)}"}
    if found:
        for key in ("t_first", "t_report", "runs", "len", "segs"):
            vals = [r[key] for r in found]
            out[key] = (statistics.median(vals), max(vals))
    return out


def fmt_pair(p, unit="", digits=1):
    if p is None:
        return "-"
    med, mx = p
    if isinstance(med, float):
        return f"{med:.{digits}f}{unit} / {mx:.{digits}f}{unit}"
    return f"{med:g}{unit} / {mx:g}{unit}"


def throughput_fast(seconds: float) -> float:
    _, stats = explore(Mainline, 12345, budget_s=seconds)
    return stats["steps"] / stats["seconds"]


def throughput_hypothesis(examples: int, engine: str) -> float:
    """Model steps/s of a whole Hypothesis campaign (generation and its bookkeeping included)."""
    t0 = time.perf_counter()
    if engine == "hyp-rules":
        from strategies import run_hypothesis
        _, stats = run_hypothesis(Mainline, 12345, examples)
    else:
        from strategies.schedules import run_schedules_hypothesis
        _, stats = run_schedules_hypothesis(Mainline, 12345, examples, engine[4:])
    return stats.steps_total / (time.perf_counter() - t0)


def peak_memory_campaign(seconds: float, engine: str) -> dict:
    """A chunked campaign in a child process; its peak RSS, and the RSS after the first and
    last chunk to show whether memory grows with the length of the campaign."""
    code = f"""
import resource, time, sys, json
sys.path.insert(0, {ROOT!r})
from mmfuzz.kernel import Mainline
rss = []
t0 = time.perf_counter()
chunk = 0
if {engine!r} == "hypothesis":
    from strategies.schedules import CHUNK_EXAMPLES, run_schedules_hypothesis
    while time.perf_counter() - t0 < {seconds}:
        run_schedules_hypothesis(Mainline, 777 + chunk, CHUNK_EXAMPLES)
        chunk += 1
        rss.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
else:
    from mmfuzz.explore import explore_strided
    while time.perf_counter() - t0 < {seconds}:
        explore_strided(Mainline, 777, None, 2000, chunk * 2000, 1)
        chunk += 1
        rss.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
print(json.dumps({{"chunks": chunk, "first_kb": rss[0], "last_kb": rss[-1]}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def pytest_speedup() -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT)
    times = {}
    for n in ("0", "2"):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "fuzz", "-n", n,
                        "-p", "no:cacheprovider"], cwd=ROOT, env=env, capture_output=True,
                       check=True)
        times[n] = time.perf_counter() - t0
    return {"n0_s": times["0"], "n2_s": times["2"], "speedup": times["0"] / times["2"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--budget", type=float, default=60.0, help="seconds per seed and engine")
    ap.add_argument("--engines",
                    default="directed,swarm,hybrid,pct,uniform,hyp-swarm,hyp-pct,hyp-uniform,hyp-rules,"
                    "hyp-ops")
    ap.add_argument("--bugs", default=",".join(b.slug for b in BUGS),
                    help="catalogued slugs, or kernel names such as "
                    "tests.variants:VmaLockRecheckByRange (a synthetic variant)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="seeds run in parallel processes (each still one core)")
    ap.add_argument("--skip-extras", action="store_true",
                    help="only time-to-bug: no throughput, pytest or memory measurements")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "RESULTS.md"))
    a = ap.parse_args(argv)
    engines = a.engines.split(",")
    slugs = a.bugs.split(",")
    jobs = [(slug, eng, seed, a.budget) for slug in slugs for eng in engines
            for seed in range(1, a.seeds + 1)]
    results: dict = {}
    t_start = time.perf_counter()
    if a.jobs > 1:
        import multiprocessing
        with multiprocessing.get_context("spawn").Pool(a.jobs) as pool:
            it = pool.imap_unordered(_worker, jobs)
            for slug, eng, seed, r in it:
                results.setdefault((slug, eng), []).append(r)
                print(slug, eng, seed, r, flush=True)
    else:
        for job in jobs:
            slug, eng, seed, r = _worker(job)
            results.setdefault((slug, eng), []).append(r)
            print(slug, eng, seed, r, flush=True)
    lines = ["# mmfuzz benchmark results", ""]
    lines.append(f"Generated by `python -m bench --seeds {a.seeds} --budget {a.budget:g} "
                 f"--engines {a.engines}{' --jobs %d' % a.jobs if a.jobs > 1 else ''}` "
                 f"on {time.strftime('%Y-%m-%d')}, in {time.perf_counter() - t_start:.0f} s.")
    import hypothesis
    lines.append(f"Machine: {platform.machine()}, {os.cpu_count()} cores, "
                 f"{platform.system()} {platform.release()}; Python "
                 f"{platform.python_version()}, hypothesis {hypothesis.__version__}, "
                 f"mmfuzz {__version__}; commit {_commit()}.")
    lines.append("")
    lines.append("Each seed runs on one core from scratch (no corpus, no database) with the "
                 f"given budget of {a.budget:g} s. Values are median / max over the seeds that "
                 "found the bug (a violation of another property first is not a find: "
                 "`other` in the raw results). `runs` = examples to bug; `len` = actions in the shrunk "
                 "schedule (the model's steps are finer than a diagram's: every lock, PTE "
                 "write and flush); `rows` = the shrunk schedule's stretches of one CPU "
                 "running without another acting in between, the unit of the catalogue's "
                 "published race diagram (its row count in brackets); the last column counts "
                 "the seeds, out of all, whose report is at most 2 rows longer.")
    lines.append("")
    lines.append("| bug (diagram rows) | engine | found | first failure s | shrunk report s | runs "
                 "| len | rows | rows <= diagram + 2 |")
    lines.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for slug in slugs:
        bug = _bug(slug)
        for eng in engines:
            rows = results[(slug, eng)]
            s = summarize(rows, a.budget)
            short = sum(1 for r in rows if r["found"] and r["segs"] <= bug.diagram_steps + 2)
            lines.append(f"| {slug} ({bug.diagram_steps}) | {eng} | {s['found']} | "
                         f"{fmt_pair(s.get('t_first'))} | {fmt_pair(s.get('t_report'))} | "
                         f"{fmt_pair(s.get('runs'))} | {fmt_pair(s.get('len'))} | "
                         f"{fmt_pair(s.get('segs'))} | {short}/{len(rows)} |")
    lines.append("")
    failed = [(k, r) for k, rs in results.items() for r in rs if r.get("model_failure")]
    for (slug, eng), r in failed:
        lines.append(f"MODEL FAILURE (not a find) {slug}/{eng} seed {r['seed']}: {r['model_failure']}; "
                     f"mmfuzz replay {r['failure_path']}")
    if failed:
        lines.append("")
    raw = {f"{k[0]}/{k[1]}": v for k, v in results.items()}
    if not a.skip_extras:
        fast = throughput_fast(10.0)
        hyp = throughput_hypothesis(1000, "hyp-swarm")
        rules = throughput_hypothesis(300, "hyp-rules")
        lines.append(f"Model steps/s, one core, mainline, every property checked after every "
                     f"step: fast mode {fast:,.0f}; inside Hypothesis {hyp:,.0f} with the "
                     f"default swarm strategy, {rules:,.0f} with the rule-based machine.")
        sp = pytest_speedup()
        lines.append(f"`pytest -m fuzz`: -n 0 {sp['n0_s']:.1f} s, -n 2 {sp['n2_s']:.1f} s, "
                     f"speedup {sp['speedup']:.2f}x (includes interpreter start-up).")
        for eng in ("hypothesis", "explore"):
            mem = peak_memory_campaign(60.0, eng)
            lines.append(f"Peak RSS of a 60 s chunked {eng} campaign ({mem['chunks']} chunks): "
                         f"{mem['first_kb'] / 1024:.0f} MB after the first chunk, "
                         f"{mem['last_kb'] / 1024:.0f} MB at the end.")
        lines.append("")
    lines.append("<details><summary>raw per-seed results</summary>")
    lines.append("")
    lines.append("```json")
    lines.append(json.dumps(raw, indent=1, default=str))
    lines.append("```")
    lines.append("</details>")
    with open(a.out, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print(f"wrote {a.out}")
    return 3 if failed else 0   # as `mmfuzz fuzz`: the model (or a variant) failed

