"""The hybrid engine (mmfuzz/hybrid.py): deterministic per seed, finds a bug, keeps mainline
clean on the same runs; the synthetic rare-interleaving variant is found by exhaust on its
scenario, by the hybrid's point search of an overlapping pair, and by the hybrid under seed 1
in 8835 runs, where swarm makes 80,000 without finding it. Counts are pinned, never times."""

import random

import pytest

from mmfuzz.exhaust import exhaust
from mmfuzz.hybrid import explore_hybrid, random_scenario
from mmfuzz.kernel import Mainline
from mmfuzz.kernels import bug_by_slug
from mmfuzz.run import default_world, execute
from tests.variants import VmaLockRecheckMapped, ZeroPageNoRecheckWhileZapping


def test_scenarios_are_deterministic_and_well_formed():
    for i in range(50):
        a = random_scenario(random.Random(f"mmfuzz:1:{i}"))
        b = random_scenario(random.Random(f"mmfuzz:1:{i}"))
        assert a == b
        world, programs = a
        assert sum(1 for p in programs.values() if p) >= 2
        for cpu, prog in programs.items():
            assert all(x[1] == cpu and x[0] in ("start", "access") for x in prog)


def test_hybrid_finds_a_bug_and_mainline_stays_clean():
    """Every hybrid run is first the swarm run of its index, so the hybrid needs no more runs
    than swarm for what swarm finds (clear-refs-softdirty-no-flush, seeds 1-5: 2, 7, 2, 2,
    23 runs for both; 2, 7, 12, 1, 42 before the swarm's hot page, 2026-12-03; 2, 7, 2, 12, 25
    before mremap and fallocate_punch_hole were registered and every world got a free PTE
    table above its mappings); a run searches a scenario only
    when two of its operations may touch one page (OVERLAP_ONLY), so some runs do and some do
    not."""
    from mmfuzz.explore import explore
    bug = bug_by_slug("clear-refs-softdirty-no-flush")
    for seed, runs in ((1, 2), (2, 7), (3, 2), (4, 2), (5, 23)):
        found, stats = explore_hybrid(bug.kernel, seed, runs_max=100)
        swarm, _ = explore(bug.kernel, seed, runs_max=100, actions_max=60)   # hybrid's runs
        assert found is not None and found.prop == bug.prop and found.runs <= swarm.runs == runs
        assert stats["scenarios"] <= found.runs
        _, out = execute(bug.kernel, found.world, found.actions)
        assert out.violation is not None and out.violation.prop == bug.prop
        clean, st = explore_hybrid(Mainline, seed, runs_max=found.runs)
        assert clean is None and st["runs"] == found.runs


def test_synthetic_rare_interleaving_found_by_exhaust_on_its_scenario():
    """The 3-way window of ZeroPageNoRecheckWhileZapping: a zap on CPU0, a read fault on the
    anonymous page on CPU1, a write fault on it on CPU2. Exhaust at preemption bound 1 finds
    the leak (32 actions, the shortest within the bound); mainline is clean there."""
    world = default_world()
    programs = {0: [["start", 0, "madvise_dontneed", 0, 1]], 1: [["access", 1, 4, 0]],
                2: [["access", 2, 4, 1]]}
    bad = exhaust(ZeroPageNoRecheckWhileZapping, world, programs, preemptions_max=1)
    assert bad.violation is not None and bad.violation.prop == "accounting"
    assert len(bad.schedule) == 37 and not bad.truncated   # 32 before the fault path's new steps
    good = exhaust(Mainline, world, programs, preemptions_max=1)
    assert good.violation is None and not good.truncated


def test_ops_machine_has_a_rule_per_registered_operation_and_finds_a_bug():
    from mmfuzz import ops
    from strategies.machine import OpsMachine
    for name in ops.names():
        assert callable(getattr(OpsMachine, name))
    # seed 1 today: machine run 57 (25 before mremap and fallocate_punch_hole became rules and
    # every world got a free PTE table; 21 before user accesses drew the store of the same
    # value, strategies.machine.ACCESS_KINDS, which moved Hypothesis's choices; 22 before the
    # PCT runs were added, 14 before the merge)
    _ops_machine_finds("clear-refs-softdirty-no-flush", 1, 100, 57)


def _ops_machine_finds(slug, seed, examples, first_run_max):
    """OpsMachine's campaign of ``examples`` under ``seed`` finds bug ``slug`` by machine run
    ``first_run_max``, its schedule replays to the violation, and mainline is clean on a
    60-example campaign under the same seed."""
    from strategies.machine import run_ops_hypothesis
    bug = bug_by_slug(slug)
    failure, cls = run_ops_hypothesis(bug.kernel, seed, examples, polish=False,
                                      hypothesis_shrink=False)
    assert failure is not None and failure["violation"].prop == bug.prop
    assert cls.first_failure_run <= first_run_max
    _, out = execute(bug.kernel, failure["world"], failure["schedule"])
    assert out.violation is not None and out.violation.prop == bug.prop
    clean, mcls = run_ops_hypothesis(Mainline, seed, 60, polish=False, hypothesis_shrink=False)
    assert clean is None and mcls.runs_total >= 60


def test_a_scenario_run_that_makes_the_model_fail_is_a_model_failure_that_replays():
    """Run 220 of seed 1 (55 before fork was switched on only where it can start, at the
    default share, with a free CPU in half the worlds, 2026-12-03; 41 before the swarm's hot
    page; 148 before mremap and
    fallocate_punch_hole were registered and every world got a free PTE table): its swarm run is clean, the search of its scenario raises the
    variant's assertion as a ModelFailure (never a find), with a schedule that replays to it
    strictly."""
    from mmfuzz.explore import random_run
    from mmfuzz.hybrid import hybrid_run
    from mmfuzz.run import ModelFailure
    from tests.variants import DoubleRmapRemove
    random_run(DoubleRmapRemove, random.Random("mmfuzz:1:220"))   # the swarm run: no failure
    with pytest.raises(ModelFailure) as mf:
        hybrid_run(DoubleRmapRemove, random.Random("mmfuzz:1:220"), 220)
    with pytest.raises(ModelFailure) as again:
        execute(DoubleRmapRemove, mf.value.world, mf.value.schedule, strict=True)
    assert again.value.type == mf.value.type == "AssertionError"


def test_synthetic_deep_window_found_by_exhaust_at_bound_1_and_mainline_clean():
    """VmaLockRecheckMapped: mprotect(PROT_READ) of the anonymous VMA, then mprotect(PROT_READ
    | PROT_WRITE) of its upper page, while a store to the lower page faults. mm/vma.c
    vma_modify splits "split_vma(vmi, vma, start, 1)", so the VMA the fault found by mas_walk
    is the one that becomes the upper, writable part, and the lower page lies in the new
    read-only VMA. At preemption bound 1 (the store's fault stops after mas_walk, the second
    mprotect runs its whole write-locked part, the fault goes on) exhaust finds it: accounting
    when the split came before the VMA had an anon_vma (33 actions), pte-within-vma-protection
    when it had one (page 5 prefaulted: 37 actions). Mainline is clean on both scenarios, the
    variant is clean when the second mprotect is a downgrade (the VMA the fault holds becomes
    the read-only part), and its weaker re-check still covers munmap (which detaches the VMA
    the fault found)."""
    world = default_world()
    store = [["access", 1, 4, 1]]
    upgrade = {0: [["start", 0, "mprotect", 4, 2, 1], ["start", 0, "mprotect", 5, 1, 3]],
               1: store}
    with_anon_vma = dict(world, prefault=world["prefault"] + [[0, 5, 1]])
    for w, prop, length in ((world, "accounting", 33),
                            (with_anon_vma, "pte-within-vma-protection", 37)):
        bad = exhaust(VmaLockRecheckMapped, w, upgrade, preemptions_max=1)
        assert bad.violation is not None and bad.violation.prop == prop
        assert len(bad.schedule) == length and not bad.truncated
        good = exhaust(Mainline, w, upgrade, preemptions_max=1)
        assert good.violation is None and not good.truncated
    for programs in ({0: [["start", 0, "mprotect", 5, 1, 1]], 1: [["access", 1, 5, 1]]},
                     {0: [["start", 0, "munmap", 5, 1]], 1: [["access", 1, 5, 1]]}):
        other = exhaust(VmaLockRecheckMapped, world, programs, preemptions_max=1)
        assert other.violation is None and not other.truncated


@pytest.mark.fuzz
@pytest.mark.cost(110)
def test_synthetic_deep_window_is_rare_for_swarm():
    """Swarm does not find VmaLockRecheckMapped under seed 1 within 80,000 runs of 60 actions
    (9,180,941 model steps; no violation of any property in those runs; mainline: the exhaust
    test above). Before mremap and fallocate_punch_hole were registered and every world got a
    free PTE table above its mappings it needed 42,593 runs (the first violation of any
    property in them this race), and 46,220 while the model split VMAs the wrong way round
    (the new VMA always the upper part)."""
    from mmfuzz.explore import explore
    # 60-action runs, as the hybrid's (the default draws 120 or 240: before the new operations,
    # 36,200 runs, where the first violation was the read-only range's writable PTE,
    # pte-within-vma-protection; not re-measured since)
    found, stats = explore(VmaLockRecheckMapped, 1, runs_max=80000, actions_max=60)
    assert found is None and stats["runs"] == 80000


@pytest.mark.fuzz
@pytest.mark.cost(40)
def test_ops_machine_pct_runs_find_what_the_search_alone_misses():
    """OpsMachine runs each example's mix under PCT (PCT_TRIES) before exhaust: under seed 11,
    bug:madv-parallel-flush-miss is found at machine run 67 of a 60-example campaign, by a PCT
    run (with PCT_TRIES 0 not at all in it: 72 machine runs, no find); mainline is clean on the
    same campaign. It was seed 2, machine run 86, before mremap and fallocate_punch_hole became
    rules and every world got a free PTE table; seed 2's 60-example campaign no longer finds it
    (68 machine runs), and seeds 1 and 3-10 do not either."""
    _ops_machine_finds("madv-parallel-flush-miss", 11, 60, 67)


def test_synthetic_deep_window_found_by_a_hybrid_scenario():
    """Hybrid run 6757 of seed 5 on VmaLockRecheckMapped: its swarm run (86 actions) misses the
    race; of the operations it had in flight, mprotect(1, 1, PROT_READ | PROT_WRITE) on CPU0
    and a store to page 0 on CPU1 may touch one page (the upgrade's footprint is the VMA it
    splits, which holds page 0), and the point search of that pair, from the state the run had reached before
    the first of them (its first 14 actions replayed: stores and loads of CPU0 and CPU1 and
    their steps), finds the race in its sixth try (accounting): the upgrade inside the store's
    fault window. Mainline is clean on every try of the same pair from the same state, and on
    the found schedule.
    It was hybrid run 5111 of seed 6 (75-action swarm run, mprotect(0, 4, PROT_READ) on CPU0
    and mprotect(2, 2, PROT_READ | PROT_WRITE) on CPU1, found in the first try) before the
    swarm's hot page moved every swarm run (2026-12-03); seeds 1-5 and 7-10's hybrid runs
    0-14,999 find the race with a swarm run's pair only as a store and a single upgrade
    (seed 5: run 6757; seed 9: runs 3510, 5676 and 9565), the other finds in a random scenario.
    Before that it was hybrid run 516 of seed 1 (95-action swarm run, mprotect(2, 2,
    PROT_READ) on CPU2 and mprotect(3, 1, PROT_READ | PROT_WRITE) on CPU1, CPU0's store
    replayed, fourth try) before mremap and fallocate_punch_hole were registered and every
    world got a free PTE table."""
    from mmfuzz.explore import random_run
    from mmfuzz.hybrid import hybrid_run, overlapping_pair, point_search, scenario_from_run
    out = hybrid_run(VmaLockRecheckMapped, random.Random("mmfuzz:5:6757"), 6757)
    assert out.kind == "scenarios" and out.prop == "accounting"
    assert out.steps == 293 and len(out.actions) == 44   # 86 of the swarm run, 207 searching
    _, replay = execute(VmaLockRecheckMapped, out.world, out.actions, strict=True)
    assert replay.violation is not None and replay.violation.prop == out.prop
    _, clean_replay = execute(Mainline, out.world, out.actions)
    assert clean_replay.violation is None
    rng = random.Random("mmfuzz:5:6757")
    _, run, v = random_run(VmaLockRecheckMapped, rng)
    positions: dict = {}
    world, programs = scenario_from_run(run, rng, positions=positions)
    chosen: list = []
    pair = overlapping_pair(world, programs, rng, chosen)
    assert v is None and len(run.trace) == 86
    assert pair == {0: [["start", 0, "mprotect", 1, 1, 3]], 1: [["access", 1, 0, 1]]}
    prefix = tuple(run.actions[:min(positions[c][i] for c, i in chosen)])
    assert len(prefix) == 14 and prefix[0] == ["access", 1, 1, 1] and prefix[-1] == ["step", 0]
    found, steps, tries = point_search(VmaLockRecheckMapped, world, pair, rng, 2 * 86, prefix)
    assert found is not None and (steps, tries) == (207, 6)
    clean, steps, tries = point_search(Mainline, world, pair, random.Random(0), 10 ** 9, prefix)
    assert clean is None and tries == 15   # every schedule of the pair with one preemption


def test_bfs_search_mode_still_finds_a_bug_in_a_scenario():
    """SEARCH "bfs" (the stateful exhaust under STATES_MAX, every operation of the scenario,
    from the world's initial state): run 159 of seed 1 finds clear-refs-softdirty-no-flush in
    its scenario, not in its swarm run (run 35 before the swarm's hot page, 2026-12-03; run
    120 before mremap and fallocate_punch_hole were registered and every world got a free PTE
    table)."""
    from mmfuzz.hybrid import hybrid_run
    bug = bug_by_slug("clear-refs-softdirty-no-flush")
    out = hybrid_run(bug.kernel, random.Random("mmfuzz:1:159"), 159, search="bfs",
                     overlap_only=False)
    assert out.kind == "scenarios" and out.prop == bug.prop
    _, replay = execute(bug.kernel, out.world, out.actions)
    assert replay.violation is not None and replay.violation.prop == bug.prop


def test_footprints_and_overlapping_pairs():
    """Footprints come from the operations' declared arguments: a file page is the same page
    through any VMA; an operation that changes VMAs touches the whole VMAs its range lies in;
    an operation without a page argument has no footprint and pairs with nothing."""
    from mmfuzz.hybrid import footprint, overlapping_pair
    world = default_world()
    assert footprint(world, ["access", 1, 2, 1]) == {("file", 1, 2)}
    assert footprint(world, ["start", 0, "madvise_dontneed", 3, 2]) == {("file", 1, 3),
                                                                       ("anon", 1, 4)}
    assert footprint(world, ["start", 0, "writeback", 1]) == {("file", 1, i) for i in range(4)}
    assert footprint(world, ["start", 0, "clear_refs"]) is None
    rng = random.Random(0)
    assert overlapping_pair(world, {0: [["start", 0, "clear_refs"]], 1: [["access", 1, 4, 1]]},
                            rng) is None
    assert overlapping_pair(world, {0: [["start", 0, "madvise_dontneed", 5, 1]],
                                    1: [["access", 1, 4, 1]]}, rng) is None
    # munmap (and mprotect) change VMAs: munmap of 5 splits the VMA 4-5, and a fault at 4
    # reads that VMA, so their footprint is every page of the VMAs the range lies in
    assert footprint(world, ["start", 0, "munmap", 5, 1]) == {("anon", 1, 4), ("anon", 1, 5)}
    assert footprint(world, ["start", 0, "mprotect", 1, 1, 1]) == {("file", 1, i)
                                                                   for i in range(4)}
    assert overlapping_pair(world, {0: [["start", 0, "munmap", 5, 1]], 1: [["access", 1, 4, 1]]},
                            rng) == {0: [["start", 0, "munmap", 5, 1]],
                                     1: [["access", 1, 4, 1]], 2: []}
    progs = {0: [["start", 0, "munmap", 4, 2]], 1: [["access", 1, 0, 0], ["access", 1, 5, 1]],
             2: []}
    assert overlapping_pair(world, progs, rng) == {0: [["start", 0, "munmap", 4, 2]],
                                                   1: [["access", 1, 5, 1]], 2: []}


@pytest.mark.fuzz
@pytest.mark.cost(80)
def test_synthetic_found_by_hybrid_in_a_ninth_of_swarms_runs_and_mainline_clean():
    """Under seed 1 the hybrid finds VmaLockRecheckMapped at run 8835 in 2,141,026 model steps
    with 4,761 scenarios (2,146,128 with 4,818 before fork was switched on only where it can
    start, at the default share, in worlds half of which have a free CPU; 2,147,567 before a CPU with IRQs off in a paravirt world was held back, and 2,145,389
    with 4,824 scenarios before the swarm's lowest IPI weight went from 0.5 to 0.1,
    2026-12-03), search included (run 8834's scenario is a random one, not a pair of its
    swarm run; 4,818 of the 8,835 runs searched a scenario, 4,835 before the hold); swarm at
    60 actions does not find it within 80,000 runs (test_synthetic_deep_window_is_rare_for_swarm; 9,180,941 steps before the swarm's hot
    page, not re-measured); mainline is clean on the same 8835 hybrid runs.
    Run 6611 in 1,477,268 steps (run 6610's pair: a store and a single mprotect upgrade) before
    the swarm's hot page moved every swarm run (2026-12-03).
    Before mremap and fallocate_punch_hole were registered and every world got a free PTE
    table above its mappings it was run 517 in 118,208 steps (swarm then: 36,200 runs at its
    drawn lengths, 42,593 at 60 actions, about 8.9 million steps; bench/RESULTS-hybrid.md):
    119,786 steps, 119,799 once fork's copy of an anon PTE became two steps (57efa1fe5957's
    window), 118,208 once a quarter of the worlds flushed by hypercall.
    It was run 710 (157,713 steps) before the point search tried lock-free preemption points
    first and VMA-changing operations got the footprint of the VMAs they split."""
    found, stats = explore_hybrid(VmaLockRecheckMapped, 1, runs_max=8840)
    assert found is not None and found.prop == "accounting"
    assert found.runs == 8835 and found.steps == 2141026 and stats["scenarios"] == 4761
    clean, st = explore_hybrid(Mainline, 1, runs_max=8835)
    assert clean is None and st["runs"] == 8835
