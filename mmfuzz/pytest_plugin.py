"""The mmfuzz pytest plugin: the corpus as tests, and fuzz campaigns against a user's kernel.

Loaded by the ``pytest11`` entry point (or ``-p mmfuzz.pytest_plugin``). What it adds:

- Every counterexample file of the corpus (``--mmfuzz-corpus DIR``, default ``corpus``, every
  ``*.json`` below it) is a test item named after the file, replayed on its own kernel
  (``FILE::replay[bug:SLUG]``: the recorded violation must come back, or a pass file must stay
  clean), and, for a file recorded on any other kernel than mainline, replayed on mainline
  (``FILE::replay[mainline]``: it must be clean). Corpus items are added when pytest runs its
  default test paths, when the corpus directory itself is named on the command line, and with
  ``--mmfuzz-kernel``. A file naming a kernel that is neither mainline nor ``bug:SLUG`` is
  data: its kernel is imported only when the user names it with ``--mmfuzz-kernel``;
  otherwise its item is skipped with the option to pass.
- ``--mmfuzz-kernel K`` (``mainline``, ``bug:SLUG`` or ``package.module:Class``, as for
  ``mmfuzz fuzz --kernel``; a module is imported from the Python path plus the directory
  pytest runs in; a bad name is a usage error): every corpus file is also replayed on K
  (``FILE::replay[K]``, it must be clean: a variant must not bring back a known race), and a
  fuzz campaign runs against K (``mmfuzz::campaign[K#i/n]``). Under ``pytest -n N`` the
  campaign is split into N shards, one per worker (shard i runs seed ``seed * N + i``, as
  ``mmfuzz fuzz --workers N`` does), and corpus files are spread over the workers like any
  other test. A violation fails the campaign item with the counterexample printed as CPU
  columns (saved too, with ``--mmfuzz-save DIR``).
- ``--mmfuzz-budget B``: the campaign budget, ``30s``, ``30`` (seconds), ``10m``, ``1h``, or
  ``500x`` (examples: the same search on any machine). A time budget is a graceful stop: the
  campaign finishes the chunk it is in, passes if it found nothing, and the terminal summary
  says how many runs and steps it made. Under ``-n N`` each shard gets the whole time budget
  or 1/N of the examples.
- ``--mmfuzz-profile dev|pr|nightly`` (strategies/profiles.py): the Hypothesis settings
  profile of the campaign, its seed policy and default budget; it is also loaded as
  Hypothesis's profile for the session (unless ``--hypothesis-profile`` is given), so
  Hypothesis's automatic ``ci`` profile is never used. ``--mmfuzz-seed N`` fixes the seed
  (``dev`` and ``nightly`` draw a fresh one per session, printed in the header);
  ``--mmfuzz-database DIR`` moves the example database (default ``.hypothesis/examples``).
- ``--mmfuzz-strategy`` picks the campaign's scheduling strategy (swarm by default).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

CAMPAIGN_NODE = "mmfuzz"
_SUMMARIES: list[dict] = []   # campaign summaries reported to this process (the controller)
_BUDGET_RE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*(s|m|h|x)?\s*$")
_UNITS = {None: 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


# ------------------------------------------------------------------ options -------------
def pytest_addoption(parser):
    group = parser.getgroup("mmfuzz")
    group.addoption("--mmfuzz-corpus", default="corpus",
                    help="directory of saved counterexamples to replay (default: corpus)")
    group.addoption("--mmfuzz-kernel", metavar="K", default=None,
                    help="replay the corpus on kernel K and run a fuzz campaign against it: "
                    "mainline, bug:SLUG or package.module:Class")
    group.addoption("--mmfuzz-budget", metavar="B", default=None,
                    help="campaign budget: seconds (30, 30s, 10m, 1h) or examples (500x); "
                    "default: the profile's")
    group.addoption("--mmfuzz-profile", choices=("dev", "pr", "nightly"), default="dev",
                    help="settings profile: dev (default), pr or nightly")
    group.addoption("--mmfuzz-seed", metavar="N", default=None,
                    help="campaign seed (default: 0 under pr, fresh under dev and nightly)")
    group.addoption("--mmfuzz-strategy", choices=("swarm", "pct", "uniform", "rules"),
                    default="swarm", help="campaign scheduling strategy (default swarm)")
    group.addoption("--mmfuzz-save", metavar="DIR", default=None,
                    help="save a campaign's counterexample under DIR")
    group.addoption("--mmfuzz-database", metavar="DIR", default=None,
                    help="the profiles' example database directory (default .hypothesis/examples)")


def parse_budget(text: str) -> tuple[float | None, int | None]:
    """``30``, ``30s``, ``10m``, ``1h`` -> (seconds, None); ``500x`` -> (None, 500)."""
    m = _BUDGET_RE.match(str(text))
    if not m:
        raise ValueError(f"--mmfuzz-budget {text!r}: use seconds (30, 30s, 10m, 1h) or a number "
                         "of examples (500x)")
    value, unit = float(m.group(1)), m.group(2)
    if unit == "x":
        if value != int(value) or value < 1:
            raise ValueError(f"--mmfuzz-budget {text!r}: a number of examples is a whole "
                             "number, 1 or more (500x)")
        return None, int(value)
    if value <= 0:
        raise ValueError(f"--mmfuzz-budget {text!r}: must be more than 0 seconds")
    return value * _UNITS[unit], None


def _fresh_seed() -> int:
    return int.from_bytes(os.urandom(4), "big")


def _resolve_user_kernel(name: str, config) -> type:
    """The class of ``--mmfuzz-kernel``, checked once at the start: a bad name is one line of
    usage error, not a failure per item. A ``package.module:Class`` is imported from the Python
    path plus the directory pytest runs in (as ``python -m pytest`` would have it), so
    ``pytest --mmfuzz-kernel tests.variants:X`` works from a checkout."""
    import sys

    from .kernels import KernelNameError, resolve_kernel
    here = str(config.invocation_params.dir)
    if ":" in name and not name.startswith("bug:") and here not in sys.path:
        sys.path.insert(0, here)
    try:
        return resolve_kernel(name)
    except KernelNameError as e:
        raise pytest.UsageError(f"--mmfuzz-kernel: {e}") from None


class _Options:
    """What every process of a session agrees on (xdist workers get it from the controller,
    so a fresh seed is drawn once)."""

    def __init__(self, config):
        from strategies.profiles import profile
        named = config.getoption("--mmfuzz-corpus")
        corpus = Path(named)
        if not corpus.is_absolute():
            here = Path(config.invocation_params.dir, corpus)
            corpus = here if here.exists() else Path(config.rootpath, corpus)
        if named != "corpus" and not corpus.is_dir():
            raise pytest.UsageError(f"--mmfuzz-corpus {named}: no such directory; name the "
                                    "directory that holds the corpus files")
        self.corpus = str(corpus)
        self.kernel = config.getoption("--mmfuzz-kernel")
        if self.kernel:
            _resolve_user_kernel(self.kernel, config)
        self.profile = profile(config.getoption("--mmfuzz-profile"))
        self.strategy = config.getoption("--mmfuzz-strategy")
        self.save = config.getoption("--mmfuzz-save")
        budget = config.getoption("--mmfuzz-budget") or self.profile.budget
        try:
            self.seconds, self.examples = parse_budget(budget)
        except ValueError as e:
            raise pytest.UsageError(str(e)) from None
        self.budget = budget
        seed = config.getoption("--mmfuzz-seed")
        winput = getattr(config, "workerinput", None)
        if winput is not None and "mmfuzz_seed" in winput:
            self.seed, self.seed_fresh = winput["mmfuzz_seed"], winput["mmfuzz_seed_fresh"]
        elif seed is not None:
            try:
                self.seed = int(seed, 0)
            except ValueError:
                raise pytest.UsageError(f"--mmfuzz-seed {seed!r} is not an integer") from None
            if self.seed < 0:
                raise pytest.UsageError(f"--mmfuzz-seed {seed!r} must be 0 or more")
            self.seed_fresh = False
        elif self.profile.fresh_seed:
            self.seed, self.seed_fresh = _fresh_seed(), True
        else:
            self.seed, self.seed_fresh = 0, False
        # corpus items: on pytest's default paths, or whenever a kernel is named
        explicit = config.args_source == pytest.Config.ArgsSource.ARGS
        self.auto_corpus = bool(self.kernel) or not explicit
        self.shards = int(winput["workercount"]) if winput is not None else 1


def pytest_configure(config):
    config.addinivalue_line("markers", "cost(seconds): rough duration of a test on one core")
    database = config.getoption("--mmfuzz-database")
    if database:
        from strategies import profiles
        profiles.register(str(Path(config.invocation_params.dir, database)))
    config._mmfuzz = _Options(config)
    if not config.getoption("hypothesis_profile", None):
        from hypothesis import settings
        settings.load_profile(config._mmfuzz.profile.hypothesis)
    _SUMMARIES.clear()


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """xdist controller: every worker uses the controller's seed."""
    o = node.config._mmfuzz
    node.workerinput["mmfuzz_seed"] = o.seed
    node.workerinput["mmfuzz_seed_fresh"] = o.seed_fresh


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session):
    """The campaign's header, printed at the start even under -q (a fresh seed must be known
    before a long run can be cut short)."""
    config = session.config
    o = config._mmfuzz
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if not o.kernel or tr is None or hasattr(config, "workerinput"):
        return
    fresh = f" (fresh; rerun with --mmfuzz-seed {o.seed})" if o.seed_fresh else ""
    tr.write_line(f"mmfuzz: kernel {o.kernel}, profile {o.profile.name}, seed {o.seed}{fresh}, "
                  f"budget {o.budget}, strategy {o.strategy}")


# ------------------------------------------------------------------ the corpus ----------
def corpus_files(root: str) -> list[str]:
    from .corpus import files
    return files(root)


@pytest.fixture(scope="session")
def mmfuzz_corpus_dir(request) -> str:
    """The corpus directory the plugin replays (``--mmfuzz-corpus``, resolved)."""
    return request.config._mmfuzz.corpus


def _check(cx, path: str, kernel: str | None):
    """mmfuzz.corpus.check (the expected verdict on the file's own kernel, "pass" on any other),
    plus the rendered race when the replay shows a violation."""
    import dataclasses

    from .corpus import check, render_cx
    v = check(cx, kernel)
    shown = cx if v.kernel == cx.kernel else dataclasses.replace(cx, kernel=v.kernel)
    text = render_cx(v.run, v.outcome, shown, path) if v.outcome.violation is not None else ""
    return v, text


class MmfuzzFailure(Exception):
    """A failed mmfuzz item; the message is the whole report (no Python traceback)."""


class _MmfuzzItem(pytest.Item):
    def repr_failure(self, excinfo, style=None):
        if excinfo.errisinstance(MmfuzzFailure):
            return str(excinfo.value)
        from .corpus import CorpusError
        if excinfo.errisinstance(CorpusError):
            return f"corpus error: {excinfo.value}"
        if excinfo.errisinstance(_model_failures()):
            return (f"{self.nodeid}: the model or the variant failed on this replay "
                    f"({excinfo.type.__name__}: {excinfo.value}); not a find: fix the variant "
                    "(or report a model bug)")
        return super().repr_failure(excinfo, style)


class CorpusFile(pytest.File):
    """One corpus file: its replay items."""

    def collect(self):
        from .corpus import CorpusError, load
        o = self.config._mmfuzz
        try:
            cx = load(str(self.path))
        except CorpusError as e:
            yield ReplayItem.from_parent(self, name="load", kernel=None, role="load",
                                         error=str(e))
            return
        own = cx.kernel
        yield ReplayItem.from_parent(self, name=f"replay[{own}]", kernel=own, role="own")
        if own != "mainline":
            yield ReplayItem.from_parent(self, name="replay[mainline]", kernel="mainline",
                                         role="clean")
        if o.kernel and o.kernel not in (own, "mainline"):
            yield ReplayItem.from_parent(self, name=f"replay[{o.kernel}]", kernel=o.kernel,
                                         role="clean")


class ReplayItem(_MmfuzzItem):
    def __init__(self, *, kernel, role, error=None, **kw):
        super().__init__(**kw)
        self.kernel, self.role, self.error = kernel, role, error

    def runtest(self):
        from .corpus import is_file_kernel, load
        path = str(self.path)
        if self.role == "load":
            raise MmfuzzFailure(f"corpus error: {self.error}")
        user = self.config._mmfuzz.kernel
        if not is_file_kernel(self.kernel) and self.kernel != user:
            pytest.skip(f"{path} names kernel {self.kernel}; a corpus file never causes an "
                        f"import: run with --mmfuzz-kernel {self.kernel} to replay it")
        cx = load(path)
        own = self.role == "own"
        v, text = _check(cx, path, None if own and is_file_kernel(cx.kernel) else self.kernel)
        rel = self.nodeid.split("::")[0]
        if not v.ok:
            raise MmfuzzFailure(f"{rel}: {v.message.partition(': ')[2] or v.message}"
                                + (f"\n{text}" if text else ""))
        if own and cx.step is not None and v.outcome.violation is not None \
                and v.outcome.step != cx.step:
            raise MmfuzzFailure(f"{rel}: {cx.prop} reproduced at step {v.outcome.step}, "
                                f"recorded at step {cx.step}")

    def reportinfo(self):
        return self.path, None, f"{self.name} ({self.role})"


def pytest_collect_file(file_path: Path, parent):
    """``pytest corpus/`` (or a corpus in testpaths) collects the corpus files directly."""
    if file_path.suffix != ".json":
        return None
    root = Path(parent.config._mmfuzz.corpus).resolve()
    try:
        file_path.resolve().relative_to(root)
    except ValueError:
        return None
    return CorpusFile.from_parent(parent, path=file_path)


# ------------------------------------------------------------------ campaigns -----------
class CampaignItem(_MmfuzzItem):
    """One shard of the fuzz campaign against ``--mmfuzz-kernel``."""

    def __init__(self, *, shard, shards, **kw):
        super().__init__(**kw)
        self.shard, self.shards = shard, shards

    def runtest(self):
        from .kernels import KernelNameError, resolve_kernel
        o = self.config._mmfuzz
        try:
            kcls = resolve_kernel(o.kernel)
        except KernelNameError as e:
            raise MmfuzzFailure(f"--mmfuzz-kernel: {e}") from None
        seed = o.seed * self.shards + self.shard
        examples = None if o.examples is None else -(-o.examples // self.shards)
        try:
            failure, runs, steps = run_campaign(kcls, seed, o.seconds, examples, o.strategy,
                                                o.profile.name)
        except _model_failures() as e:
            self.user_properties.append(("mmfuzz_campaign", json.dumps(
                {"kernel": o.kernel, "shard": self.shard, "shards": self.shards, "seed": seed,
                 "runs": 0, "steps": 0, "property": None,
                 "model_failure": f"{type(e).__name__}: {e}"})))
            raise MmfuzzFailure(f"campaign: kernel {o.kernel}, seed {seed}: the model or the "
                                f"variant failed ({type(e).__name__}: {e}); not a find: fix "
                                "the variant (or report a model bug)") from None
        info = {"kernel": o.kernel, "shard": self.shard, "shards": self.shards, "seed": seed,
                "profile": o.profile.name, "strategy": o.strategy, "budget": o.budget,
                "runs": runs, "steps": steps,
                "property": failure["violation"].prop if failure else None}
        if failure is None:
            self.user_properties.append(("mmfuzz_campaign", json.dumps(info)))
            return
        text, path = _render_failure(o.kernel, kcls, failure, seed, o, examples)
        info["saved"] = path
        self.user_properties.append(("mmfuzz_campaign", json.dumps(info)))
        raise MmfuzzFailure(text)

    def reportinfo(self):
        return "mmfuzz", None, self.name


def _model_failures() -> tuple:
    """The exceptions by which the model says it failed itself (mmfuzz.run: ModelError, and
    ModelFailure where that exists): never a find."""
    from . import run
    return tuple(c for c in (getattr(run, "ModelError", None), getattr(run, "ModelFailure", None))
                 if c is not None)


def run_campaign(kcls, seed: int, seconds: float | None, examples: int | None, strategy: str,
                 profile: str | None):
    """A campaign in chunks of CHUNK_EXAMPLES under seeds seed * 1000003 + i (the chunking of
    ``mmfuzz fuzz``, so a shard with an examples budget is the search ``mmfuzz fuzz --seed
    SEED --examples N --strategy S`` makes), until a violation, the examples or the time
    budget; a time budget is checked between chunks. Returns (failure or None, runs, steps)."""
    from strategies import run_hypothesis
    from strategies.schedules import CHUNK_EXAMPLES, run_schedules_hypothesis
    t0 = time.perf_counter()
    runs = steps = i = 0
    while True:
        if examples is not None and runs >= examples:
            break
        if examples is None and time.perf_counter() - t0 >= seconds:
            break
        n = CHUNK_EXAMPLES if examples is None else min(CHUNK_EXAMPLES, examples - runs)
        if strategy == "rules":
            failure, st = run_hypothesis(kcls, seed * 1_000_003 + i, n, hypothesis_shrink=False,
                                         profile=profile)
        else:
            failure, st = run_schedules_hypothesis(kcls, seed * 1_000_003 + i, n, strategy,
                                                   profile=profile)
        runs += st.runs_total
        steps += st.steps_total
        if failure is not None:
            return failure, runs, steps
        i += 1
    return None, runs, steps


def _render_failure(kname, kcls, failure, seed, o, examples):
    from .corpus import Counterexample, found_info, render_cx, save
    from .run import execute
    run, out = execute(kcls, failure["world"], failure["schedule"])
    if out.violation is None:
        raise MmfuzzFailure(f"model error: the failing schedule found on {kname} did not "
                            "reproduce on replay")
    cx = Counterexample(kname, failure["world"], failure["schedule"], out.violation.prop,
                        out.violation.why, out.violation.facts, out.step, out.phase,
                        found_info(seed, f"hypothesis/{o.strategy}", profile=o.profile.name))
    path = None
    if o.save:
        os.makedirs(o.save, exist_ok=True)
        path = save(cx, o.save, render_cx(run, out, cx), kernel_cls=kcls)
    budget = f"--examples {examples}" if examples is not None else f"--budget {o.seconds:g}"
    return (render_cx(run, out, cx, path) + f"\n campaign: kernel {kname}, seed {seed}, profile "
            f"{o.profile.name}; search again with: mmfuzz fuzz --hypothesis --kernel {kname} "
            f"--seed {seed} {budget} --strategy {o.strategy}"), path


def _campaign_cost(o) -> float:
    return o.seconds if o.seconds is not None else o.examples / max(o.shards, 1) / 200.0


# ------------------------------------------------------------------ collection ----------
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items):
    """Add the corpus items (unless pytest already collected them from the corpus directory)
    and the campaign shards, before any other plugin sorts or deselects."""
    o = config._mmfuzz
    added = []
    if o.auto_corpus and os.path.isdir(o.corpus):
        have = {it.nodeid.split("::")[0] for it in items}
        for path in corpus_files(o.corpus):
            node = CorpusFile.from_parent(session, path=Path(path).resolve())
            if node.nodeid in have:
                continue
            added.extend(node.collect())
    if o.kernel:
        cost = _campaign_cost(o)
        for i in range(o.shards):
            item = CampaignItem.from_parent(
                session, name=f"campaign[{o.kernel}#{i}/{o.shards}]",
                nodeid=f"{CAMPAIGN_NODE}::campaign[{o.kernel}#{i}/{o.shards}]",
                shard=i, shards=o.shards)
            item.add_marker(pytest.mark.cost(cost))
            added.append(item)
    items[:0] = added


# ------------------------------------------------------------------ summary -------------
def pytest_runtest_logreport(report):
    if report.when != "call":
        return
    for key, value in report.user_properties:
        if key == "mmfuzz_campaign":
            _SUMMARIES.append(json.loads(value))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    o = getattr(config, "_mmfuzz", None)
    if o is None or not o.kernel or hasattr(config, "workerinput"):
        return
    tr = terminalreporter
    tr.section("mmfuzz campaign")
    rows = sorted(_SUMMARIES, key=lambda d: d["shard"])
    if not rows:
        tr.line(f"kernel {o.kernel}: no campaign ran (deselected?)")
        return
    runs = sum(d["runs"] for d in rows)
    steps = sum(d["steps"] for d in rows)
    for d in rows:
        tr.line(f"kernel {d['kernel']} shard {d['shard']}/{d['shards']} seed {d['seed']}: "
                + (f"the model or the variant failed ({d['model_failure']})"
                   if d.get("model_failure") else
                   f"{d['property'] or 'no violation'} in {d['runs']} runs, {d['steps']} steps")
                + (f"; saved {d['saved']}" if d.get("saved") else ""))
    found = [d for d in rows if d["property"] or d.get("model_failure")]
    tr.line(f"kernel {o.kernel}, profile {o.profile.name}, seed {o.seed}, budget {o.budget}, "
            f"strategy {o.strategy}: "
            + ((f"{found[0]['property']} found" if found[0]["property"] else "model failure")
               if found else "no violation")
            + f"; {runs} runs, {steps} steps in {len(rows)} shard(s)")
