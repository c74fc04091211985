"""The directed search (mmfuzz/directed.py, explore.DirectedPolicy): swarm runs aimed at the
operations that reach a kernel variant's changed functions, with a hold on a task that leaves
a page writable and shared (fork's window). Mainline has no diff, so there it is swarm."""

from __future__ import annotations

import random

import pytest

from mmfuzz import ops as _ops
from mmfuzz.directed import call_graph, changed_functions, focus_ops, reaches
from mmfuzz.explore import DirectedPolicy, SwarmPolicy, explore, random_world, writable_shared_anon
from mmfuzz.kernel import Mainline
from mmfuzz.kernels import BUGS, resolve_kernel
from mmfuzz.run import Run

from .test_bugs import check_hunt
from .test_faults import step_until
from .test_fork import fork_world, pte

GUPFAST_FORK = resolve_kernel("bug:gupfast-fork-no-write-protect-seq")


def test_the_diff_is_what_the_variant_defines_beyond_mainline():
    assert changed_functions(Mainline) == ()
    assert focus_ops(Mainline) == ()
    assert changed_functions(GUPFAST_FORK) == ("gup_fast_checks_write_protect_seq",)
    mprotect = resolve_kernel("bug:mprotect-softdirty-inverted")
    assert changed_functions(mprotect) == ("can_change_pte_writable",)
    assert focus_ops(mprotect) == ("mprotect",)


def test_focus_is_every_operation_whose_code_reaches_the_diff_and_no_other():
    graph = call_graph()
    for slug in ("gupfast-fork-no-write-protect-seq", "fork-pinned-no-early-cow",
                 "madvfree-reclaim-vs-dio", "zap-rmap-before-flush"):
        kcls = resolve_kernel(f"bug:{slug}")
        changed = set(changed_functions(kcls))
        focus = focus_ops(kcls)
        assert focus, slug
        for op in _ops.operations().values():
            assert (op.name in focus) == bool(reaches(graph, op.method) & changed), (slug, op.name)
    # GUP-fast is pin_user_pages' and vmsplice's way in; fork's is folio_needs_cow_for_dma
    assert focus_ops(GUPFAST_FORK) == ("pin_user_pages", "vmsplice")
    assert focus_ops(resolve_kernel("bug:fork-pinned-no-early-cow")) == ("fork",)


def test_without_a_diff_the_directed_search_is_swarm_run_for_run():
    for seed in (1, 2):
        a, sa = explore(Mainline, seed, runs_max=40)
        b, sb = explore(Mainline, seed, runs_max=40, policy="directed")
        assert a is None and b is None
        assert sa["steps"] == sb["steps"] and sa["runs"] == sb["runs"] == 40


def test_every_directed_run_switches_on_an_operation_of_the_focus():
    focus = focus_ops(GUPFAST_FORK)
    on = 0
    for i in range(200):
        rng = random.Random(f"t:{i}")
        world = random_world(rng)
        pol = DirectedPolicy(rng, world, focus)
        assert any(op in pol.ops for op in focus)
        # the swarm draws before the focus are SwarmPolicy's own
        rng2 = random.Random(f"t:{i}")
        random_world(rng2)
        swarm = SwarmPolicy(rng2, world)
        assert set(swarm.ops) <= set(pol.ops) and len(pol.ops) - len(swarm.ops) <= 1
        on += not any(op in swarm.ops for op in focus)
    assert on > 100   # most swarm runs had neither


def test_forks_window_is_the_transient_state_the_hold_keeps_open():
    r = Run(Mainline, fork_world())
    assert writable_shared_anon(r.m) is None
    r.apply(["start", 1, "fork", 3])
    step_until(r, 1, "folio_try_dup_anon_rmap_pte", limit=80)
    assert writable_shared_anon(r.m) == (1, 4)     # parent's anon va 4: writable, not exclusive
    assert r.m.anon_shared_at == r.m.clock
    r.drain()
    assert writable_shared_anon(r.m) is None and not pte(r, 1, 4).write


def test_the_directed_policy_holds_fork_in_its_window_and_aims_at_the_page():
    rng = random.Random("hold")
    world = fork_world()
    pol = DirectedPolicy(rng, world, focus_ops(GUPFAST_FORK))
    r = Run(GUPFAST_FORK, world)
    r.apply(["start", 1, "fork", 3])
    while True:
        pol._last = ["step", 1]
        st = r.apply(["step", 1])
        pol.after(r, st)
        if "folio_try_dup_anon_rmap_pte" in st.text:
            break
    assert list(pol.held) == [1] and pol.hot == (4, None)
    # while held, fork steps at window_hold of its weight: the other CPUs act first
    picks = [pol.pick(rng, r) for _ in range(300)]
    share = sum(p == ["step", 1] for p in picks) / len(picks)
    assert share < 0.1
    r.drain()
    pol.pick(rng, r)
    assert pol.held == {}          # the window closed (fork write-protected the PTE)


#: hunt's directed search, a pin per catalogued bug: python -m bench.runs --engine directed
#: --bugs all --seeds 1-10 --runs-max 15000 --per-seed --mainline (2026-12-04, every seed
#: found, mainline clean on every one; the runs per seed are in bench/RESULTS-runs.md,
#: "Directed at the diff"); zap-rmap-before-flush's seed 30 from seeds 11-40 within 500
DIRECTED_HUNTS = [
    pytest.param("zap-rmap-before-flush", 30, 225, 500, marks=pytest.mark.cost(2)),
    ("madv-parallel-flush-miss", 9, 3, 100),
    ("clear-refs-softdirty-no-flush", 1, 1, 50),
    ("cow-gup-wrong-direction-pagecount", 7, 4, 100),
    pytest.param("dirty-cow", 1, 817, 1000, marks=pytest.mark.cost(8)),
    ("madvfree-reclaim-vs-dio", 5, 28, 200),
    ("reclaim-batched-flush-miss", 4, 55, 200),
    ("mprotect-softdirty-inverted", 9, 18, 100),
    ("fork-pinned-no-early-cow", 5, 28, 200),
    ("cow-gup-wrong-direction", 4, 30, 200),
    pytest.param("gupfast-pv-flush-table-free", 7, 465, 1000, marks=pytest.mark.cost(3)),
    # none of seeds 1-9 within 10,000 swarm runs
    pytest.param("gupfast-fork-no-write-protect-seq", 1, 319, 500, marks=pytest.mark.cost(3)),
]


@pytest.mark.fuzz
@pytest.mark.parametrize("slug,seed,needed,budget", DIRECTED_HUNTS)
def test_directed_search_finds_each_bug_and_mainline_stays_clean(slug, seed, needed, budget):
    check_hunt(slug, seed, needed, budget, policy="directed")


def test_every_catalogued_bug_has_a_directed_pin():
    pinned = {p.values[0] if hasattr(p, "values") else p[0] for p in DIRECTED_HUNTS}
    assert pinned == {b.slug for b in BUGS}
