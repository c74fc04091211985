"""Reclaim's batched TLB flush (mm/rmap.c), MADV_FREE, reclaim, swap: mainline, serially and
in hand-written interleavings, with concrete assertions on the machine state."""

from __future__ import annotations

from mmfuzz.kernels import resolve_kernel
from mmfuzz.model import TLB_FLUSH_BATCH_FLUSHED_SHIFT, tlb_key
from mmfuzz.run import Run, default_world

MAINLINE = resolve_kernel("mainline")
MM = 1


def new_run(world=None) -> Run:
    return Run(MAINLINE, world or default_world())


def texts(r: Run) -> list[str]:
    return [s.text for s in r.trace]


# ------------------------------------------------------- flush_tlb_batched_pending ------
def test_zap_flushes_a_batched_flush_left_pending_and_records_the_generation():
    r = new_run()
    mm = r.m.mms[MM]
    mm.tlb_flush_batched = 1  # as set_tlb_ubc_flush_pending leaves it: pending 1, flushed 0
    r.apply(["start", 1, "madvise_dontneed", 2, 1])  # va 2: no PTE table yet
    r.drain()
    assert not any("flush_tlb_batched_pending" in t for t in texts(r)), \
        "no PTE table at va 2: pte_offset_map_lock fails before flush_tlb_batched_pending"
    r.apply(["start", 1, "madvise_dontneed", 0, 1])
    r.drain()
    tx = texts(r)
    i = next(i for i, t in enumerate(tx) if "pending 1 != flushed 0" in t)
    assert "flush_tlb_mm_range(mm1, all)" in tx[i + 1]
    assert mm.tlb_flush_batched == 1 | (1 << TLB_FLUSH_BATCH_FLUSHED_SHIFT)
    # CPU0's cached translation of va 1 (not in the zapped range) went with the full flush
    assert tlb_key(MM, 1) not in r.m.cpus[0].tlb
    # caught up: the next zap does not flush again for it
    n = len(tx)
    r.apply(["start", 1, "madvise_dontneed", 1, 1])
    r.drain()
    assert not any("flush_tlb_batched_pending" in t for t in texts(r)[n:])


def test_a_flush_batched_during_flush_tlb_batched_pending_stays_pending():
    """"If the new TLB flushing is pending during flushing, leave mm->tlb_flush_batched as
    is, to avoid losing flushing": a second reclaim batch arriving between the read and the
    cmpxchg keeps pending != flushed."""
    r = new_run()
    mm = r.m.mms[MM]
    mm.tlb_flush_batched = 1
    r.apply(["start", 1, "madvise_dontneed", 0, 1])
    while not r.trace[-1].text.startswith("flush_tlb_mm_range"):
        assert r.apply(["step", 1]) is not None
    mm.tlb_flush_batched += 1  # set_tlb_ubc_flush_pending on another PTE table meanwhile
    r.drain()
    assert any("failed (a new batched flush is pending)" in t for t in texts(r))
    assert mm.tlb_flush_batched == 2
