"""Every catalogued bug is found from scratch, and mainline stays clean on the same budget.

Budgets are deterministic run counts under fixed seeds, never times: a change that makes the
search worse fails here; time-to-bug is measured in bench/."""

import pytest

from mmfuzz.explore import explore, shrink
from mmfuzz.kernel import Mainline
from mmfuzz.kernels import BUGS, resolve_kernel
from mmfuzz.run import execute

# (slug, seed, runs that seed needs today, run budget given). Re-measured when fork, exit and
# the GUP operations joined the mix (6 -> 14 operations): every run draws among more
# operations, so the three older bugs need several times more runs than before (zap-rmap
# seed 3 752 -> 28,301, seed 2 1,398 -> 19,721, seed 12 4,884 -> 24,963; madv seed 1
# 240 -> 2,611, seed 4 149 -> 208; clear-refs seed 3 7 -> 21); see the report on dilution.
HUNTS = [pytest.param("zap-rmap-before-flush", 3, 28301, 32000, marks=pytest.mark.cost(60)),
         pytest.param("zap-rmap-before-flush", 2, 19721, 24000, marks=pytest.mark.cost(45)),
         pytest.param("zap-rmap-before-flush", 12, 24963, 28000, marks=pytest.mark.cost(55)),
         pytest.param("madv-parallel-flush-miss", 1, 2611, 4000, marks=pytest.mark.cost(6)),
         ("madv-parallel-flush-miss", 4, 208, 2000),
         ("clear-refs-softdirty-no-flush", 1, 4, 100),
         ("clear-refs-softdirty-no-flush", 3, 21, 100),
         # the COW/GUP family (measured at the GUP operations' introduction): the page_count
         # rule's wrong COW needs a store, clear_refs, a R/O pin and a store; Dirty COW a
         # FOLL_FORCE write racing MADV_DONTNEED in a world with a read-only file; the CVE a
         # fork, the child's vmsplice and munmap, the parent's store and a pipe read (runs of
         # Bug.actions_max = 200 and 400 actions for those two: the fork alone takes 27 steps)
         ("cow-gup-wrong-direction-pagecount", 1, 225, 2000),
         ("cow-gup-wrong-direction-pagecount", 3, 75, 2000),
         pytest.param("dirty-cow", 1, 1299, 4000, marks=pytest.mark.cost(8)),
         pytest.param("dirty-cow", 2, 4801, 8000, marks=pytest.mark.cost(25)),
         pytest.param("cow-gup-wrong-direction", 3, 526, 2000, marks=pytest.mark.cost(8)),
         pytest.param("cow-gup-wrong-direction", 1, 7487, 9000, marks=pytest.mark.cost(60))]


@pytest.mark.fuzz
@pytest.mark.parametrize("slug,seed,needed,budget", HUNTS)
def test_buggy_kernel_is_found_and_mainline_is_clean(slug, seed, needed, budget):
    bug = next(b for b in BUGS if b.slug == slug)
    found, _ = explore(bug.kernel, seed, runs_max=budget, actions_max=bug.actions_max)
    assert found is not None, f"bug:{slug} not found in {budget} runs (seed {seed})"
    assert found.prop == bug.prop
    assert found.runs <= needed, f"search got worse: {found.runs} runs, was {needed}"
    clean, stats = explore(Mainline, seed, runs_max=found.runs, actions_max=bug.actions_max)
    assert clean is None, f"mainline flagged: {clean and clean.prop}"
    assert stats["runs"] == found.runs


@pytest.mark.fuzz
@pytest.mark.cost(70)
def test_buggy_path_runs_and_shrunk_trace_shows_rmap_before_flush():
    bug = resolve_kernel("bug:zap-rmap-before-flush")
    found, _ = explore(bug, 3, runs_max=32000)   # 28,301 runs since the op mix grew to 14
    world, schedule = shrink(bug, found.world, found.actions, found.prop)
    assert len(schedule) <= 24
    run, out = execute(bug, world, schedule, strict=True)
    assert out.violation.prop == "dirty-data-preserved"
    assert run.m.stats["bug_path_hits"] >= 1
    texts = [s.text for s in run.trace[: out.step + 1]]
    removal = next(i for i, t in enumerate(texts) if "page_remove_rmap [before flush]" in t)
    clean = next(i for i, t in enumerate(texts) if "folio_mapped() = 0" in t)
    assert removal < clean < out.step
    # the same schedule on mainline: no violation
    _, out_main = execute(Mainline, world, schedule)
    assert out_main.violation is None


@pytest.mark.fuzz
def test_nested_flush_miss_trace_shows_second_zapper_returning_early():
    bug = resolve_kernel("bug:madv-parallel-flush-miss")
    found, _ = explore(bug, 4, runs_max=2000)
    world, schedule = shrink(bug, found.world, found.actions, found.prop)
    run, out = execute(bug, world, schedule, strict=True)
    assert out.violation.prop == "no-stale-translation-after-return"
    assert run.m.stats["bug_path_hits"] >= 1
    returned = run.trace[out.step]
    assert "madvise: mmap_read_unlock, return" in returned.text
    # two gathers were pending at once: the nested case the fix handles
    assert any("inc_tlb_flush_pending(mm1) -> 2" in s.text for s in run.trace)
    _, out_main = execute(Mainline, world, schedule)
    assert out_main.violation is None


def test_catalogue_is_consistent():
    for b in BUGS:
        assert resolve_kernel(f"bug:{b.slug}") is b.kernel
        assert issubclass(b.kernel, Mainline) and b.kernel is not Mainline
