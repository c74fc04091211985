"""Races the model finds on mainline's own code, listed as known-open (mmfuzz.kernels.
KNOWN_OPEN), never hidden: reclaim-unlock-before-batched-flush and pte-cleaner-zap-early-rmap
(the second is at the end of this file).

The schedule (tests/data/reclaim-unlock-before-batched-flush.json, found by the fast explorer
under bug:cow-gup-wrong-direction seed 4 and shrunk on mainline to 70 actions), as columns:

    CPU1 (user)                 CPU2 (clear_refs 1)        CPU3 (reclaim, file LRU)
    store va 0x0: fault, PTE
      W+D, TLB W+D
                                clear young of va 0x0
                                                           folio_referenced: not young
                                                           try_to_unmap_one: clear PTE,
                                                             flush batched (tlb_ubc),
                                                             folio_mark_dirty, rmap gone
    writeback: lock, folio_mkclean
      (folio_mapped() = 0), clean, write v2
                                                           dirty file folio: activate,
                                                             folio_unlock  <-- before the
                                                             batched flush
    store v3 va 0x0 [TLB hit W+D]  <-- lands in a clean folio: never written back

(In the saved schedule the writeback runs on CPU1 too, between reclaim's unmap and its
unlock.) mm/vmscan.c shrink_folio_list flushes the batch (try_to_unmap_flush) only after the
loop; try_to_unmap_flush_dirty runs only before its own pageout, not on the keep/activate
path. Whether mainline really has this window is for linux-mm to confirm; the model reads it
this way, so the race is listed, with a candidate fix of ours that closes it.
"""

import json
import os

import pytest

from mmfuzz.kernel import Mainline
from mmfuzz.kernels import (KNOWN_OPEN, ReclaimFlushDirtyBeforeUnlock, ZapDelaysRmapWhileFlushNested,
                            ZapRmapBeforeFlush, known_open_race)
from mmfuzz.run import execute

DATA = os.path.join(os.path.dirname(__file__), "data", "reclaim-unlock-before-batched-flush.json")


def _case(path=DATA):
    with open(path, encoding="utf-8") as fh:
        d = json.load(fh)
    return d["world"], d["schedule"]


class _WithCandidateFix(ReclaimFlushDirtyBeforeUnlock, Mainline):
    pass


@pytest.mark.xfail(strict=True, reason="known-open race of mainline (model): reclaim unlocks a "
                   "dirty file folio it unmapped before its batched TLB flush; writeback cleans it "
                   "while a CPU still stores through the stale entry")
def test_mainline_loses_no_store_when_reclaim_keeps_a_dirty_folio():
    world, schedule = _case()
    _, out = execute(Mainline, world, schedule, strict=True)
    assert out.violation is None, out.violation.why


def test_the_race_is_listed_and_named_by_its_candidate_fix():
    world, schedule = _case()
    run, out = execute(Mainline, world, schedule, strict=True)
    assert out.violation is not None and out.violation.prop == "dirty-data-preserved"
    assert any("activate: keep_locked, folio_unlock" in s.text for s in run.trace)
    assert any("folio_mapped() = 0" in s.text for s in run.trace)
    _, fixed = execute(_WithCandidateFix, world, schedule)
    assert fixed.violation is None
    assert known_open_race(Mainline, world, run.actions[: out.step + 1], out.violation) == \
        "reclaim-unlock-before-batched-flush"
    assert "reclaim-unlock-before-batched-flush" in [k.slug for k in KNOWN_OPEN]


# ------------------------------------------------------------ pte-cleaner-zap-early-rmap
# Found by the swarm explorer once its late IPIs got later (explore.IPI_WEIGHTS, seed 5 run
# 1,588, with a hole punch as the zap); written here with MADV_DONTNEED, whose zap keeps the
# file's data (a punch discards the page soon after, so its lost store is lost by request)
# and shrunk on mainline to 27 actions:
#
#     CPU0 (user, then writeback)   CPU1 (MADV_DONTNEED)        CPU2 (PTE cleaner)
#     load va 0x1: TLB fill W+D
#       (CPU2's store left the PTE W+D)
#     writeback: folio_lock
#                                                               inc_tlb_flush_pending
#                                                               clean_record_pte: PTE W,
#                                                                 clean; flush deferred
#                                   zap: PTE clean, so no
#                                     delayed rmap, no forced
#                                     flush; rmap gone
#     folio_mkclean: folio_mapped()
#       = 0; clean, write v1
#     store v2 va 0x1 [TLB hit W+D]  <-- lands in a clean, unmapped folio: never written
#
# mm/memory.c zap_present_folio_ptes delays the rmap and forces the flush under the PTL only
# for a dirty PTE (5df397dec7c4); mm/mapping_dirty_helpers.c clean_record_pte leaves a clean
# PTE behind a TLB entry that is still writable and dirty until wp_clean_post_vma flushes.
# The same gap as Yu Zhao's Example 1 ("!pte_dirty() ... [true, no flush]"), reached through
# the zap instead of page_vma_mkclean_one. The candidate fix of ours
# (kernels.ZapDelaysRmapWhileFlushNested) also delays while mm_tlb_flush_nested(mm).

CLEANER = os.path.join(os.path.dirname(__file__), "data", "pte-cleaner-zap-early-rmap.json")


@pytest.mark.xfail(strict=True, reason="known-open race of mainline (model): a zap removes the "
                   "rmap of a clean file PTE while a PTE cleaner's flush is owed; writeback cleans "
                   "the folio while a CPU still stores through the stale writable, dirty entry")
def test_mainline_loses_no_store_when_a_zap_meets_a_pte_cleaners_deferred_flush():
    world, schedule = _case(CLEANER)
    assert execute(Mainline, world, schedule, strict=True)[1].violation is None


def test_the_cleaner_zap_race_is_listed_and_named_by_its_candidate_fix():
    world, schedule = _case(CLEANER)
    run, out = execute(Mainline, world, schedule, strict=True)
    assert out.violation is not None and out.violation.prop == "dirty-data-preserved"
    texts = [s.text for s in run.trace]
    for shown in ("pte_mkclean (W, clean)", "folio_mapped() = 0", "TLB hit WD"):
        assert any(shown in t for t in texts), shown
    fixed = type("Fixed", (ZapDelaysRmapWhileFlushNested, Mainline), {})
    assert execute(fixed, world, schedule)[1].violation is None
    slug = known_open_race(Mainline, world, run.actions[: out.step + 1], out.violation)
    assert slug == "pte-cleaner-zap-early-rmap" and slug in [k.slug for k in KNOWN_OPEN]


def test_a_variant_that_rewrites_the_zap_does_not_turn_the_race_into_its_find():
    """ZapRmapBeforeFlush overrides zap_present_folio_ptes, so the candidate fix does not
    compose with it and the variant still fails with it mixed in; mainline fails the same way
    on the same schedule and mainline with the fix is clean, so the violation is the
    known-open race, not evidence of the variant's own bug (zap-rmap-before-flush)."""
    world, schedule = _case(CLEANER)
    run, out = execute(ZapRmapBeforeFlush, world, schedule, strict=True)
    assert out.violation is not None and out.violation.prop == "dirty-data-preserved"
    _, with_fix = execute(type("V", (ZapDelaysRmapWhileFlushNested, ZapRmapBeforeFlush), {}),
                          world, schedule)
    assert with_fix.violation is not None
    assert known_open_race(ZapRmapBeforeFlush, world, run.actions[: out.step + 1],
                           out.violation) == "pte-cleaner-zap-early-rmap"


# ------------------------------------- the same race through soft-dirty-accurate (2026-12-04)
# Found by the directed search under bug:cow-gup-wrong-direction seed 8 and shrunk on mainline
# to 104 actions: reclaim unmaps file1[0] (dirty, flush batched) and activates it, unlocking it
# before try_to_unmap_flush; CPU1's vmsplice faults the page in again (a clean PTE, not
# soft-dirty) and CPU1 stores through the stale writable, dirty entry it kept: the store sets
# no soft-dirty bit anywhere. The race is the one above, seen through another property.
SOFTDIRTY = os.path.join(os.path.dirname(__file__), "data",
                         "reclaim-unlock-before-batched-flush-softdirty.json")


def test_the_reclaim_race_also_shows_as_a_missed_soft_dirty_bit():
    world, schedule = _case(SOFTDIRTY)
    run, out = execute(Mainline, world, schedule, strict=True)
    assert out.violation is not None and out.violation.prop == "soft-dirty-accurate"
    texts = [s.text for s in run.trace]
    unlock = next(i for i, t in enumerate(texts) if "activate: keep_locked, folio_unlock" in t)
    refault = next(i for i, t in enumerate(texts) if "set_pte_range: folio_add_file_rmap_ptes(pfn 3)" in t
                   and i > unlock)
    assert "TLB hit WD" in texts[-1] and refault < len(texts) - 1
    _, fixed = execute(_WithCandidateFix, world, schedule)
    assert fixed.violation is None
    race = next(k for k in KNOWN_OPEN if k.slug == "reclaim-unlock-before-batched-flush")
    assert race.props == ("dirty-data-preserved", "soft-dirty-accurate")
    assert known_open_race(Mainline, world, run.actions[: out.step + 1], out.violation) == race.slug


# A variant whose change drops a step cannot be asked "does mainline fail the same way on this
# schedule": bug:gupfast-fork-no-write-protect-seq skips gup_fast's seqcount read, so on
# mainline every later action of its schedule lands one step earlier. Its violation of a
# property that is not its own (dirty-data-preserved, where its catalogued one is
# gup-pin-coherent) is set aside when the race's fix closes it on the variant.
VARIANT_MEETS_RACE = os.path.join(os.path.dirname(__file__), "data",
                                  "gupfast-fork-variant-meets-reclaim-unlock.json")


def test_a_variant_meeting_the_race_through_another_property_is_not_its_find():
    from mmfuzz.kernels import resolve_kernel
    variant = resolve_kernel("bug:gupfast-fork-no-write-protect-seq")
    world, schedule = _case(VARIANT_MEETS_RACE)
    run, out = execute(variant, world, schedule, strict=True)
    assert out.violation is not None and out.violation.prop == "dirty-data-preserved"
    assert any("activate: keep_locked, folio_unlock" in s.text for s in run.trace)
    _, on_mainline = execute(Mainline, world, schedule)
    assert on_mainline.violation is None          # the replay moved: no same-schedule answer
    _, fixed = execute(type("V", (ReclaimFlushDirtyBeforeUnlock, variant), {}), world, schedule)
    assert fixed.violation is None                # the reclaim race's fix closes it
    # set aside, and named by the fix that closes it on the variant itself: mainline with a
    # fix is not asked here (mainline does not reach the violation on this schedule, so any
    # fix would look as if it closed it)
    assert known_open_race(variant, world, run.actions[: out.step + 1], out.violation) == \
        "reclaim-unlock-before-batched-flush"


def test_a_variant_s_own_property_still_needs_mainline_to_fail_the_same_way():
    """zap-rmap-before-flush's catalogued property is dirty-data-preserved, the known races'
    own: for it the strict rule stands (tests/test_bugs.py's finds stay finds)."""
    from mmfuzz.kernels import _off_catalogue, resolve_kernel
    zap = resolve_kernel("bug:zap-rmap-before-flush")
    assert not _off_catalogue(zap, "dirty-data-preserved")
    assert _off_catalogue(zap, "soft-dirty-accurate")
    assert not _off_catalogue(Mainline, "dirty-data-preserved")
