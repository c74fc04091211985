"""The coverage-guided schedule search (``--strategy guided``): a corpus of runs that reached
new interleavings, and runs that continue them instead of drawing everything afresh.

Random swarm runs re-draw the world, the operations and every scheduling choice for each run,
so a race that needs two particular operations in flight together costs about (m/n)^2 runs
for n declared operations and m starts a run (bench/RESULTS-runs.md). Concurrency fuzzers
(Krace's alias coverage, Snowboard, Conzzer's concurrency edges; AFL and syzkaller's corpus
and mutation) keep what reached a new interleaving and go on from there. So does this engine:

Feedback signal (``features``), computed once per run from its trace (a pass over the steps
already recorded, no per-step cost in the run loop and none on the swarm path): a step's
*label* is the kernel function its yield text names first ("zap_pte_range", "folio_mkclean",
"spins", "load"; LABEL "label" keeps the whole text with its numbers dropped instead), and a
step of CPU x with label L gives the features L and, for every other CPU y whose operation is
in flight (started, not yet returned), the pair (y's operation, L) (CONTEXT "label" pairs
with the label of y's last step instead: Conzzer's concurrency edges). Why this one: a race
is a step of one operation inside another operation's window, and this pair says which
kernel code ran inside which operation's window; it is already in the trace, so it costs a
dictionary look-up per step. The finer signals never settle: over 2,000 swarm runs on
mainline the label-pair signal still had something new in 95% of the runs (36,000
features), the (operation, function) pair in 26% (2,700 features), so only the coarse one
leaves a corpus small enough (20 to 60 entries) for its entries to be mutated often.
Quiescence steps are left out (the same function of the run's end state every time).

Corpus: a run whose features include one no earlier run had is kept as an entry: its world,
its swarm policy (the knobs and the operations SwarmPolicy drew) and its schedule (the
actions before quiescence). Run i of a seed, with its own generator
``random.Random(f"mmfuzz:{seed}:{i}")`` as in fast mode, is a fresh swarm run (always while
the corpus is empty, then with probability ``FRESH``), else a mutation of a corpus entry
drawn by the rarity of the features it was the first to have (POWER): its schedule is replayed
exactly up to a cut drawn uniformly in it, and the run goes on with the entry's policy and
the run's fresh generator for a whole run length after the cut (EXTEND; the run length is the
bug's, as in swarm). With probability ``ADD_OP`` the
continuation's policy also enables one operation the entry's did not (a start of it can
then be spliced in at the cut or later). A mutated run is a run, and its replayed prefix
steps are counted as steps (stats["mutated"] counts the mutated runs, stats["corpus"] is the
corpus size at the end).

Deterministic: the corpus is a list in the order runs were made, the feature sets hold ints
(membership only), the label table is filled in program order; run i depends on runs 0..i-1,
so a worker of a parallel campaign (start w, stride n) runs its own corpus over its own run
indices. Measured against swarm on every catalogued bug in bench/RESULTS-guided.md.
"""

from __future__ import annotations

import copy
import random
import re

from . import ops as _ops
from .explore import (FIXED_RUN_LENGTH, Found, RunOutcome, SwarmPolicy, explore_runs,
                      only_process_ops, random_world, run_policy)
from .kernel.base import Last
from .run import Divergence, ModelFailure, Run

#: share of fresh swarm runs once the corpus holds an entry. Measured (runs to bug, seeds 1-6):
#: with 0.25 the guided engine needed median 1,025 runs on cow-gup-wrong-direction-pagecount
#: against 866.5 with 0.5; on madv-parallel-flush-miss seeds 1-10, 273.5 against 130
FRESH = 0.5
#: probability that a mutated run's policy enables one more operation than its entry's
ADD_OP = 0.3

#: a mutated run goes on for the whole run length after its replayed prefix (False: the
#: prefix counts towards the run length, as long as a swarm run in all). Measured on
#: madv-parallel-flush-miss seeds 1-10 (FRESH 0.25): median 766 runs without, 273.5 with
#: (a cut late in a 60-action schedule left too few actions for two madvises and an access)
EXTEND = True
#: how a mutated run picks its corpus entry: "rare" or "uniform" (Guided._choose)
POWER = "rare"

_NUM = re.compile(r"0x[0-9a-f]+|\d+")
_FN = re.compile(r"[A-Za-z_]+")

#: what a step's label is: "fn", the kernel function it names first ("zap_pte_range"), or
#: "label", its whole text with the numbers dropped
LABEL = "fn"
#: what another CPU in flight contributes to a pair: "op", the operation it runs, or "label",
#: its last step's label
CONTEXT = "op"


class Coverage:
    """The label table and the features seen so far (ints: label ids and id pairs)."""

    def __init__(self, label: str = LABEL, context: str = CONTEXT):
        self.label_ids: dict[str, int] = {}
        self.hits: dict[int, int] = {}   # feature -> runs that had it
        self.by_fn = label == "fn"
        self.by_op = context == "op"

    def label(self, text: str) -> int:
        lid = self.label_ids.get(text)
        if lid is None:
            if self.by_fn:
                m = _FN.match(text)
                key = m.group(0) if m else text
            else:
                key = _NUM.sub("#", text)
            lid = self.label_ids.get(key)
            if lid is None:
                lid = len(self.label_ids) + 1
                self.label_ids[key] = lid
            self.label_ids[text] = lid
        return lid

    def features(self, run: Run) -> list[int]:
        """The run's features (with repeats): per step of CPU x with label L, L itself and
        (context of y, L) for every other CPU y with an operation in flight, the context
        being y's operation (CONTEXT "op") or the label of y's last step ("label")."""
        end = run.quiesce_from if run.quiesce_from is not None else len(run.trace)
        ncpus = len(run.m.cpus)
        last = [0] * ncpus          # context id of the CPU's task while it is in flight
        label = self.label
        by_op = self.by_op
        out = []
        for s in run.trace[:end]:
            x = s.cpu
            lab = label(s.text)
            out.append(lab)
            for y in range(ncpus):
                if y != x and last[y]:
                    out.append((last[y] << 20) | lab)
            if s.tid:
                kind = s.action[0]
                done = kind == "step" and (type(s.text) is Last or s.text.endswith(" returns"))
                last[x] = 0 if done else (label("op " + s.op) if by_op else lab)
        return out

    def new(self, feats: list[int]) -> list[int]:
        """Count ``feats`` (once each) in the hit counts; the ones no earlier run had."""
        hits = self.hits
        fresh = []
        for f in dict.fromkeys(feats):   # each feature once, in order
            n = hits.get(f)
            if n is None:
                hits[f] = 1
                fresh.append(f)
            else:
                hits[f] = n + 1
        return fresh


class Entry:
    __slots__ = ("world", "policy", "schedule", "features")

    def __init__(self, world, policy, schedule, features):
        self.world = world
        self.policy = policy
        self.schedule = schedule
        self.features = features   # the features this run was the first to have


class Guided:
    """One guided campaign's state: the coverage and the corpus. ``run(rng, i)`` is run i
    (a RunOutcome), as explore_runs calls it."""

    def __init__(self, kernel_cls, actions_max: int = 60, fresh: float = FRESH,
                 add_op: float = ADD_OP, label: str = LABEL, context: str = CONTEXT,
                 power: str = POWER, extend: bool = EXTEND):
        self.power = power
        self.extend = extend
        self.kernel_cls = kernel_cls
        self.actions_max = FIXED_RUN_LENGTH if actions_max is None else actions_max
        self.fresh = fresh
        self.add_op = add_op
        self.cov = Coverage(label, context)
        self.corpus: list[Entry] = []
        self.mutated = 0
        self.last_mutated = False   # was the latest run a mutation (for stats["found_by"])
        self.last_parent: Entry | None = None   # the entry the latest mutation continued
        self.last_prefix = 0                    # how many actions it replayed

    def _choose(self, rng: random.Random) -> "Entry":
        """A corpus entry, uniformly (POWER "uniform") or weighted by the rarity of the
        features it was first to have (POWER "rare": 1 / the hit count of its rarest one, as
        AFLFast and FairFuzz favour inputs that reach rarely hit branches)."""
        corpus = self.corpus
        if self.power == "uniform":
            return corpus[rng.randrange(len(corpus))]
        hits = self.cov.hits
        weights = [1.0 / min([hits[f] for f in e.features]) for e in corpus]
        r = rng.random() * sum(weights)
        for e, w in zip(corpus, weights):
            r -= w
            if r <= 0:
                return e
        return corpus[-1]

    def _mutant(self, rng: random.Random):
        """A corpus entry's world, a continuation policy and the prefix to replay."""
        e = self._choose(rng)
        cut = rng.randrange(len(e.schedule) + 1)
        pol = e.policy
        if rng.random() < self.add_op:
            others = [name for name in _ops.operations() if name not in pol.ops]
            if others:
                pol = copy.copy(pol)
                pol.ops = pol.ops + (rng.choice(others),)
                pol.process_only = only_process_ops(pol.ops)
        self.last_parent = e
        return e.world, pol, e.schedule[:cut]

    def run(self, rng: random.Random, index: int) -> RunOutcome:
        kernel_cls = self.kernel_cls
        self.last_mutated = False
        if self.corpus and rng.random() >= self.fresh:
            world, pol, prefix = self._mutant(rng)
            self.mutated += 1
            self.last_mutated = True
            self.last_prefix = len(prefix)
            run = Run(kernel_cls, world)
            for a in prefix:
                if run.apply(a) is None:   # the model is deterministic: a replay never diverges
                    raise run.fail(Divergence(f"replayed corpus action {a} is not enabled"), a)
        else:
            world = random_world(rng)
            pol = SwarmPolicy(rng, world)
            run = None
        length = self.actions_max
        if run is not None and self.extend:
            length += len(run.actions)
        run, v = run_policy(kernel_cls, world, pol, rng, length, run)
        self.last_actions = run.actions[: run.schedule_len] if v is None else None
        if v is not None:
            return RunOutcome(world, len(run.trace), run.schedule_upto(run.violation_step),
                              v.prop)
        known = getattr(run, "known_open", None)
        if known is None:
            fresh = self.cov.new(self.cov.features(run))
            if fresh:
                self.corpus.append(Entry(world, pol, run.actions[: run.schedule_len], fresh))
        return RunOutcome(world, len(run.trace), known_open=known)


def explore_guided_strided(kernel_cls, seed: int, budget_s: float | None,
                           runs_max: int | None, start: int = 0, stride: int = 1,
                           actions_max: int = 60, progress=None, **kw) -> tuple[Found | None, dict]:
    """explore_strided's contract for the guided engine (the same loop, explore_runs): runs
    start, start + stride, ... of one corpus until a violation, the time budget or the run
    budget; a ModelFailure leaves as it does there. stats gains "mutated" (mutated runs),
    "corpus" (its size at the end) and, with a find, "found_by" ("mutated" or "fresh")."""
    g = Guided(kernel_cls, actions_max, **kw)
    try:
        found, stats = explore_runs(g.run, seed, budget_s, runs_max, start, stride, progress)
    except ModelFailure as mf:
        mf.info.update(mutated=g.mutated, corpus=len(g.corpus))
        raise
    stats["mutated"] = g.mutated
    stats["corpus"] = len(g.corpus)
    if found is not None:
        stats["found_by"] = "mutated" if g.last_mutated else "fresh"
    return found, stats


def explore_guided(kernel_cls, seed: int, budget_s: float | None = None,
                   runs_max: int | None = None, actions_max: int = 60, progress=None, **kw):
    return explore_guided_strided(kernel_cls, seed, budget_s, runs_max, 0, 1, actions_max,
                                  progress, **kw)
