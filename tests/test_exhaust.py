"""Exhaustive mode: every corpus scenario's bug shows up on its own kernel, its fix closes every
interleaving of the scenario, the breadth-first search reports the shortest violation, and
the state key is sound (equal keys, equal futures)."""

import os
import random

import pytest

from mmfuzz.corpus import load
from mmfuzz.exhaust import (SearchRun, exhaust, exhaust_cx, scenario_from, snapshot_key,
                            snapshot_key_slow)
from mmfuzz.kernel import Mainline
from mmfuzz.kernels import resolve_kernel
from mmfuzz.pytest_plugin import corpus_files
from mmfuzz.run import execute

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _slug(path) -> str:
    return os.path.basename(os.path.dirname(path))


#: corpus scenarios too large for this module's searches. They are still replayed on their
#: kernel and on mainline, as every corpus file is (the pytest plugin). Each is checked to
#: still be too large (test_too_large_scenarios_stay_too_large).
#: ksm-madvfree-clearrefs, hand-written (Nadav Amit's four CPUs): the scenario holds the
#: setup's faults, an earlier clear_refs and ksmd's whole scan, 95 actions over 4 CPUs. The
#: unbounded search stopped at 200,000 states after 160 s on its kernel and after 149 s on
#: mainline (2026-12-04).
TOO_LARGE = {"ksm-madvfree-clearrefs/handwritten-no-lost-write-after-madv-free.json": 200_000}


def _too_large(path) -> bool:
    return f"{_slug(path)}/{os.path.basename(path)}" in TOO_LARGE


# violation files only: a pass file (corpus/passes/) has no bug for exhaust to find
FILES = [p for p in corpus_files(os.path.join(ROOT, "corpus", "violations"))
         if not _too_large(p)]
BUGGY = [p for p in FILES if load(p).kernel.startswith("bug:")]


def _programs(path) -> int:
    return sum(1 for prog in scenario_from(load(path))[1].values() if prog)


#: the lengths of the shortest violations. The first four from the stateless DFS at
#: preemption bound 2 with stop_at_first=False (bench/RESULTS-minimal.md, 2026-11-22): the
#: BFS must match them (clear-refs: 13 since clear_refs write-locks each VMA and checks
#: pte_is_pinned as mainline does, 11 before). The others from the BFS itself, unbounded and
#: at bound 2 alike (2026-12-02), on the counterexamples `mmfuzz hunt SLUG --seed 1 --save`
#: wrote (fork-pinned-no-early-cow: seed 8, whose scenario the search exhausts in 677 states;
#: seed 1's three CPUs with 51 actions exceed 200,000); the first four of those find their
#: violations in quiescence (where the BFS reports
#: the schedule that reaches them with every task returned). The two fork scenarios are one
#: action longer than they were (57 and 49) since fork's copy of an anon PTE takes two steps
#: (57efa1fe5957's window between the PG_anon_exclusive clear and the write-protect). The CVE's
#: is two shorter (58 before) since cow-isolation judges a held reference as read: no pipe read.
SHORTEST = {"zap-rmap-before-flush": 16, "madv-parallel-flush-miss": 14,
            "clear-refs-softdirty-no-flush": 13, "reclaim-batched-flush-miss": 34,
            "cow-gup-wrong-direction": 56, "cow-gup-wrong-direction-pagecount": 36,
            "dirty-cow": 39, "madvfree-reclaim-vs-dio": 61, "mprotect-softdirty-inverted": 40,
            "fork-pinned-no-early-cow": 50, "gupfast-pv-flush-table-free": 21,
            "gupfast-fork-no-write-protect-seq": 47,
            # the probe's find through no-stale-translation-after-return (2026-12-04)
            "ksm-madvfree-clearrefs": 40}

#: scenarios whose one search takes 10 s or more on one core (measured 2026-12-02, own kernel
#: / mainline: cow-gup-wrong-direction 13,306 / 18,610 states in 6 / 11 s, its fork, pipe
#: and pin put 3 CPUs in every interleaving; madvfree-reclaim-vs-dio 67,538 / 69,393 in
#: 35 / 43 s, 4 CPUs; dirty-cow 25,242 / 27,333 in 12 / 12 s). They get every check that
#: decides a verdict (the bug at each bound, the shortest length, a strict replay, mainline
#: clean over every interleaving), but not the comparisons that re-run the search 4-8
#: times against a reference (the plain search beside the IPI reduction, the finer keys of
#: the oracle tests): those are checked on the other scenarios, and would add ~10 minutes
#: to CI. dirty-cow keeps one of them, the every-local key's
#: (test_dead_locals_change_no_verdict_and_no_length): its search found that key's defect.
HEAVY = {"cow-gup-wrong-direction": 25, "madvfree-reclaim-vs-dio": 60, "dirty-cow": 15,
         # hand-written CVE-2018-18281 (2026-12-04): 13,188 / 22,670 states in 5 / 10 s
         "mremap-flush-too-late": 10}


def _params(paths, heavy: bool = True, keep: tuple = ()):
    """pytest params for ``paths`` (ids relative to the repository), the heavy ones marked
    with their cost, or left out when ``heavy`` is False (unless ``keep`` names them: then
    the test runs four searches, and costs four times as much)."""
    out = []
    for p in paths:
        if _slug(p) in HEAVY:
            if heavy or _slug(p) in keep:
                cost = HEAVY[_slug(p)] * (1 if heavy else 4)
                out.append(pytest.param(p, id=os.path.relpath(p, ROOT),
                                        marks=pytest.mark.cost(cost)))
        else:
            out.append(pytest.param(p, id=os.path.relpath(p, ROOT)))
    return out


#: scenarios where more than one CPU runs a program: only there is there an interleaving to
#: choose (clear-refs-softdirty-no-flush needs one CPU: its own TLB is never flushed either)
RACES = [p for p in FILES if _programs(p) >= 2]


def _recorded_length(cx) -> int:
    """How many actions the recorded counterexample takes to its violation: to its step, or
    (a property judged at the end of quiescence) every action of the replay."""
    run, out = execute(resolve_kernel(cx.kernel), cx.world, cx.schedule)
    assert out.violation is not None and out.violation.prop == cx.prop
    return out.step + 1 if out.step is not None else len(run.actions)


#: the preemption bound from which a scenario's race is reachable, where it is not 0. Most
#: need none: the flusher blocks on its IPIs (a free switch), which opens the window; the
#: fork scenarios' tasks block on locks and in waits of their own (a pipe read, a pin's
#: I/O) the same way. Dirty COW's window is inside wp_page_copy, between its
#: pte_offset_map_lock and its pte_same, where the GUP task waits for nothing: another CPU's
#: load must set the PTE's young bit there (clear_refs cleared it), so that the copy backs
#: off and the retried follow_page_pte, without FOLL_WRITE, grabs the page-cache page.
#: fork-pinned-no-early-cow's fork must come between one CPU's two pin_user_pages calls (the
#: R/W pin before the fork, the R/O pin whose unshare fault copies the page after it): a
#: switch away from a CPU that could go on with its next call.
#: gupfast-pv-flush-table-free's GUP-fast must be switched away from between its PMD and PTE
#: reads, a point where it could go on: with hypercall flushes munmap never blocks on it.
#: gupfast-fork-no-write-protect-seq's GUP-fast must run between fork's PG_anon_exclusive
#: clear and its write-protect of the parent's PTE, where fork could go on. In
#: mremap-flush-too-late, the hole punch must run whole between move_ptes's unlock and
#: mremap's flush, and mremap could go on there too. ksm-madvfree-clearrefs's
#: no-stale-translation-after-return file needs two preemptions. Bound 1 is clean in 8,347
#: states, and bound 2 finds it in 22,067 (2026-12-04).
FIRST_BOUND = {"dirty-cow": 1, "fork-pinned-no-early-cow": 1,
               "gupfast-pv-flush-table-free": 1, "gupfast-fork-no-write-protect-seq": 1,
               "mremap-flush-too-late": 1, "ksm-madvfree-clearrefs": 2}


def _cx(slug):
    [path] = [p for p in FILES if f"{os.sep}{slug}{os.sep}" in p and "handwritten" not in p]
    return load(path)


def test_corpus_is_not_empty():
    assert FILES


@pytest.mark.cost(8)
@pytest.mark.parametrize("name", sorted(TOO_LARGE))
def test_too_large_scenarios_stay_too_large(name):
    """A scenario left out of the searches here must still be beyond them: a search of its
    mainline interleavings does not finish within a tenth of the states the recorded search
    stopped at. If it ever does, the scenario belongs in the searches again."""
    path = os.path.join(ROOT, "corpus", "violations", name)
    res = exhaust_cx(load(path), "mainline", states_max=TOO_LARGE[name] // 10)
    assert res.truncated and res.violation is None


def test_scenario_keeps_program_actions_only():
    cx = load(FILES[0])
    world, programs = scenario_from(cx)
    assert world == cx.world
    assert sorted(programs) == list(range(world["ncpus"]))
    flat = [a for p in programs.values() for a in p]
    assert sorted(map(str, flat)) == sorted(str(a) for a in cx.schedule
                                            if a[0] in ("start", "access"))
    for cpu, prog in programs.items():
        assert all(a[1] == cpu for a in prog)
        order = [a for a in cx.schedule if a[0] in ("start", "access") and a[1] == cpu]
        assert prog == order


@pytest.mark.parametrize("path", _params(FILES))
def test_bug_found_shortest_and_replayable(path):
    """The unbounded search on the entry's own kernel: the bug, reported at the shortest
    length (SHORTEST, and no longer than the recorded counterexample's run to its
    violation), with a schedule that replays strictly to the same violation."""
    cx = load(path)
    res = exhaust_cx(cx)
    assert res.violation is not None and res.violation.prop == cx.prop
    assert not res.truncated
    assert res.schedule and res.shortest == res.schedule
    if "handwritten" not in path:   # (a hand-written file's schedule uses "until" macros)
        assert len(res.schedule) == SHORTEST[cx.kernel[4:]]
        assert len(res.schedule) <= _recorded_length(cx)
    _, out = execute(resolve_kernel(cx.kernel), cx.world, res.schedule, strict=True)
    assert out.violation is not None and out.violation.prop == cx.prop
    assert out.phase == res.phase
    assert not any(a[0] == "evict" for a in res.schedule)


@pytest.mark.parametrize("path", _params(FILES))
@pytest.mark.parametrize("bound", [0, 1, 2])
def test_bug_found_from_its_bound(path, bound):
    """Within each preemption bound from FIRST_BOUND on, the bug; below it, every
    interleaving clean."""
    cx = load(path)
    res = exhaust_cx(cx, preemptions_max=bound)
    assert not res.truncated
    if bound < FIRST_BOUND.get(_slug(path), 0):
        assert res.violation is None and res.interleavings >= 1
        return
    assert res.violation is not None and res.violation.prop == cx.prop
    assert res.schedule and res.shortest == res.schedule


@pytest.mark.cost(8)
@pytest.mark.parametrize("path", _params(BUGGY))
def test_mainline_closes_every_interleaving(path):
    """No preemption bound: every interleaving of every corpus scenario, with and without the
    IPI reduction (a heavy scenario with it only: test_ipi_reduction_agrees_with_plain_search
    checks it loses nothing on the others)."""
    cx = load(path)
    for reduce_ipis in (True,) if _slug(path) in HEAVY else (True, False):
        res = exhaust_cx(cx, "mainline", reduce_ipis=reduce_ipis)
        assert res.violation is None, (res.violation, res.schedule)
        assert not res.truncated
        assert res.interleavings >= 1 and res.states > res.interleavings


@pytest.mark.parametrize("path", _params(BUGGY, heavy=False))
def test_plain_search_reports_the_same_shortest_violation(path):
    """Without the IPI reduction the BFS reports the same shortest length."""
    cx = load(path)
    res = exhaust_cx(cx, reduce_ipis=False)
    assert res.violation is not None and res.violation.prop == cx.prop
    if "handwritten" not in path:
        assert len(res.schedule) == SHORTEST[cx.kernel[4:]]


def test_bfs_is_no_longer_than_the_old_dfs():
    """On the small madv scenario the old stateless DFS (every violating leaf within bound 2)
    finds nothing shorter than the BFS's first find, and its own first find is no shorter."""
    cx = _cx("madv-parallel-flush-miss")
    old = exhaust_cx(cx, dfs=True, preemptions_max=2, stop_at_first=False)
    new = exhaust_cx(cx)
    assert not old.truncated
    assert len(new.schedule) == len(old.shortest) <= len(old.schedule)
    first = exhaust_cx(cx, dfs=True, preemptions_max=2)
    assert len(new.schedule) <= len(first.schedule)


@pytest.mark.cost(3)
def test_bfs_beats_the_old_dfs_on_zap():
    """The zap scenario at bound 1: the DFS's first find is 21 actions and the shortest it
    sees 18 (with stop_at_first=False); the BFS, unbounded, reports the 16-action minimum."""
    cx = _cx("zap-rmap-before-flush")
    old = exhaust_cx(cx, dfs=True, preemptions_max=1, stop_at_first=False)
    assert (len(old.schedule), len(old.shortest)) == (22, 18)  # 21 before blocked lock attempts were recorded steps
    new = exhaust_cx(cx)
    assert len(new.schedule) == 16
    _, out = execute(resolve_kernel(cx.kernel), cx.world, new.schedule, strict=True)
    assert out.violation.prop == cx.prop


def test_preemption_bound_grows_the_search():
    cx = _cx("madv-parallel-flush-miss")
    world, programs = scenario_from(cx)
    main = resolve_kernel("mainline")
    counts = [exhaust(main, world, programs, preemptions_max=b) for b in (0, 1, 2)]
    full = exhaust(main, world, programs)
    for r in counts + [full]:
        assert r.violation is None and not r.truncated
    assert counts[0].states < counts[1].states < counts[2].states
    assert counts[0].pruned > 0 and full.pruned == 0


def test_states_max_truncates():
    cx = _cx("madv-parallel-flush-miss")
    res = exhaust_cx(cx, "mainline", states_max=100)
    assert res.truncated and res.states == 100 and res.violation is None


def test_deterministic():
    cx = _cx("madv-parallel-flush-miss")
    a = exhaust_cx(cx, stop_at_first=False)
    b = exhaust_cx(cx, stop_at_first=False)
    assert (a.schedule, a.interleavings, a.states, a.violations, a.transitions) == \
        (b.schedule, b.interleavings, b.states, b.violations, b.transitions)
    assert a.violations > 1


@pytest.mark.parametrize("path", _params(RACES, heavy=False))
def test_ipi_reduction_agrees_with_plain_search(path):
    # the forced delivery of unobservable IPIs loses no violation and no length
    cx = load(path)
    plain = exhaust_cx(cx, reduce_ipis=False, stop_at_first=False)
    reduced = exhaust_cx(cx, stop_at_first=False)
    assert set(plain.props) == set(reduced.props) == {cx.prop}
    assert len(plain.schedule) == len(reduced.schedule)
    if cx.world.get("tlb_flush") == "hypercall":   # no IPIs at all: nothing to reduce
        assert reduced.forced == plain.forced == 0 and reduced.states == plain.states
        return
    assert reduced.forced > 0 and plain.forced == 0
    assert reduced.states < plain.states


def test_old_dfs_still_counts_ipi_reduction():
    cx = _cx("madv-parallel-flush-miss")
    plain = exhaust_cx(cx, dfs=True, preemptions_max=1, stop_at_first=False, reduce_ipis=False)
    reduced = exhaust_cx(cx, dfs=True, preemptions_max=1, stop_at_first=False)
    assert set(plain.props) == set(reduced.props) == {cx.prop}
    assert 0 < reduced.violations < plain.violations


# ------------------------------------------------------------------ the state key --------
def _random_walk(kcls, world, programs, rng, steps, after_each=None):
    """A random path of the search's own moves from the initial state (no quiescence);
    ``after_each(run)`` is called after every action."""
    run = SearchRun(kcls, world)
    pcs = {c: 0 for c in programs}
    path = []
    for _ in range(steps):
        cands = [["step", c] for c in run.runnable_cpus()]
        cands += [programs[c][pcs[c]] for c in programs
                  if run.m.cpus[c].task is None and pcs[c] < len(programs[c])]
        cands += [["ipi", c] for c in run.ipi_cpus()]
        if not cands:
            break
        a = rng.choice(cands)
        run.apply(a)
        path.append(a)
        if a[0] in ("start", "access"):
            pcs[a[1]] += 1
        if after_each is not None:
            after_each(run)
        if run.violation is not None:
            break
    return run, path


@pytest.mark.parametrize("slug", ["zap-rmap-before-flush", "madv-parallel-flush-miss"])
def test_equal_keys_have_equal_futures(slug):
    """Soundness, checked by experiment: random paths whose end states get equal keys (reached
    by different paths) behave the same under the same continuation: equal keys after every
    further action, the same violation (or none) at the end."""
    cx = _cx(slug)
    kcls = resolve_kernel(cx.kernel)
    world, programs = scenario_from(cx)
    rng = random.Random(7)
    by_key = {}
    pairs = 0
    for _ in range(1500):
        run, path = _random_walk(kcls, world, programs, rng, rng.randrange(4, 24))
        k = snapshot_key(run)
        other = by_key.setdefault(k, path)
        if other is path or other == path:
            continue
        pairs += 1
        cont = rng.choice((0, 1))
        a, b = SearchRun(kcls, world), SearchRun(kcls, world)
        for x in other:
            a.apply(x)
        for x in path:
            b.apply(x)
        crng = random.Random(pairs)
        for _ in range(30):
            acts = [["step", c] for c in a.runnable_cpus()] + [["ipi", c] for c in a.ipi_cpus()]
            if not acts:
                break
            act = crng.choice(acts)
            sa, sb = a.apply(act), b.apply(act)
            assert (sa is None) == (sb is None)
            assert snapshot_key(a) == snapshot_key(b), (other, path, act)
            assert (a.violation and a.violation.prop) == (b.violation and b.violation.prop)
        if cont and not a.busy():
            va, vb = a.quiesce(), b.quiesce()
            assert (va and va.prop) == (vb and vb.prop)
    assert pairs >= 20, pairs   # the check has teeth only if paths do meet


def test_fast_and_slow_keys_agree_and_replay_matches_apply():
    cx = _cx("zap-rmap-before-flush")
    kcls = resolve_kernel("mainline")
    world, programs = scenario_from(cx)
    rng = random.Random(3)
    slow_of_fast = {}
    for _ in range(300):
        run, path = _random_walk(kcls, world, programs, rng, rng.randrange(2, 30))
        again = SearchRun(kcls, world)
        again.replay(path)
        assert snapshot_key(again) == snapshot_key(run)
        assert snapshot_key_slow(again) == snapshot_key_slow(run)
        # pickle's encoder may tell apart more states (it memoises equal strings that are
        # distinct objects), never fewer: each of its keys maps to one key of the other
        slow_of_fast.setdefault(snapshot_key(run), set()).add(snapshot_key_slow(run))
    assert all(len(v) == 1 for v in slow_of_fast.values())
    assert len(slow_of_fast) > 50


def test_key_sees_every_field_and_probe_effects():
    """A field the snapshot was not told about is in the key (a kernel variant's own state
    here); a step that only discovers a lock wait still changes the key when it read shared
    state first (the reads before the wait live on in the generator)."""
    cx = _cx("zap-rmap-before-flush")
    world = cx.world

    class Counting(Mainline):
        pass

    a, b = SearchRun(Counting, world), SearchRun(Counting, world)
    assert snapshot_key(a) == snapshot_key(b)
    b.kernel.noted = 1
    assert snapshot_key(a) != snapshot_key(b)
    a.m.cpus[0].irqs_off = True
    b.kernel.noted = 1
    assert snapshot_key(a) != snapshot_key(b)
    # the clock's absolute value is not in the key, its order is
    c, d = SearchRun(Mainline, world), SearchRun(Mainline, world)
    d.m.clock += 5
    assert snapshot_key(c) == snapshot_key(d)


def test_slow_key_sees_what_a_cell_holds():
    """The pure-Python encoder (the key's slow path) keys a closure cell's contents: a cell in
    a generator's frame (a local a lambda captures, as handle_pte_fault's ``orig``) as well
    as a closure's. It once wrote a cell it met outside a closure as a back-reference to
    itself, so two states that differed only in such a cell got one key: the every-local
    key (which took the slow path on frames holding lambdas) handed dirty-cow's search a
    spare run whose fault had read a different PTE, and expand met a step it had offered
    but that was not enabled (test_dead_locals_change_no_verdict_and_no_length runs that
    search on corpus/violations/dirty-cow/)."""
    import types
    from mmfuzz.exhaust import _Encoder

    def enc(x):
        return _Encoder({}).enc(x)

    one, two = types.CellType(1), types.CellType(2)
    assert enc([one]) != enc([two])
    assert enc([one, one]) != enc([one, types.CellType(1)])   # aliasing stays in the key

    def fault(v):
        orig = v
        same = lambda: orig   # noqa: E731  (a cell, as in handle_pte_fault)
        yield same

    g1, g2, g3 = fault(None), fault(3), fault(None)
    for g in (g1, g2, g3):
        next(g)
    assert enc(g1) != enc(g2)
    assert enc(g1) == enc(g3)


def test_a_model_failure_is_a_model_failure():
    from mmfuzz.run import ModelFailure

    class NeverUnlocks(Mainline):
        def spin_unlock(self, t, lock, label):
            yield label

    cx = _cx("madv-parallel-flush-miss")
    world, programs = scenario_from(cx)
    # the prefault already deadlocks (no lock is ever released): a ModelFailure, never a find
    with pytest.raises(ModelFailure, match="deadlock"):
        exhaust(NeverUnlocks, world, programs)


# ------------------------------------------------------------ dead locals out of the key --
ALL_FILES = [p for p in corpus_files(os.path.join(ROOT, "corpus")) if not _too_large(p)]


@pytest.fixture
def every_local(monkeypatch):
    """Key every bound local of every frame, dead or not (the key before liveness)."""
    import mmfuzz.exhaust as ex
    monkeypatch.setattr(ex, "LIVE_LOCALS_ONLY", False)
    monkeypatch.setattr(ex, "_LAYOUT", {})
    yield
    ex._LAYOUT.clear()


def _verdicts(cx, kernels):
    out = {}
    for k in kernels:
        r = exhaust_cx(cx, k)
        out[k] = (r.violation and r.violation.prop, len(r.schedule or []), r.truncated,
                  r.states, r.transitions)
    return out


@pytest.mark.cost(12)
@pytest.mark.parametrize("path", _params(ALL_FILES, heavy=False, keep=("dirty-cow",)))
def test_dead_locals_change_no_verdict_and_no_length(path, request):
    """Leaving out of the key the locals a generator's code can no longer read merges states
    and nothing else: on every corpus entry (its own kernel and mainline) the search without
    them reports the same verdict and the same shortest length as the search keying every
    local, over no more states."""
    _merges_only(path, request, "every_local", ("zap-rmap-before-flush",))


def _merges_only(path, request, finer: str, merging: tuple) -> None:
    """The search with today's key against the one the fixture ``finer`` makes: on the
    entry's own kernel and on mainline the same verdict and the same shortest length, over
    no more states; on mainline over fewer where the path names one of ``merging``."""
    cx = load(path)
    kernels = [cx.kernel] + (["mainline"] if cx.kernel != "mainline" else [])
    coarse = _verdicts(cx, kernels)
    request.getfixturevalue(finer)
    full = _verdicts(cx, kernels)
    for k in kernels:
        assert coarse[k][:3] == full[k][:3], (k, coarse[k], full[k])
        assert coarse[k][3] <= full[k][3]
    if any(slug in path for slug in merging):
        assert coarse["mainline"][3] < full["mainline"][3]


@pytest.fixture
def full_notes(monkeypatch):
    """Key the checker's notes in full: the cost record, revoked_at and every task's
    observed clocks (the key before they were reduced to what the properties compare)."""
    import mmfuzz.exhaust as ex
    monkeypatch.setattr(ex, "REDUCED_NOTES", False)
    ex._FIELDS.clear()
    ex._REDUCERS.clear()
    yield
    ex._FIELDS.clear()
    ex._REDUCERS.clear()


@pytest.mark.cost(12)
@pytest.mark.parametrize("path", _params(ALL_FILES, heavy=False))
def test_reduced_notes_change_no_verdict_and_no_length(path, request):
    """Holding revoked_at and the tasks' observed clocks only as the comparisons the
    properties make of them (and leaving the write-only cost record out) merges states and
    nothing else: on every corpus entry (its own kernel and mainline) the same verdict and
    the same shortest length as with the notes keyed in full, over no more states; on the
    zap and madv scenarios over fewer (zap mainline 7,635 -> 5,956, madv 2,115 -> 1,131)."""
    _merges_only(path, request, "full_notes",
                 ("zap-rmap-before-flush", "madv-parallel-flush-miss"))


def test_frame_plans_pick_what_f_locals_says():
    """Where the bytecode fixes which locals are bound, the key picks the live ones by
    position; f_locals must agree on every frame of random walks over every corpus
    scenario (each generator of each yield-from chain)."""
    import gc
    import types
    import mmfuzz.exhaust as ex

    rng = random.Random(11)
    static = 0
    for path in ALL_FILES:
        cx = load(path)
        world, programs = scenario_from(cx)
        for kname in sorted({cx.kernel, "mainline"}):
            kcls = resolve_kernel(kname)
            for _ in range(40):
                run, _ = _random_walk(kcls, world, programs, rng, rng.randrange(1, 40))
                for c in run.m.cpus:
                    g = c.task.gen if c.task else None
                    while g is not None and g.gi_frame is not None:
                        lasti, local, stack = ex._frame_slots(g)
                        lay = ex._layout(g.gi_code)
                        bound = g.gi_frame.f_locals
                        refs = gc.get_referents(g)
                        k = refs.index(g.gi_code, 1) + 1
                        live = lay.flow.get(lasti)[0]
                        want = []
                        for i, name, cell in lay.slots:
                            if cell or name in bound:
                                if cell or i in live:
                                    want.append(refs[k])
                                k += 1
                        got = list(local[1:]) if local[:1] == ("dyn",) else list(local)
                        if local[:1] == ("dyn",):
                            got = [v for _, v in got]
                        else:
                            static += 1
                        assert len(got) == len(want) and all(a is b for a, b in zip(got, want))
                        assert list(stack) == refs[k:]
                        subs = [x for x in stack if type(x) is types.GeneratorType]
                        g = subs[-1] if subs else None
    assert static > 100


# ------------------------------------------------------------ the oracle's notes ---------
def _lazyfree_scenario():
    """MADV_FREE on CPU1, a store to the page on CPU0, two reclaim passes on CPU2: a store
    made after MADV_FREE returned must survive reclaim (no-lost-write-after-madv-free, judged
    by the oracle's note of that store)."""
    from tests.test_reclaim import ANON, anon_world
    programs = {0: [["access", 0, ANON, 1]], 1: [["start", 1, "madvise_free", ANON, 1]],
                2: [["start", 2, "reclaim", 1, 0, 1], ["start", 2, "reclaim", 1, 0, 1]]}
    return anon_world(), programs


def test_replay_takes_the_oracles_notes():
    """A state the search re-creates by SearchRun.replay holds the same oracle notes (who
    wrote which version, what each anon page must read) as the run that reached it through
    Run.apply, and the same key: the oracle-based properties judge a replayed state as they
    judge a live one (before, replay took no notes)."""
    world, programs = _lazyfree_scenario()
    rng = random.Random(5)
    noted = 0
    for _ in range(60):
        run, path = _random_walk(Mainline, world, programs, rng, rng.randrange(4, 30))
        again = SearchRun(Mainline, world)
        again.replay(path)
        o, p = run.m.oracle, again.m.oracle
        assert (o.writer, o.anon_expected, o.discards) == (p.writer, p.anon_expected,
                                                           p.discards)
        assert snapshot_key(again) == snapshot_key(run)
        noted += bool(o.writer)
    assert noted >= 10   # the walks do store to the anon page


@pytest.mark.cost(4)
def test_exhaust_reports_the_shortest_oracle_violation():
    """The lazyfree discard that ignores PG_dirty loses the store: the search reports the
    shortest violation, 36 actions (before replay took the oracle's notes, the shortest
    violating state was re-created without the store's note, judged clean, and the search
    reported a 37-action one); the schedule reproduces on a plain Run, and mainline is clean
    over every interleaving of the same scenario."""
    from tests.variants import LazyfreeDiscardIgnoresDirty
    world, programs = _lazyfree_scenario()
    bad = exhaust(LazyfreeDiscardIgnoresDirty, world, programs)
    assert bad.violation is not None and bad.violation.prop == "no-lost-write-after-madv-free"
    assert len(bad.schedule) == 36 and not bad.truncated
    _, out = execute(LazyfreeDiscardIgnoresDirty, world, bad.schedule, strict=True)
    assert out.violation is not None and out.violation.prop == bad.violation.prop
    good = exhaust(Mainline, world, programs)
    assert good.violation is None and not good.truncated and good.states > 1000


def test_spare_runs_replace_replays():
    """Expanding a state with the live runs of its duplicates (equal keys, equal futures)
    changes no state, transition or verdict, and replaces replays from the root (without
    spares every choice but a state's first one is a replay: replays + spared)."""
    cx = _cx("madv-parallel-flush-miss")
    res = exhaust_cx(cx, "mainline")
    # 2115 states, 4438 transitions before the key held the checker's clocks reduced to the
    # comparisons made of them (test_reduced_notes_change_no_verdict_and_no_length)
    assert (res.states, res.transitions, res.violation) == (1131, 2522, None)
    assert res.replays > 0 and res.spared >= (res.replays + res.spared) // 3


def test_generator_cache_agrees_with_the_slow_key():
    """The reductions of generators kept per run (reused while f_lasti and every frame
    referent are the same objects) give the key a fresh computation gives: keyed after
    every action of random walks, each fast key maps to one slow key, and a run's key equals
    the key of a fresh replay of its path (which starts with no cache)."""
    cx = _cx("zap-rmap-before-flush")
    kcls = resolve_kernel("mainline")
    world, programs = scenario_from(cx)
    rng = random.Random(9)
    slow_of_fast = {}
    def keys(run):
        slow_of_fast.setdefault(snapshot_key(run), set()).add(snapshot_key_slow(run))

    for _ in range(40):
        run, path = _random_walk(kcls, world, programs, rng, rng.randrange(5, 30), keys)
        again = SearchRun(kcls, world)
        again.replay(path)
        assert snapshot_key(again) == snapshot_key(run)
    assert all(len(v) == 1 for v in slow_of_fast.values())
    assert len(slow_of_fast) > 100
