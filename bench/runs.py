"""python -m bench.runs: runs to bug, per catalogued bug and seed, with the default engine (the
fast explorer, swarm strategy), deterministic.

    python -m bench.runs --bugs all --seeds 1-10 --runs-max 20000 [--jobs 2] [--mainline]
                         [--ops-policy NAME] [--engine swarm|guided] [--out FILE.json]

Runs, not seconds: a run count depends only on the kernel, the seed and the search policy, so
the numbers mean the same on a loaded machine as on an idle one. Each row also gives the
model steps those runs took in all; the fast explorer runs about 100,000 steps/s on one core
(bench/RESULTS.md), so steps / 100,000 estimates the seconds to the first failure (the
shrinker's time comes on top). A seed not found within --runs-max counts as more than
--runs-max: the median is then "> N" once half the seeds miss, and the max always is.

``--mainline`` also runs mainline on the same seed for as many runs as the bug needed (or
--runs-max), each with the bug's run length, and counts the seeds where mainline was flagged
(known-open races are set aside, as fuzzing does).

``--ops-policy NAME`` replaces explore.swarm_ops (which operations a swarm run enables) by
one of CANDIDATES below for this process: the candidates measured when the default was chosen.

``--bugs SLUG`` may also name a catalogued bug of mmfuzz.kernels.UNFOUND (a variant the
search does not find yet; ``all`` leaves them out), or a variant as ``MODULE:CLASS`` (e.g.
tests.variants:VmaLockRecheckMapped, the synthetic race of issue #8), whose find is the first
violation of any property.

``--engine guided`` measures the coverage-guided schedule search (mmfuzz/guided.py) instead of
the swarm explorer, mainline included; its runs and steps count every mutated run and every
replayed prefix step. ``--out FILE`` writes the per-seed rows (runs and steps) as JSON.

A run that raises in the model or the variant (a ModelFailure) ends its seed: it is never a
find, it is saved under ``--failures DIR``/failures/ (default: a new temporary directory) for
``mmfuzz replay``, printed with its exception, and the measurement exits 3 as ``mmfuzz fuzz``
does.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from multiprocessing import get_context

from mmfuzz import explore as _explore
from mmfuzz import ops as _ops
from mmfuzz.kernel import Mainline
from mmfuzz.corpus import found_info, save_failure
from mmfuzz.kernels import BUGS, UNFOUND, Bug, KernelNameError, resolve_kernel
from mmfuzz.run import ModelFailure

STEPS_PER_S = 100_000


# --- candidate ways of choosing the operations a swarm run enables --------------------------

def _weighted_sample(rng: random.Random, k: int) -> tuple:
    """k distinct operations drawn without replacement, each with its declared swarm share as
    its weight, returned in registry order."""
    decl = list(_ops.operations().values())
    pool = list(range(len(decl)))
    chosen = []
    for _ in range(min(k, len(pool))):
        total = sum(decl[i].swarm for i in pool)
        r = rng.random() * total
        for j, i in enumerate(pool):
            r -= decl[i].swarm
            if r <= 0:
                break
        chosen.append(pool.pop(j))
    return tuple(decl[i].name for i in sorted(chosen))


def _scaled(mean):
    def draw(rng):
        decl = _ops.operations().values()
        total = sum(op.swarm for op in decl)
        scale = 1.0 if mean is None else min(1.0, mean / total)
        return tuple(op.name for op in decl if rng.random() < op.swarm * scale) or ("madvise_dontneed",)
    return draw


def _geometric(p, kmax=None):
    """k = 1 + Geometric(p) operations (mean 1/p), weighted by declared share."""
    def draw(rng):
        k = 1
        while rng.random() > p and (kmax is None or k < kmax):
            k += 1
        return _weighted_sample(rng, k)
    return draw


def _uniform_k(lo, hi):
    def draw(rng):
        return _weighted_sample(rng, rng.randint(lo, hi))
    return draw


def _mixture(fracs):
    """Each run first draws a density (a per-run inclusion probability) from ``fracs``, then
    includes each operation with that probability times its declared share / 0.7."""
    def draw(rng):
        q = rng.choice(fracs)
        decl = _ops.operations().values()
        return tuple(op.name for op in decl if rng.random() < q * op.swarm / 0.7) or ("madvise_dontneed",)
    return draw


CANDIDATES = {
    "scaled-4.2": _scaled(4.2),          # today's default (explore.SWARM_OPS_MEAN = 4.2)
    "scaled-2.5": _scaled(2.5),
    "scaled-3": _scaled(3.0),
    "scaled-6": _scaled(6.0),
    "unscaled": _scaled(None),           # each operation at its declared share (mean ~13.7)
    "geom-2": _geometric(0.5),           # k = 1, 2, 3, ... with probability 1/2, 1/4, ... (mean 2)
    "geom-3": _geometric(1 / 3),
    "k-1-4": _uniform_k(1, 4),
    "k-2-3": _uniform_k(2, 3),
    "mix": _mixture((0.05, 0.1, 0.2, 0.4)),
    # correlated draws (mmfuzz.ops.relation; explore.swarm_ops_focused): q of the runs focus on
    # one operation and 1 + Geometric(1 - more) of the operations it interacts with
    "focus-0.5": lambda rng: _explore.swarm_ops_focused(rng, q=0.5),
    "focus-1": lambda rng: _explore.swarm_ops_focused(rng, q=1.0),
    "focus-0.5-w2": lambda rng: _explore.swarm_ops_focused(rng, q=0.5, power=2.0),
    "focus-1-w2": lambda rng: _explore.swarm_ops_focused(rng, q=1.0, power=2.0),
    "focus-1-alone": lambda rng: _explore.swarm_ops_focused(rng, q=1.0, alone=0.25),
    "focus-0.5-alone": lambda rng: _explore.swarm_ops_focused(rng, q=0.5, alone=0.25),
    # grow: each further partner interacts with some operation already drawn (a chain)
    "grow-0.7": lambda rng: _explore.swarm_ops_focused(rng, q=1.0, more=0.7, grow=True),
    "grow-0.7-q0.5": lambda rng: _explore.swarm_ops_focused(rng, q=0.5, more=0.7, grow=True),
    # more partners per grown run (1 / (1 - 0.85) = 6.7 on average, 7.4 operations in all with
    # the focus, fewer where its ties run out), a quarter or half of the runs grown
    # (bench/RESULTS-runs.md "Correlated draw at 120/240 actions")
    "grow-0.85-q0.5": lambda rng: _explore.swarm_ops_focused(rng, q=0.5, more=0.85, grow=True),
    "grow-0.85-q0.25": lambda rng: _explore.swarm_ops_focused(rng, q=0.25, more=0.85, grow=True),
    # control, not a candidate: the default draw after the focus coin (q 0), i.e. the default's
    # operation sets on the random stream the focused candidates' unfocused runs see
    "shifted": lambda rng: _explore.swarm_ops_focused(rng, q=0.0),
}


#: SwarmPolicy.__init__ as the module defines it: a start-weight candidate wraps this one, so
#: that the jobs one process runs in turn do not wrap each other's wrappers
_SWARM_INIT = _explore.SwarmPolicy.__init__


#: SwarmPolicy's hot-page knob as the module defines it (the default a job without --hot uses)
_HOT_DEFAULT = (_explore.SwarmPolicy.hot_share, _explore.SwarmPolicy.hot_p)
#: the swarm's IPI weights as the module defines them (a job without --ipi-weights uses these)
_IPI_DEFAULT = _explore.IPI_WEIGHTS
_PV_HOLD_DEFAULT = _explore.SwarmPolicy.pv_irqs_off_hold


def _apply_policy(name, lengths=None, start_weights=None, slow_cpu=None, hot=None, ipi=None,
                  pv_hold=None):
    _explore.SwarmPolicy.hot_share, _explore.SwarmPolicy.hot_p = hot or _HOT_DEFAULT
    _explore.IPI_WEIGHTS = ipi or _IPI_DEFAULT
    _explore.SwarmPolicy.pv_irqs_off_hold = _PV_HOLD_DEFAULT if pv_hold is None else pv_hold
    if start_weights or slow_cpu:
        init = _SWARM_INIT

        def __init__(self, rng, world):
            init(self, rng, world)
            if start_weights:
                self.kind_weight["start"] = rng.choice(start_weights)
            if slow_cpu:
                share, factor = slow_cpu
                if rng.random() < share:
                    speed = [1.0] * world["ncpus"]
                    speed[rng.randrange(world["ncpus"])] = factor
                    self.cpu_speed = speed
        _explore.SwarmPolicy.__init__ = __init__
    if name is not None:
        _explore.swarm_ops = CANDIDATES[name]
    if lengths:
        _explore.RUN_LENGTHS = tuple(lengths)


# --- measuring -----------------------------------------------------------------------------

def parse_seeds(text: str) -> list[int]:
    seeds = []
    for part in text.split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            seeds.extend(range(int(lo), int(hi) + 1))
        else:
            seeds.append(int(part))
    return seeds


def _explorer(engine):
    """explore(kernel, seed, runs_max=, actions_max=) of the measured engine."""
    if engine == "guided":
        from mmfuzz.guided import explore_guided
        return explore_guided
    if engine == "hybrid":   # mmfuzz/hybrid.py; its steps count every search action too
        from mmfuzz.hybrid import explore_hybrid
        return explore_hybrid
    if engine == "directed":   # swarm directed at the variant's diff (explore.DirectedPolicy)
        return lambda k, seed, **kw: _explore.explore(k, seed, policy="directed", **kw)
    return _explore.explore


def _bug(slug: str) -> Bug:
    """The catalogued bug ``slug``, or for ``MODULE:CLASS`` (a variant such as the synthetic
    races of tests/variants.py) a Bug whose find is the first violation of any property."""
    for b in BUGS + UNFOUND:
        if b.slug == slug:
            return b
    return Bug(slug, "", "", None, resolve_kernel(slug), 0)


def save_model_failure(mf: ModelFailure, kernel_name: str, seed: int, engine: str,
                       failures: str) -> dict:
    """A run that raised in the model (or the variant): saved under ``failures``/failures/ for
    `mmfuzz replay`, as `mmfuzz fuzz` saves one (exit status 3 there), and never a find.
    ``engine`` names the measuring tool and engine in the file's found record. Also used by
    python -m bench (bench/harness.py)."""
    extra = {k: mf.info[k] for k in ("run", "runs") if mf.info.get(k) is not None}
    path = save_failure(mf.info, kernel_name, failures, found_info(seed, engine, **extra))
    return {"summary": mf.summary(), "path": path, "runs": mf.info.get("runs"),
            "steps": mf.info.get("steps")}


def _float_pair(value: str | None, option: str, form: str, example: str):
    """An option's "A,B" as two floats, None when the option is not given; a ValueError
    whose text is the one-line message (with the form and an example) otherwise."""
    if not value:
        return None
    try:
        a, b = (float(x) for x in value.split(","))
    except ValueError:
        raise ValueError(f"bad {option} {value!r}; use {form}, e.g. {example}") from None
    return (a, b)


def _ipi_weights(value: str | None):
    """--ipi-weights "A,B,C" as three floats (the swarm draws one per run), None when not
    given; a ValueError with the one-line message otherwise."""
    if not value:
        return None
    try:
        w = tuple(float(x) for x in value.split(","))
    except ValueError:
        w = ()
    if len(w) != 3 or min(w) <= 0:
        raise ValueError(f"bad --ipi-weights {value!r}; use three positive weights, e.g. 0.1,1,3")
    return w


def _one(job):
    (slug, seed, runs_max, mainline, policy, actions_max, lengths, sw, slow, hot, ipi, pv_hold,
     engine, failures) = job
    _apply_policy(policy, lengths, sw, slow, hot, ipi, pv_hold)
    bug = _bug(slug)
    amax = actions_max or bug.actions_max
    if lengths and engine in ("swarm", "directed"):
        amax = None   # each run draws from --run-lengths (explore.RUN_LENGTHS, set above)
    explore = _explorer(engine)
    row = {"slug": slug, "seed": seed, "found": False, "prop": None, "runs": 0, "steps": 0,
           "mainline": None, "model_failure": None}
    try:
        found, stats = explore(bug.kernel, seed, runs_max=runs_max, actions_max=amax)
    except ModelFailure as mf:
        row["model_failure"] = save_model_failure(mf, bug.kernel.name, seed,
                                                  f"bench.runs/{engine}", failures)
        row["runs"] = row["model_failure"]["runs"] or 0
        row["steps"] = row["model_failure"]["steps"] or 0
        return row
    row.update({"found": found is not None and bug.prop in (None, found.prop),
                "prop": found.prop if found else None,
                "runs": found.runs if found else stats["runs"],
                "steps": found.steps if found else stats["steps"]})
    if mainline:
        try:
            clean, mstats = explore(Mainline, seed, runs_max=row["runs"], actions_max=amax)
        except ModelFailure as mf:
            row["model_failure"] = save_model_failure(mf, "mainline", seed,
                                                      f"bench.runs/{engine}", failures)
            row["mainline"] = "model failure"
            return row
        row["mainline"] = None if clean is None else clean.prop
        row["mainline_steps"] = mstats["steps"]
    return row


def _progress(rows, n, out=None, argv=None):
    """Pass rows through, one line per finished job on stderr (and, with ``out``, every row so
    far written to that JSON file, so that a long measurement cut short keeps what it did)."""
    done = []
    for i, r in enumerate(rows, 1):
        if out:
            done.append(r)
            _write(out, argv, done)
        what = f"{r['runs'] if r['found'] else '-'} runs"
        if r.get("model_failure"):
            what = (f"MODEL FAILURE (not a find): {r['model_failure']['summary']}; "
                    f"mmfuzz replay {r['model_failure']['path']}")
        print(f"  [{i}/{n}] {r['slug']} seed {r['seed']}: {what}", file=sys.stderr, flush=True)
        yield r


def _write(path, argv, rows):
    with open(path, "w") as f:
        json.dump({"argv": argv if argv is not None else sys.argv[1:], "rows": rows}, f, indent=1)


def summarize(rows, runs_max):
    """Per bug: found count, median and max runs (a miss counts as more than runs_max), total
    steps."""
    out = []
    for slug in dict.fromkeys(r["slug"] for r in rows):
        rs = [r for r in rows if r["slug"] == slug]
        vals = sorted(r["runs"] if r["found"] else float("inf") for r in rs)
        med = statistics.median(vals)
        found = sum(r["found"] for r in rs)
        steps = [r["steps"] for r in rs if r["found"]]
        out.append({"slug": slug, "found": found, "seeds": len(rs),
                    "median": med, "max": vals[-1],
                    "median_steps": statistics.median(steps) if steps else None,
                    "max_steps": max(steps) if steps else None,
                    "steps": sum(r["steps"] for r in rs),
                    "mainline_flagged": [r["seed"] for r in rs if r["mainline"]],
                    "per_seed": {r["seed"]: (r["runs"] if r["found"] else None) for r in rs},
                    "per_seed_steps": {r["seed"]: r["steps"] for r in rs},
                    # a seed that stopped at another property's violation (not a miss at the cap)
                    "per_seed_other": {r["seed"]: f"{r['prop']}@{r['runs']}" for r in rs
                                       if not r["found"] and r["prop"]},
                    "model_failures": {r["seed"]: r["model_failure"] for r in rs
                                       if r.get("model_failure")}})
    return out


def _fmt(v, runs_max):
    if v is None:
        return "-"
    if v == float("inf"):
        return f"> {runs_max:,}"
    return f"{v:,.1f}" if v != int(v) else f"{int(v):,}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.runs", description=__doc__.split("\n")[0])
    ap.add_argument("--bugs", default="all")
    ap.add_argument("--seeds", default="1-10")
    ap.add_argument("--runs-max", type=int, default=20000)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--mainline", action="store_true")
    ap.add_argument("--ops-policy", default=None, choices=sorted(CANDIDATES))
    ap.add_argument("--actions-max", type=int, default=None,
                    help="run length for every bug (default: each bug's Bug.actions_max)")
    ap.add_argument("--run-lengths", default=None,
                    help="each run draws its length from these (e.g. 60,120,240), for every bug")
    ap.add_argument("--start-weights", default=None,
                    help="each swarm run draws its syscall-start weight from these (default 0.5,1,2)")
    ap.add_argument("--slow-cpu", default=None,
                    help="SHARE,FACTOR: in that share of swarm runs one CPU (drawn) steps at "
                         "FACTOR times the others' weight (default: none)")
    ap.add_argument("--hot", default=None,
                    help="SHARE,P: in that share of swarm runs one page is hot and each page "
                         "draw aims at it with probability P (default: SwarmPolicy's "
                         f"{_HOT_DEFAULT[0]},{_HOT_DEFAULT[1]}; 0,0 for none)")
    ap.add_argument("--ipi-weights", default=None,
                    help="A,B,C: the weights a swarm run draws for a pending flush IPI "
                         "(default explore.IPI_WEIGHTS; 0.5,1,3 before 2026-12-03)")
    ap.add_argument("--pv-irqs-off-hold", type=float, default=None,
                    help="the step-weight factor of a CPU with IRQs off in a paravirt world "
                         "(default SwarmPolicy.pv_irqs_off_hold; 1: none, as before 2026-12-03)")
    ap.add_argument("--per-seed", action="store_true", help="also print runs (and steps) per seed")
    ap.add_argument("--engine", default="swarm", choices=("swarm", "directed", "hybrid", "guided"),
                    help="swarm (the fast explorer, default), directed (swarm directed at the "
                         "variant's diff, hunt's default: explore.DirectedPolicy), hybrid "
                         "(mmfuzz/hybrid.py) or guided (mmfuzz/guided.py)")
    ap.add_argument("--out", default=None, help="write the per-seed rows as JSON to this file")
    ap.add_argument("--failures", default=None,
                    help="save model failures under DIR/failures/ (default: a new temporary "
                         "directory); a run that fails in the model is never a find")
    args = ap.parse_args(argv)
    slugs = [b.slug for b in BUGS] if args.bugs == "all" else args.bugs.split(",")
    known = [b.slug for b in BUGS + UNFOUND]   # all: BUGS; an UNFOUND one only by name
    for s in slugs:
        if s not in known and ":" not in s:
            print(f"bench.runs: unknown bug {s!r}; use all, some of {', '.join(known)}, "
                  "or a variant as MODULE:CLASS", file=sys.stderr)
            return 2
        if s not in known:
            try:
                resolve_kernel(s)
            except KernelNameError as e:   # the CLI's own message, with the fix
                print(f"bench.runs: {e}", file=sys.stderr)
                return 2
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError:
        print(f"bench.runs: bad --seeds {args.seeds!r}; use e.g. 1-10 or 1,3,5", file=sys.stderr)
        return 2
    lengths = tuple(int(x) for x in args.run_lengths.split(",")) if args.run_lengths else None
    sw = tuple(float(x) for x in args.start_weights.split(",")) if args.start_weights else None
    try:
        slow = _float_pair(args.slow_cpu, "--slow-cpu", "SHARE,FACTOR", "0.3,0.05")
        hot = _float_pair(args.hot, "--hot", "SHARE,P", "0.8,0.7")
        ipi = _ipi_weights(args.ipi_weights)
        if args.pv_irqs_off_hold is not None and not 0 < args.pv_irqs_off_hold <= 1:
            raise ValueError(f"bad --pv-irqs-off-hold {args.pv_irqs_off_hold!r}; use a factor "
                             "in (0, 1], e.g. 1 for none")
    except ValueError as e:
        print(f"bench.runs: {e}", file=sys.stderr)
        return 2
    if args.failures is None:
        import tempfile
        args.failures = tempfile.mkdtemp(prefix="mmfuzz-bench-failures-")
    jobs = [(s, seed, args.runs_max, args.mainline, args.ops_policy, args.actions_max, lengths, sw,
             slow, hot, ipi, args.pv_irqs_off_hold, args.engine, args.failures)
            for s in slugs for seed in seeds]
    if args.jobs > 1:
        with get_context("fork").Pool(args.jobs) as pool:
            rows = list(_progress(pool.imap(_one, jobs, chunksize=1), len(jobs), args.out, argv))
    else:
        saved = (_explore.swarm_ops, _explore.RUN_LENGTHS, _explore.SwarmPolicy.__init__,
                 _explore.IPI_WEIGHTS, _explore.SwarmPolicy.pv_irqs_off_hold)
        try:
            rows = list(_progress(map(_one, jobs), len(jobs), args.out, argv))
        finally:   # the candidates patch this process only for the measurement
            (_explore.swarm_ops, _explore.RUN_LENGTHS, _explore.SwarmPolicy.__init__,
             _explore.IPI_WEIGHTS, _explore.SwarmPolicy.pv_irqs_off_hold) = saved
    print(f"engine {args.engine}, policy {args.ops_policy or 'default'}, run lengths {args.run_lengths or 'Bug.actions_max'}, start weights {args.start_weights or 'default'}, slow CPU {args.slow_cpu or 'none'}, hot page {args.hot or 'default'}, IPI weights {args.ipi_weights or 'default'}, pv IRQs-off hold {args.pv_irqs_off_hold or 'default'}, seeds {args.seeds}, runs-max {args.runs_max:,}")
    print(f"{'bug':36} {'found':>6} {'median':>9} {'max':>9} {'med s':>6} {'max s':>6} "
          f"{'steps':>11}" + ("  mainline" if args.mainline else ""))
    for s in summarize(rows, args.runs_max):
        ms = "-" if s["median_steps"] is None else f"{s['median_steps'] / STEPS_PER_S:.1f}"
        xs = "-" if s["max_steps"] is None else f"{s['max_steps'] / STEPS_PER_S:.1f}"
        line = (f"{s['slug']:36} {s['found']:>3}/{s['seeds']:<2} {_fmt(s['median'], args.runs_max):>9} "
                f"{_fmt(s['max'], args.runs_max):>9} {ms:>6} {xs:>6} {s['steps']:>11,}")
        if args.mainline:
            line += "  clean" if not s["mainline_flagged"] else f"  FLAGGED seeds {s['mainline_flagged']}"
        print(line)
        if args.per_seed:
            print("    " + " ".join(f"{k}:{'-' if v is None else v}" for k, v in s["per_seed"].items()))
            print("    steps " + " ".join(f"{k}:{v}" for k, v in s["per_seed_steps"].items()))
            if s["per_seed_other"]:
                print("    other " + " ".join(f"{k}:{v}" for k, v in s["per_seed_other"].items()))
        for k, v in s["model_failures"].items():   # always shown: a measurement it spoiled
            print(f"    MODEL FAILURE seed {k} (not a find): {v['summary']}; "
                  f"mmfuzz replay {v['path']}")
    # as `mmfuzz fuzz`: 3 when the model (or the variant) failed, whatever else was measured
    return 3 if any(r.get("model_failure") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
