"""The `mmfuzz` command. Exit status: 0 no violation, 1 a violation found or reproduced (shrunk,
saved, printed), 2 bad input or usage (one line naming the problem and the fix), 3 the model or
the kernel variant failed (an exception, a deadlock, an assertion of the model's own invariants,
a found schedule that does not reproduce): never a find; reported with the exception, where it
was raised, and the schedule that replays to it, saved under --save DIR/failures/ (else a
temporary directory)."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import textwrap
import time

from . import __version__
from .corpus import (Counterexample, CorpusError, check, found_info, kernel_for, load,
                     load_failure, render_cx, replay, save, save_failure)
from .kernels import BUGS, UNFOUND, KernelNameError, bug_by_slug, resolve_kernel
from .run import ModelError, ModelFailure, execute
from .trace import segments

EXIT_CLEAN, EXIT_VIOLATION, EXIT_BAD_INPUT, EXIT_MODEL_FAILURE = 0, 1, 2, 3
EXIT_BROKEN_PIPE = 141

#: The engine of `fuzz` and `hunt` when neither --fast nor --hypothesis is given: "fast" (the
#: plain-Python explorer), "guided" (the fast explorer's coverage-guided schedule search,
#: mmfuzz/guided.py; --strategy guided) or "hypothesis". The fast explorer is the fastest engine
#: on every catalogued bug (bench/RESULTS.md). The one place to change the default. Its
#: strategy, when --strategy is not given, is "directed" for a kernel whose changed functions
#: some operation reaches (mmfuzz/directed.py: every catalogued bug, a user's variant) and
#: "swarm" otherwise (mainline, where the two are the same runs).
DEFAULT_ENGINE = "fast"


def choose_engine(a) -> str:
    """"fast", "guided" or "hypothesis" for these options: --fast, --hypothesis and --engine
    decide; --strategy rules is Hypothesis's rule machine, --strategy guided the guided engine;
    otherwise DEFAULT_ENGINE."""
    engine = getattr(a, "engine", None)
    if a.hypothesis or engine == "hypothesis" or (a.strategy == "rules" and not a.fast
                                                   and engine is None):
        return "hypothesis"
    if engine is not None:
        return engine
    if a.strategy == "guided":
        return "guided"
    if a.fast:
        return "fast"
    return DEFAULT_ENGINE


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _nonneg_int(text):
    try:
        v = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return v


def _pos_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 seconds")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mmfuzz", description=__doc__)
    p.add_argument("--version", action="version", version=f"mmfuzz {__version__}")
    sub = p.add_subparsers(dest="cmd", parser_class=_Parser)
    sub.required = True

    b = sub.add_parser("bugs", help="list the catalogued bugs")
    b.add_argument("--json", action="store_true")

    def fuzz_opts(q, kernel=True):
        if kernel:
            q.add_argument("--kernel", default="mainline",
                           help="mainline, bug:SLUG or package.module:Class (default mainline)")
        lim = q.add_mutually_exclusive_group()
        lim.add_argument("--budget", type=_pos_float, help="seconds to fuzz (default 30)")
        lim.add_argument("--examples", type=_nonneg_int, help="number of runs instead of a time budget")
        q.add_argument("--seed", type=_nonneg_int, default=None,
                       help="reproduce a campaign (default: a fresh seed, printed)")
        q.add_argument("--workers", type=_nonneg_int, default=1, help="processes (0: one per core)")
        q.add_argument("--save", metavar="DIR", help="save a counterexample under DIR")
        eng = q.add_mutually_exclusive_group()
        eng.add_argument("--fast", action="store_true",
                         help="the plain-Python random explorer (the default engine)")
        eng.add_argument("--hypothesis", action="store_true",
                         help="the Hypothesis engine (implied by --strategy rules)")
        eng.add_argument("--engine", choices=("fast", "guided", "hypothesis"),
                         help="fast (--fast), hypothesis (--hypothesis) or guided: the fast "
                         "explorer's coverage-guided schedule search (a corpus of runs that "
                         "reached new interleavings, continued from a replayed prefix)")
        q.add_argument("--strategy", choices=("swarm", "directed", "pct", "uniform", "rules",
                                              "hybrid", "guided"),
                       default=None,
                       help="scheduling strategy: swarm, pct or uniform, with either engine; "
                       "directed (the fast engine's default for a kernel variant whose changed "
                       "functions some operation reaches, else swarm): swarm that switches on "
                       "an operation reaching the variant's diff in every run "
                       "(mmfuzz/directed.py); rules = Hypothesis's rule-based state machine "
                       "(implies --hypothesis)")
        q.add_argument("--quiet", action="store_true", help="no progress line")
        q.add_argument("--cost", nargs="?", const="", metavar="KERNEL",
                       help="print TLB flushes, flush IPIs and CPUs interrupted per operation; "
                       "with KERNEL, also replay every run's schedule on KERNEL and print both")
        q.add_argument("--json", action="store_true",
                       help="print one JSON object (the summary) on stdout; reports go to stderr")
        q.add_argument("--coverage", action="store_true",
                       help="report which lines of the modelled kernel functions (and of the "
                       "variant's module) the campaign ran; one worker")

    f = sub.add_parser("fuzz", help="fuzz a kernel variant")
    fuzz_opts(f)
    h = sub.add_parser("hunt", help="fuzz bug:SLUG (or --kernel K) from scratch (no corpus, no "
                       "database)")
    h.add_argument("slug", nargs="?", help="a catalogued bug (`mmfuzz bugs`)")
    h.add_argument("--kernel", help="a kernel instead of a bug: mainline, bug:SLUG or "
                   "package.module:Class")
    fuzz_opts(h, kernel=False)
    r = sub.add_parser("replay", help="re-run saved counterexamples")
    r.add_argument("files", nargs="+")
    r.add_argument("--kernel", help="replay on this kernel instead of the file's own")
    r.add_argument("--save", metavar="DIR", help="where a model failure's schedule is saved "
                   "(DIR/failures/; default a temporary directory)")
    s = sub.add_parser("show", help="render a counterexample as CPU columns")
    s.add_argument("file")
    o = sub.add_parser("ops", help="every operation a schedule can start: its arguments, what "
                       "it models, the kernel function")
    o.add_argument("--json", action="store_true")
    e = sub.add_parser("exhaust", help="every interleaving of a counterexample's scenario "
                       "(does a fix close them all?), breadth-first over distinct states")
    e.add_argument("file")
    e.add_argument("--kernel", help="explore on this kernel instead of the file's own")
    e.add_argument("--preemptions", type=_nonneg_int, default=None,
                   help="at most N preemptions (default: no bound, every interleaving)")
    e.add_argument("--states-max", type=_nonneg_int, default=200_000,
                   help="distinct states to store at most (default 200000)")
    e.add_argument("--save", metavar="DIR", help="where a model failure's schedule is saved "
                   "(DIR/failures/; default a temporary directory)")
    return p


class Progress:
    """The live progress of a campaign on stderr: a rich progress bar (budget used, runs, steps,
    steps/s) rewritten in place on a terminal; a plain line every 5 s otherwise (a log file, a
    CI job); nothing with --quiet."""

    def __init__(self, label: str, quiet: bool, seconds: float | None = None,
                 examples: int | None = None):
        self.label = label
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.t0 = time.perf_counter()
        self.last = 0.0
        self.shown = None
        self.seconds, self.examples = seconds, examples
        self._rich = None
        if self.tty and not quiet:
            self._start_rich()

    def _start_rich(self):
        from rich.console import Console
        from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress
        self._rich = RichProgress(TextColumn("[bold]mmfuzz[/] {task.description}"),
                                  BarColumn(bar_width=20),
                                  TextColumn("{task.fields[stats]}"), TimeElapsedColumn(),
                                  console=Console(stderr=True), transient=False,
                                  refresh_per_second=4)
        total = self.examples if self.examples is not None else self.seconds
        self._task = self._rich.add_task(self.label, total=total, stats="")
        self._rich.start()

    def update(self, runs: int, steps: int, force: bool = False):
        if self.quiet:
            return
        now = time.perf_counter()
        el = now - self.t0
        rate = steps / el if el > 0 else 0
        if self._rich is not None:
            done = runs if self.examples is not None else min(el, self.seconds or el)
            self._rich.update(self._task, completed=done,
                              stats=f"runs {runs:,}  steps {steps:,}  {rate:,.0f} steps/s")
            return
        period = 0.25 if self.tty else 5.0
        if (not force and now - self.last < period) or (force and self.shown == (runs, steps)):
            return
        self.last = now
        self.shown = (runs, steps)
        line = (f"[mmfuzz] {self.label}  {el:6.1f}s  runs {runs}  steps {steps}  "
                f"{rate:,.0f} steps/s")
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def done(self):
        if self._rich is not None:
            self._rich.stop()
            self._rich = None


# ---------------------------------------------------------------- engines -------------
def _explore_worker(args):
    """One worker's share; a model failure comes back as a value (the parent reports it)."""
    kname, seed, budget, runs_max, start, stride, strategy, actions_max = args
    from .explore import explore_strided
    try:
        if strategy == "hybrid":   # random scenarios, interleavings searched (mmfuzz/hybrid.py)
            from .hybrid import explore_hybrid_strided
            return explore_hybrid_strided(resolve_kernel(kname), seed, budget, runs_max, start,
                                          stride, actions_max=actions_max)
        if strategy == "guided":   # one corpus per worker, over its own run indices
            from .guided import explore_guided_strided
            return explore_guided_strided(resolve_kernel(kname), seed, budget, runs_max, start,
                                          stride, actions_max)
        return explore_strided(resolve_kernel(kname), seed, budget, runs_max, start, stride,
                               actions_max, policy=strategy)
    except ModelFailure as mf:
        return mf, {"runs": mf.info.get("runs", 0), "steps": mf.info.get("steps", 0)}


def _actions_max(kname: str) -> int | None:
    """The explorer's run length: a catalogued bug's own (Bug.actions_max), else None (each
    fast-mode run draws one of explore.RUN_LENGTHS; the hybrid and guided engines run 60)."""
    return next((b.actions_max for b in BUGS if f"bug:{b.slug}" == kname), None)


def _fuzz_fast(kname, kcls, seed, budget, examples, workers, progress, strategy):
    from .explore import explore_strided
    if workers <= 1 and strategy == "hybrid":
        from .hybrid import explore_hybrid_strided
        return explore_hybrid_strided(kcls, seed, budget, examples, 0, 1,
                                      progress=lambda st, el: progress.update(st["runs"],
                                                                              st["steps"]),
                                      actions_max=_actions_max(kname))
    actions_max = _actions_max(kname)
    if workers <= 1 and strategy == "guided":
        from .guided import explore_guided_strided
        return explore_guided_strided(kcls, seed, budget, examples, 0, 1, actions_max,
                                      progress=lambda st, el: progress.update(st["runs"],
                                                                              st["steps"]))
    if workers <= 1:
        found, stats = explore_strided(kcls, seed, budget, examples, 0, 1, actions_max,
                                       policy=strategy,
                                       progress=lambda st, el: progress.update(st["runs"], st["steps"]))
        return found, stats
    jobs = [(kname, seed, budget, None if examples is None else -(-examples // workers), w, workers,
             strategy, actions_max) for w in range(workers)]
    ctx = multiprocessing.get_context("spawn")
    total = {"runs": 0, "steps": 0}
    best = None
    with ctx.Pool(workers) as pool:
        for found, stats in pool.imap_unordered(_explore_worker, jobs):
            total["runs"] += stats["runs"]
            total["steps"] += stats["steps"]
            if isinstance(found, ModelFailure):
                pool.terminate()
                found.info.update(runs=total["runs"], steps=total["steps"])
                raise found
            if found is not None and (best is None or found.run_index < best.run_index):
                best = found
                pool.terminate()
                break
    return best, total


def _hypothesis_worker(args):
    kname, seed, budget, examples, strategy = args
    quiet = Progress("", True)
    try:
        failure, stats = _fuzz_hypothesis(resolve_kernel(kname), seed, budget, examples, quiet,
                                          strategy)
    except ModelFailure as mf:
        return mf, {"runs": mf.info.get("runs", 0), "steps": mf.info.get("steps", 0)}
    if failure is not None:
        failure = dict(failure, violation=failure["violation"].to_json())
    return failure, stats


def _fuzz_hypothesis_parallel(kname, seed, budget, examples, workers, progress, strategy):
    """Worker w runs the campaign of seed * workers + w; the first failure wins."""
    from properties import Violation
    jobs = [(kname, seed * workers + w, budget,
             None if examples is None else -(-examples // workers), strategy)
            for w in range(workers)]
    total = {"runs": 0, "steps": 0}
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
        for failure, stats in pool.imap_unordered(_hypothesis_worker, jobs):
            total["runs"] += stats["runs"]
            total["steps"] += stats["steps"]
            progress.update(total["runs"], total["steps"], force=True)
            if isinstance(failure, ModelFailure):
                pool.terminate()
                failure.info.update(runs=total["runs"], steps=total["steps"])
                raise failure
            if failure is not None:
                pool.terminate()
                failure["violation"] = Violation.from_json(failure["violation"])
                return failure, total
    return None, total


def _fuzz_hypothesis(kcls, seed, budget, examples, progress, strategy="swarm"):
    """Chunks of at most CHUNK_EXAMPLES examples under seeds seed * 1000003 + i, so memory stays
    flat however long the campaign. Hypothesis's own shrink phase is off for every strategy (it
    has no time bound of ours: one rule-machine find under --budget 30 took 123 s); the failure is
    polished by the schedule shrinker."""
    from strategies import run_hypothesis
    from strategies.schedules import CHUNK_EXAMPLES, run_schedules_hypothesis
    chunk = CHUNK_EXAMPLES
    t0 = time.perf_counter()
    runs = steps = 0
    i = 0
    while True:
        if examples is not None and runs >= examples:
            break
        if examples is None and time.perf_counter() - t0 >= budget:
            break
        n = chunk if examples is None else min(chunk, examples - runs)
        base_runs, base_steps = runs, steps

        def on_progress(c):
            progress.update(base_runs + c.runs_total, base_steps + c.steps_total)
        try:
            if strategy == "rules":
                failure, st = run_hypothesis(kcls, seed * 1_000_003 + i, n,
                                             on_progress=on_progress, hypothesis_shrink=False)
            else:
                failure, st = run_schedules_hypothesis(kcls, seed * 1_000_003 + i, n, strategy,
                                                       on_progress=on_progress)
        except ModelFailure as mf:
            mf.info.update(runs=runs + mf.info.get("runs", 0),
                           steps=steps + mf.info.get("steps", 0), chunk=i)
            raise
        runs += st.runs_total
        steps += st.steps_total
        progress.update(runs, steps, force=True)
        if failure is not None:
            return failure, {"runs": runs, "steps": steps, "chunk": i}
        i += 1
    return None, {"runs": runs, "steps": steps}


def _report_found(kname, kcls, world, schedule, seed, engine, save_dir, extra, out_stream):
    """Shrink (fast mode) already done by the caller; replay once, render, save, print.
    Returns (path, number of quiescence actions up to the violation). A schedule that does
    not reproduce is a model failure."""
    run, outcome = execute(kcls, world, schedule)
    if outcome.violation is None:
        raise ModelFailure({
            "type": "ModelError", "message": "the found schedule did not reproduce on replay",
            "where": "mmfuzz/cli.py in _report_found", "traceback": [], "phase": "replay",
            "action": None, "world": world, "schedule": schedule})
    cx = Counterexample(kname, world, schedule, outcome.violation.prop, outcome.violation.why,
                        outcome.violation.facts, outcome.step, outcome.phase,
                        found_info(seed, engine, **extra))
    path = None
    if save_dir:
        rendered = render_cx(run, outcome, cx)
        try:
            path = save(cx, save_dir, rendered, kernel_cls=kcls)
        except ModelError as e:   # the determinism check refused it: the model misbehaved
            raise ModelFailure({
                "type": "ModelError", "message": str(e), "where": "mmfuzz/corpus.py in save",
                "traceback": [], "phase": "replay", "action": None, "world": world,
                "schedule": schedule}) from e
    print(render_cx(run, outcome, cx, path), file=out_stream)
    return path, outcome.violation, run.quiescence_actions(outcome.step)


def _lengths(schedule: list, quiescence: int) -> str:
    """"N actions", plus the quiescence actions up to the violation counted apart."""
    text = f"{len(schedule)} action{'s' if len(schedule) != 1 else ''}"
    if quiescence:
        text += f" + {quiescence} quiescence action{'s' if quiescence != 1 else ''}"
    return text


def report_model_failure(mf: ModelFailure, kname: str, engine: str, seed, save_dir,
                         shrink: bool = True, elapsed: float | None = None) -> int:
    """Exit status 3: the model or the variant failed. Shrink the schedule to a shorter one
    that raises the same exception (kept only if it does so on a strict replay), save it
    under DIR/failures/ (DIR = --save, else a new temporary directory), print the exception,
    where it was raised, the innermost frames, and a one-line summary. Never a find."""
    import tempfile
    info = dict(mf.info)
    before = len(info["schedule"])
    if shrink and info.get("phase") != "replay":
        try:
            kcls = resolve_kernel(kname)
            from .explore import shrink_failure
            world, schedule = shrink_failure(kcls, mf)
            try:
                execute(kcls, world, schedule, strict=True)
            except ModelFailure as again:
                if again.same(mf):
                    info = dict(again.info)
        except Exception:   # noqa: BLE001 - the shrinker failing must not hide the failure
            pass
    directory = save_dir or tempfile.mkdtemp(prefix="mmfuzz-failure-")
    extra = {k: mf.info[k] for k in ("run", "runs", "chunk") if mf.info.get(k) is not None}
    extra["schedule_len_before_shrink"] = before
    path = save_failure(info, kname, directory, found_info(seed, engine, **extra))
    print(f"MODEL FAILURE (not a find) kernel={kname} engine={engine} seed={seed}")
    print(f" {ModelFailure(info).summary()}")
    for line in info.get("traceback", [])[-6:]:
        print(f"   {line}")
    print(f" schedule: {_lengths(info['schedule'], 0)} (shrunk from {before}), saved {path}")
    print(f" replay: mmfuzz replay {path}")
    runs = mf.info.get("runs")
    when = ""
    if runs:
        when = f" after {runs} runs" + (f", {elapsed:.1f}s" if elapsed is not None else "")
    print(f"summary: kernel={kname} engine={engine} seed={seed}: model failure (exit 3) "
          f"{info['type']} at {info['where']}{when}; saved {path}")
    return EXIT_MODEL_FAILURE


def cmd_fuzz(kname: str, a, hunting: bool) -> int:
    kcls = resolve_kernel(kname)
    explicit = a.strategy is not None
    if not explicit:
        a.strategy = "swarm"
    chosen = choose_engine(a)
    if chosen == "guided":
        if a.strategy not in ("swarm", "guided"):
            raise UsageError(f"--engine guided continues swarm runs; --strategy {a.strategy} "
                             "is another engine's (drop it or use --strategy swarm)")
        a.strategy = "guided"
    fast = chosen in ("fast", "guided")
    if not fast and a.strategy == "guided":
        raise UsageError("--strategy guided is a fast-mode engine (a corpus of swarm runs "
                         "continued from replayed prefixes); drop --hypothesis")
    if not fast and a.strategy == "hybrid":
        raise UsageError("--strategy hybrid is a fast-mode engine (random scenarios searched by "
                         "exhaust); drop --hypothesis")
    if fast and a.strategy == "rules":
        raise UsageError("--strategy rules is Hypothesis's rule-based machine, not a fast-mode "
                         "strategy; drop --fast or pick swarm, pct or uniform")
    if not fast and a.strategy == "directed":
        raise UsageError("--strategy directed is a fast-mode strategy (swarm directed at the "
                         "variant's diff); drop --hypothesis or pick swarm")
    if not explicit and chosen == "fast":
        from .directed import focus_ops
        if focus_ops(kcls):   # a variant whose diff some operation reaches: aim at it
            a.strategy = "directed"
    engine = f"explore/{a.strategy}" if fast else f"hypothesis/{a.strategy}"
    budget = a.budget if a.budget is not None else (120.0 if hunting else 30.0)
    workers = a.workers or os.cpu_count() or 1
    if a.save:
        try:
            os.makedirs(a.save, exist_ok=True)
        except OSError as e:
            raise UsageError(f"--save {a.save}: cannot create the directory ({e.strerror})") from None
    if a.coverage and workers > 1:
        raise UsageError("--coverage measures this one process: drop --workers (or use "
                         "--workers 1)")
    seed, fresh = (a.seed, False) if a.seed is not None else (_fresh_seed(), True)
    limit = f"{a.examples} runs" if a.examples is not None else f"{budget:g}s"
    note = f" (fresh; reproduce with --seed {seed})" if fresh else ""
    print(f"mmfuzz {__version__}: kernel={kname} engine={engine} seed={seed}{note} "
          f"budget={limit} workers={workers}", file=sys.stderr)
    progress = Progress(f"{kname} {engine}", a.quiet,
                        None if a.examples is not None else budget, a.examples)
    cov = None
    if a.coverage:
        from .modelcov import ModelCoverage
        cov = ModelCoverage(kcls)
        cov.__enter__()
    from .kernels import KNOWN_SEEN
    KNOWN_SEEN.clear()
    collector = None
    if a.cost is not None:
        if workers > 1:
            raise UsageError("--cost records in one process; add --workers 1")
        from . import cost
        collector = cost.start(resolve_kernel(a.cost) if a.cost else None)
    t0 = time.perf_counter()
    try:
        return _campaign(kname, kcls, a, fast, engine, budget, workers, progress, t0, seed,
                         fresh, cov, collector)
    except ModelFailure as mf:
        if cov is not None:
            cov.__exit__(None, None, None)
        if collector is not None:
            from . import cost
            cost.stop()
        progress.done()
        return report_model_failure(mf, kname, engine, seed, a.save,
                                    elapsed=time.perf_counter() - t0)


def _campaign(kname, kcls, a, fast, engine, budget, workers, progress, t0, seed, fresh,
              cov, collector) -> int:
    from .kernels import KNOWN_SEEN
    if fast:
        found, stats = _fuzz_fast(kname, kcls, seed, None if a.examples is not None else budget,
                                  a.examples, workers, progress, a.strategy)
    else:
        if workers > 1:
            failure, stats = _fuzz_hypothesis_parallel(kname, seed, budget, a.examples,
                                                       workers, progress, a.strategy)
        else:
            failure, stats = _fuzz_hypothesis(kcls, seed, budget, a.examples, progress,
                                              a.strategy)
        found = failure
    if cov is not None:
        cov.__exit__(None, None, None)
    progress.update(stats["runs"], stats["steps"], force=True)
    progress.done()
    elapsed = time.perf_counter() - t0
    summary = {"mmfuzz": __version__, "kernel": kname, "engine": engine, "strategy": a.strategy,
               "seed": seed, "seed_fresh": fresh,
               "budget": ({"examples": a.examples} if a.examples is not None
                          else {"seconds": budget}),
               "workers": workers, "runs": stats["runs"], "steps": stats["steps"],
               "verdict": "clean", "property": None, "why": None, "schedule_len": None,
               "quiescence_len": None, "rows": None, "saved": None}
    if found is not None:
        if fast:
            from .explore import shrink
            t1 = time.perf_counter()
            world, schedule = shrink(kcls, found.world, found.actions, found.prop)
            extra = {"run": found.run_index, "found_after_s": round(found.seconds, 2),
                     "found_after_runs": found.runs, "shrink_s": round(time.perf_counter() - t1, 2),
                     "schedule_len_before_shrink": len(found.actions)}
            prop = found.prop
        else:
            world, schedule = found["world"], found["schedule"]
            extra = {"chunk": stats.get("chunk")}
            prop = found["violation"].prop
        path, v, quiescent = _report_found(kname, kcls, world, schedule, seed, engine, a.save,
                                           extra, sys.stderr if a.json else sys.stdout)
        summary.update(verdict="violation", property=prop, schedule_len=len(schedule),
                       quiescence_len=quiescent, rows=segments(schedule), saved=path,
                       why=v.why, facts=v.facts)
    if collector is not None:
        from . import cost
        cost.stop()
        print(cost.render(collector.record, kname, collector.compare, a.cost),
              file=sys.stderr if a.json else sys.stdout)
        summary["cost"] = collector.record.to_json()
        summary["cost_note"] = f"; cost: {collector.record.summary()}" + (
            f" (on {a.cost}: {collector.compare.summary()})" if collector.compare else "")
        if collector.compare:
            summary["cost_on"] = {"kernel": a.cost, **collector.compare.to_json()}
    if KNOWN_SEEN:   # known-open races of mainline (mmfuzz.kernels.KNOWN_OPEN), set aside
        summary["known_open"] = dict(KNOWN_SEEN)
        summary["cost_note"] = summary.get("cost_note", "") + "; known-open races set aside: " + \
            ", ".join(f"{k} x{n}" for k, n in KNOWN_SEEN.items())
    status = EXIT_CLEAN if found is None else EXIT_VIOLATION
    _print_summary(summary, elapsed, cov, a.json)
    return status


def _fresh_seed() -> int:
    """A seed no earlier run used (with overwhelming odds): 32 bits from os.urandom."""
    return int.from_bytes(os.urandom(4), "big")


def _print_summary(summary: dict, elapsed: float, cov, as_json: bool) -> None:
    """The summary line depends only on the kernel, engine, seed and an --examples budget (so
    two runs with the same seed print the same line); timings are on the `time:` line after
    it. With --json, one JSON object on stdout instead (the human lines go to stderr)."""
    rate = summary["steps"] / elapsed if elapsed > 0 else 0
    head = (f"summary: kernel={summary['kernel']} engine={summary['engine']} "
            f"seed={summary['seed']}: ")
    if summary["verdict"] == "clean":
        line = head + f"no violation in {summary['runs']} runs, {summary['steps']} steps"
    else:
        shrunk = [None] * summary["schedule_len"]
        line = (head + f"{summary['property']} after {summary['runs']} runs; shrunk to "
                f"{_lengths(shrunk, summary['quiescence_len'] or 0)} in {summary['rows']} "
                f"row{'s' if summary['rows'] != 1 else ''}"
                + (f"; saved {summary['saved']}" if summary["saved"] else ""))
    line += summary.pop("cost_note", "")
    timing = f"time: {elapsed:.1f}s, {rate:,.0f} steps/s"
    out = sys.stderr if as_json else sys.stdout
    if cov is not None and not as_json:
        print(cov.report(), file=out)
    print(line, file=out)
    print(timing, file=out)
    if as_json:
        data = dict(summary, elapsed_s=round(elapsed, 3), steps_per_s=round(rate))
        if cov is not None:
            data["coverage"] = cov.to_json()
        print(json.dumps(data))


def cmd_replay(a) -> int:
    """Replay each file on its own kernel (only mainline or bug:SLUG resolve from a file) or on
    --kernel (which may be imported: the user named it). Every file is loaded and checked
    before any runs. Exit 1 if any replay shows a violation."""
    status = EXIT_CLEAN
    cxs = []
    for path in a.files:   # every file is loaded and checked before any runs
        failure = load_failure(path)
        cxs.append((path, failure if failure is not None else load(path)))
    if a.kernel:
        try:
            resolve_kernel(a.kernel)
        except KernelNameError as e:
            raise CorpusError(f"--kernel: {e}") from None
    else:
        for _, cx in cxs:
            if not isinstance(cx, dict):
                kernel_for(cx)
    for path, cx in cxs:
        if isinstance(cx, dict):
            status = max(status, _replay_failure(path, cx, a))
            continue
        kname = a.kernel or cx.kernel
        try:
            v = check(cx, a.kernel)
        except ModelFailure as mf:
            print(f"{path}: the model failed on {kname}")
            status = max(status, report_model_failure(mf, kname, "replay", cx.found.get("seed"),
                                                      a.save))
            continue
        if v.outcome.violation is not None:
            status = max(status, EXIT_VIOLATION)
            print(render_cx(v.run, v.outcome, cx, cx.path))
        print(v.message)
        print(f"  why: {cx.why}")
    return status


def _replay_failure(path: str, d: dict, a) -> int:
    """Re-run a saved model failure: exit 3 if it fails again (the same way or another),
    0 if the schedule now runs clean, 1 if it now violates a property."""
    from .run import Divergence
    kname = a.kernel or d["kernel"]
    want = d["failure"].get("type")
    try:
        _, out = execute(resolve_kernel(kname), d["world"], d["schedule"],
                         strict=kname == d["kernel"])
    except ModelFailure as mf:
        same = "reproduced" if mf.type == want else f"a different model failure (was {want})"
        print(f"{path}: {same} on {kname}: {mf.summary()}")
        for line in mf.info["traceback"][-6:]:
            print(f"   {line}")
        print(f"summary: model failure (exit 3) {mf.type} at {mf.info['where']}")
        return EXIT_MODEL_FAILURE
    except Divergence as e:
        raise CorpusError(f"{path}: the schedule no longer fits kernel {kname}: {e}") from None
    if out.violation is not None:
        print(f"{path}: no model failure on {kname}, but {out.violation.prop}: "
              f"{out.violation.why}")
        return EXIT_VIOLATION
    print(f"{path}: no model failure on {kname}: the schedule runs clean (was {want})")
    return EXIT_CLEAN


def _show_failure(path: str, d: dict) -> int:
    """Render a saved model failure: the trace of its schedule up to the action that raised,
    then the exception."""
    from .run import Run
    from .trace import render
    kcls = resolve_kernel(d["kernel"])
    title = f"MODEL FAILURE {d['failure'].get('type')}   kernel={d['kernel']}"
    try:
        run = Run(kcls, d["world"])
        for action in d["schedule"]:
            run.apply(action)
        run.quiesce()
    except ModelFailure as mf:
        print(render(run, title) if "run" in locals() else title)
        print(f" {mf.summary()}")
        for line in mf.info["traceback"][-6:]:
            print(f"   {line}")
        print(f" replay: mmfuzz replay {path}")
        return EXIT_MODEL_FAILURE
    print(f"{path}: no model failure on {d['kernel']}: the schedule runs clean now")
    return EXIT_CLEAN


def cmd_show(a) -> int:
    from .run import Run
    from .trace import show
    failure = load_failure(a.file)
    if failure is not None:
        return _show_failure(a.file, failure)
    cx = load(a.file)
    _, kcls = kernel_for(cx)
    try:
        run, out, _ = replay(cx)
    except ModelFailure as mf:
        print(f"{a.file}: the model failed on {cx.kernel}: {mf.summary()}")
        return EXIT_MODEL_FAILURE
    print(show(run, out, cx, Run(kcls, cx.world)))
    return EXIT_VIOLATION if out.violation is not None else EXIT_CLEAN


def cmd_exhaust(a) -> int:
    from .exhaust import exhaust_cx
    cx = load(a.file)
    kname, _ = kernel_for(cx, a.kernel)   # a file's own kernel never causes an import
    try:
        res = exhaust_cx(cx, kname, preemptions_max=a.preemptions, states_max=a.states_max)
    except ModelFailure as mf:
        if mf.type == "OutOfFrames":   # the file's world is too small: bad input
            raise CorpusError(f"{a.file}: the world is too small for the scenario: it ran out "
                              f"of page frames (world.nframes = {cx.world['nframes']}); raise "
                              "world.nframes") from None
        return report_model_failure(mf, kname, "exhaust", None, a.save)
    bound = "no preemption bound" if a.preemptions is None else f"preemption bound {a.preemptions}"
    head = (f"{a.file}: {res.interleavings} interleavings, {res.states} states, {bound}, "
            f"kernel {kname}, {res.elapsed_s:.1f}s")
    if res.violation is not None:
        run, out = execute(resolve_kernel(kname), cx.world, res.schedule)
        shown = Counterexample(kname, cx.world, res.schedule, res.violation.prop,
                               res.violation.why, res.violation.facts, out.step, out.phase,
                               found_info(None, "exhaust", preemptions=a.preemptions))
        print(render_cx(run, out, shown))
        print(f"{head}: {res.violation.prop} found, shortest schedule {len(res.schedule)} "
              "actions")
        return EXIT_VIOLATION
    if res.truncated:
        print(f"{head}: no violation, but NOT exhaustive: stopped at --states-max "
              f"{a.states_max}; raise it or give --preemptions")
    else:
        print(f"{head}: every interleaving is clean")
    return EXIT_CLEAN


def cmd_ops(a) -> int:
    """The operation registry (mmfuzz.ops) as a person writing a corpus file or a variant needs
    it: name, context, arguments with their domains, the kernel function, what it models."""
    from . import ops
    from .run import ACTION_ARGS
    from .kernel import Mainline
    rows = []
    for op in ops.operations().values():
        row = op.to_json()
        doc = (getattr(Mainline, op.method, None).__doc__ or "").strip()
        # the first paragraph of the modelled function's docstring: the kernel path it follows
        row["models"] = " ".join(doc.split("\n\n")[0].split())
        rows.append(row)
    if a.json:
        print(json.dumps(rows, indent=1))
        return EXIT_CLEAN
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        form = json.dumps(["start", "CPU", r["name"], *[n.upper() for n in r["arg_names"]]])
        print(f"{r['name']:{width}}  {r['context']:8}  {r['doc']}")
        print(f"{'':{width}}  action    {form}")
        for arg in r["args"] or ["(no arguments)"]:
            print(f"{'':{width}}  argument  {arg}")
        print(f"{'':{width}}  function  {r['module']}.{r['kernel_function']}")
        for kind in ("writes", "reads"):
            for k, piece in enumerate(textwrap.wrap(", ".join(r[kind]) or "-", 96 - width)):
                print(f"{'':{width}}  {kind if k == 0 else '':8}  {piece}")
        if r["models"]:
            for k, piece in enumerate(textwrap.wrap(r["models"], 96 - width)):
                print(f"{'':{width}}  {'models' if k == 0 else '':8}  {piece}")
    kinds = ", ".join(ACTION_ARGS)
    print(f"\nactions a schedule may hold: {kinds} (docs/corpus-format.md \"Actions\"); a variant "
          "overrides the kernel function by name (docs/variants.md)")
    return EXIT_CLEAN


def cmd_bugs(a) -> int:
    """The catalogue: the bugs the fuzzer finds from scratch (kernels.BUGS), then the variants
    the model has but the search does not reach (kernels.UNFOUND), marked as such."""
    rows = [{"slug": b.slug, "kernel": f"bug:{b.slug}", "fix": b.fix, "property": b.prop,
             "title": b.title, "found_from_scratch": found}
            for bugs, found in ((BUGS, True), (UNFOUND, False)) for b in bugs]
    if a.json:
        print(json.dumps(rows, indent=1))
    else:
        ws = max(len(r["slug"]) for r in rows)
        wp = max(len(r["property"]) for r in rows)
        first_unfound = next((r for r in rows if not r["found_from_scratch"]), None)
        for r in rows:
            if r is first_unfound:
                print("not found from scratch (the model has the race, random search does not "
                      "reach it; `mmfuzz hunt --kernel bug:SLUG` fuzzes one anyway):")
            print(f"{r['slug']:{ws}}  {r['fix']:12}  {r['property']:{wp}}  {r['title']}")
    return EXIT_CLEAN


def main(argv=None) -> int:
    """Run one command. A closed output pipe (``mmfuzz bugs --json | head -c 400``) ends it
    quietly, as Unix tools do: exit 141 (128 + SIGPIPE, what a shell reports for a tool killed
    by the signal), no traceback, no further output."""
    try:
        status = _main(argv)
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        for stream in (sys.stdout, sys.stderr):
            try:
                os.dup2(devnull, stream.fileno())
            except (OSError, ValueError):
                pass
        return EXIT_BROKEN_PIPE


def _main(argv=None) -> int:
    try:
        a = build_parser().parse_args(argv)
        if a.cmd == "bugs":
            return cmd_bugs(a)
        if a.cmd == "fuzz":
            return cmd_fuzz(a.kernel, a, hunting=False)
        if a.cmd == "hunt":
            if (a.slug is None) == (a.kernel is None):
                raise UsageError("hunt takes a bug SLUG (see `mmfuzz bugs`) or --kernel K, "
                                 "not both and not neither")
            if a.kernel is not None:
                return cmd_fuzz(a.kernel, a, hunting=True)
            bug = bug_by_slug(a.slug)
            return cmd_fuzz(f"bug:{bug.slug}", a, hunting=True)
        if a.cmd == "replay":
            return cmd_replay(a)
        if a.cmd == "show":
            return cmd_show(a)
        if a.cmd == "exhaust":
            return cmd_exhaust(a)
        if a.cmd == "ops":
            return cmd_ops(a)
    except (UsageError, KernelNameError, CorpusError) as e:
        print(f"mmfuzz: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        raise   # main() ends the command quietly; keep this before any catch-all clause
    except KeyboardInterrupt:
        print("mmfuzz: interrupted", file=sys.stderr)
        return 130
    except Exception as e:   # noqa: BLE001 - a crash of mmfuzz itself is never exit 1 (a find)
        import traceback
        traceback.print_exc()
        frames = traceback.extract_tb(e.__traceback__)
        where = f"{frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}" if frames else "?"
        print(f"mmfuzz: internal error (not a find; exit 3): {type(e).__name__}: {e} at {where}",
              file=sys.stderr)
        return EXIT_MODEL_FAILURE
    return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
