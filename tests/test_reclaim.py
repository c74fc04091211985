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


# ------------------------------------------------------------------ helpers ------------
ANON = 4  # the default world's anonymous VMA is [4, 6)


def anon_world(prefault=((0, 4, 1),)):
    w = default_world()
    w["prefault"] = [list(p) for p in prefault]
    return w


def run_op(r: Run, cpu: int, op: str, *args):
    assert r.apply(["start", cpu, op, *args]) is not None, op
    task = r.m.cpus[cpu].task
    r.drain()
    assert r.violation is None, r.violation
    return task


def access(r: Run, cpu: int, vpn: int, write: bool):
    """A user access, with its fault run to completion and the access retried once."""
    step = r.apply(["access", cpu, vpn, int(write)])
    if step.op == "fault":
        r.drain()
        step = r.apply(["access", cpu, vpn, int(write)])
        assert step.op != "fault", step.text
    assert r.violation is None, r.violation
    return step


def pte_of(r: Run, vpn: int):
    table, slot = r.m.pte_lookup(r.m.mms[MM], vpn)
    return None if table is None else table.ptes[slot]


def folio_at(r: Run, vpn: int):
    return r.m.frames[pte_of(r, vpn).pfn]


# ----------------------------------------------------------------------- MADV_FREE ------
def test_madvise_free_cleans_keeps_write_and_flushes():
    r = new_run(anon_world())
    folio = folio_at(r, ANON)
    assert pte_of(r, ANON).dirty and tlb_key(MM, ANON) in r.m.cpus[0].tlb
    task = run_op(r, 1, "madvise_free", ANON, 2)
    assert task.result is None
    pte = pte_of(r, ANON)
    assert pte.write and not pte.dirty and not pte.young, pte  # writable and clean
    assert folio.lazyfree and folio.anon and not folio.freed and folio.mapcount == 1
    assert tlb_key(MM, ANON) not in r.m.cpus[0].tlb  # tlb_remove_tlb_entry -> flushed
    assert r.m.mms[MM].tlb_flush_pending == 0
    # a store now re-walks and sets D in hardware: MADV_FREE is cancelled for the page
    before = r.m.stats.get("hw_dirty_set", 0)
    access(r, 0, ANON, True)
    assert pte_of(r, ANON).dirty and r.m.stats["hw_dirty_set"] == before + 1
    assert r.quiesce() is None


def test_madvise_free_of_file_vma_is_einval():
    r = new_run()
    task = run_op(r, 1, "madvise_free", 0, 1)
    assert task.result == "EINVAL"
    assert pte_of(r, 0).dirty


def test_store_through_writable_clean_tlb_entry_sets_pte_dirty():
    r = new_run(anon_world())
    run_op(r, 1, "madvise_free", ANON, 1)
    access(r, 0, ANON, False)  # the load caches the writable, clean translation
    e = r.m.cpus[0].tlb[tlb_key(MM, ANON)]
    assert e.write and not e.dirty
    step = access(r, 0, ANON, True)
    assert "TLB re-walk" in step.text
    assert r.m.stats["wclean_tlb_store"] == 1 and pte_of(r, ANON).dirty


# -------------------------------------------------------------------------- reclaim -----
def test_reclaim_discards_clean_lazyfree_folio_and_page_reads_zero():
    r = new_run(anon_world())
    folio = folio_at(r, ANON)
    run_op(r, 1, "madvise_free", ANON, 1)
    run_op(r, 2, "reclaim", 1, 0, 1)  # file LRU: the lazyfree folio is its only folio
    tx = texts(r)
    assert any("ref_count 2 == 1 + map_count 1, clean: discard" in t for t in tx)
    assert any("PGLAZYFREED" in t for t in tx)
    assert folio.freed and pte_of(r, ANON) is None
    # the deferred flush ran before the frame was freed
    i_flush = max(i for i, t in enumerate(tx) if "arch_tlbbatch_flush" in t)
    i_free = max(i for i, t in enumerate(tx) if "free_unref_folios" in t)
    assert i_flush < i_free
    # the flush stays pending for the mm until the next PTE change catches up with it
    mm = r.m.mms[MM]
    assert mm.tlb_flush_batched == 1
    access(r, 0, ANON, False)
    assert r.m.frames[pte_of(r, ANON).pfn] is None or pte_of(r, ANON).special  # zero page
    assert r.quiesce() is None


def test_reclaim_keeps_lazyfree_folio_written_after_madvise_free():
    r = new_run(anon_world())
    folio = folio_at(r, ANON)
    run_op(r, 1, "madvise_free", ANON, 1)
    access(r, 0, ANON, True)  # v2: the hardware sets D (and A) in the PTE
    version = folio.data
    run_op(r, 2, "reclaim", 1, 0, 1)  # young: folio_set_referenced, keep
    assert folio.referenced and folio.lazyfree
    run_op(r, 2, "reclaim", 1, 0, 1)
    assert any("lazyfree pfn" in t and "dirty: set_pte_at restores" in t for t in texts(r))
    assert not folio.freed and not folio.lazyfree  # folio_set_swapbacked
    assert pte_of(r, ANON).pfn == folio.pfn and folio.data == version
    assert r.quiesce() is None


def test_reclaim_swaps_out_and_swap_in_maps_writable_clean():
    r = new_run(anon_world())
    folio = folio_at(r, ANON)
    version = folio.data
    run_op(r, 2, "reclaim", 0, 0, 1)  # young: folio_set_referenced, keep
    assert folio.referenced and not folio.swapcache and pte_of(r, ANON).present
    run_op(r, 2, "reclaim", 0, 0, 1)  # not young now: add_to_swap, unmap, pageout, free
    pte = pte_of(r, ANON)
    assert not pte.present and pte.exclusive and pte.soft_dirty
    sw = r.m.swap
    assert folio.freed and sw.data[pte.offset] == version and sw.swap_map[pte.offset] == 1
    assert sw.cache == {}
    # swap-in by a load: exclusive -> writable but clean; the store then sets D in hardware
    access(r, 1, ANON, False)
    new = pte_of(r, ANON)
    assert new.present and new.write and not new.dirty
    f2 = r.m.frames[new.pfn]
    assert f2.data == version and f2.anon_exclusive and f2.swapcache  # kept in the swap cache
    assert sw.swap_map[f2.swap] == 0x40  # SWAP_HAS_CACHE only
    access(r, 1, ANON, True)
    assert pte_of(r, ANON).dirty and r.m.stats["wclean_tlb_store"] == 1
    assert r.quiesce() is None


def test_swap_in_by_write_fault_frees_the_swap_slot():
    r = new_run(anon_world())
    run_op(r, 2, "reclaim", 0, 0, 1)
    run_op(r, 2, "reclaim", 0, 0, 1)
    slot = pte_of(r, ANON).offset
    access(r, 1, ANON, True)
    pte = pte_of(r, ANON)
    assert pte.write and pte.dirty
    f2 = r.m.frames[pte.pfn]
    assert not f2.swapcache and f2.dirty  # should_try_to_free_swap -> folio_free_swap
    assert r.m.swap.swap_map[slot] == 0
    assert r.quiesce() is None


def test_zap_of_swap_entry_frees_the_slot():
    r = new_run(anon_world())
    run_op(r, 2, "reclaim", 0, 0, 1)
    run_op(r, 2, "reclaim", 0, 0, 1)
    slot = pte_of(r, ANON).offset
    run_op(r, 1, "madvise_dontneed", ANON, 1)
    assert pte_of(r, ANON) is None and r.m.swap.swap_map[slot] == 0
    assert any("zap_nonpresent_ptes: free_swap_and_cache" in t for t in texts(r))
    assert r.quiesce() is None


def test_reclaim_of_dirty_file_folio_activates_and_clean_one_is_dropped():
    r = new_run()
    f0 = r.m.files[1].cache[0]
    run_op(r, 2, "reclaim", 1, 0, 1)  # young -> referenced, keep
    run_op(r, 2, "reclaim", 1, 0, 1)  # unmapped; dirty: activate
    assert f0.dirty and not f0.freed and f0.mapcount == 0 and r.m.files[1].cache[0] is f0
    run_op(r, 0, "writeback", 1)
    run_op(r, 2, "reclaim", 1, 0, 1)  # clean, unmapped: __remove_mapping, freed
    assert f0.freed and 0 not in r.m.files[1].cache
    assert r.m.files[1].disk[0] == 1
    assert r.quiesce() is None


# ------------------------------------------------- each property tripped by a variant ------
def step_until(r: Run, cpu: int, needle: str):
    while True:
        assert r.m.cpus[cpu].task is not None, f"{needle!r} never happened"
        step = r.apply(["step", cpu])
        if step is None:  # blocked: let the IPIs in
            for c in r.ipi_cpus():
                r.apply(["ipi", c])
            continue
        if needle in step.text:
            return step


def test_lazyfree_discard_must_recheck_dirty():
    """Mainline keeps the folio (previous tests); without the dirty re-check the store made
    after MADV_FREE returned is lost."""
    from tests.variants import LazyfreeDiscardIgnoresDirty
    for kernel, lost in ((MAINLINE, False), (LazyfreeDiscardIgnoresDirty, True)):
        r = Run(kernel, anon_world())
        run_op(r, 1, "madvise_free", ANON, 1)
        access(r, 0, ANON, True)
        run_op(r, 2, "reclaim", 1, 0, 1)
        run_op(r, 2, "reclaim", 1, 0, 1)
        v = r.quiesce()
        assert (v is not None and v.prop == "no-lost-write-after-madv-free") == lost, v


def test_zap_must_flush_what_reclaim_deferred():
    from mmfuzz.kernels import NoFlushTlbBatchedPending
    for kernel, stale in ((MAINLINE, False), (NoFlushTlbBatchedPending, True)):
        r = Run(kernel, anon_world())
        run_op(r, 1, "madvise_free", ANON, 1)
        access(r, 0, ANON, False)  # CPU0 caches the translation again (and the PTE is young)
        run_op(r, 2, "reclaim", 1, 0, 1)  # ptep_clear_flush_young: no flush on x86
        assert tlb_key(MM, ANON) in r.m.cpus[0].tlb
        r.apply(["start", 2, "reclaim", 1, 0, 1])
        step_until(r, 2, "try_to_unmap_one: ptep_get_and_clear + set_tlb_ubc_flush_pending")
        step_until(r, 2, "page_vma_mapped_walk_done")  # PTL dropped, flush still deferred
        r.apply(["start", 1, "madvise_dontneed", ANON, 1])
        while r.m.cpus[1].task is not None and r.violation is None:
            if r.apply(["step", 1]) is None:
                assert r.ipi_cpus(), "madvise blocked on something but IPIs"
                for c in r.ipi_cpus():
                    r.apply(["ipi", c])
        assert (r.violation is not None
                and r.violation.prop == "no-stale-translation-after-return") == stale, r.violation
        if not stale:
            assert any("flush_tlb_batched_pending(mm1): tlb_flush_batched pending 1 != flushed 0"
                       in t for t in texts(r))


def test_pageout_must_flush_writable_entries_first():
    from tests.variants import PageoutWithoutFlushDirty
    for kernel, lost in ((MAINLINE, False), (PageoutWithoutFlushDirty, True)):
        r = Run(kernel, anon_world())
        assert r.m.cpus[0].tlb[tlb_key(MM, ANON)].dirty  # CPU0: writable, dirty
        run_op(r, 2, "reclaim", 0, 0, 1)
        r.apply(["start", 2, "reclaim", 0, 0, 1])
        step_until(r, 2, "swap device writes")
        step = access(r, 0, ANON, True)  # mainline: faults (flushed); variant: stale TLB hit
        assert ("TLB hit" in step.text) == lost
        r.drain()
        v = r.quiesce()
        assert (v is not None and v.prop == "no-lost-write-after-madv-free") == lost, v


# --------------------------------------------------- bug:madvfree-reclaim-vs-dio ---------
DIO_BUG = resolve_kernel("bug:madvfree-reclaim-vs-dio")
DIO_PROPS = ("no-lost-write-after-madv-free", "gup-pin-coherent")


def dio_schedule(r: Run):
    """The catalogue's diagram: MADV_FREE; the O_DIRECT read pins the page with GUP-fast
    (FOLL_PIN | FOLL_WRITE, no PG_dirty); reclaim; the DMA completes and the pin is
    released; the user reads the buffer."""
    run_op(r, 1, "madvise_free", ANON, 1)
    run_op(r, 1, "pin_user_pages", ANON, 1, 1)
    run_op(r, 2, "reclaim", 1, 0, 1)
    run_op(r, 2, "pin_write", 1)
    run_op(r, 2, "unpin", 1)
    return access(r, 0, ANON, False)


def test_dio_read_into_lazyfree_page_is_lost_only_without_the_refcount_check():
    bug = Run(DIO_BUG, anon_world())
    step = dio_schedule(bug)
    assert bug.m.stats["bug_path_hits"] == 1
    assert "pfn 0" in step.text  # the zero page: the DMA's data is gone
    v = bug.quiesce()
    assert v is not None and v.prop == "no-lost-write-after-madv-free", v
    main = Run(MAINLINE, anon_world())
    step = dio_schedule(main)
    assert any("ref_count 1026 != 1 + map_count 1: set_pte_at restores" in t for t in texts(main))
    assert "pfn 0" not in step.text
    assert main.quiesce() is None


def test_mainline_runs_store_through_writable_clean_tlb_entries():
    """In mainline runs, MADV_FREE and do_swap_page make writable-clean PTEs, and a store
    through such a translation has the hardware set D in the PTE (the checker's count,
    hw_dirty_set). Measured under seed 1: 10 in the first 1,000 runs. A store re-walking from
    a writable-clean entry already cached in the TLB (wclean_tlb_store) needs a load first
    and is rare in random runs (0 in 2,000); test_store_through_writable_clean_tlb_entry_
    sets_pte_dirty shows it directly."""
    import random

    from mmfuzz.explore import random_run
    hw_set = 0
    for i in range(1000):
        _, run, v = random_run(MAINLINE, random.Random(f"mmfuzz:1:{i}"))
        assert v is None, v
        hw_set += run.m.stats.get("hw_dirty_set", 0)
    assert hw_set >= 5, hw_set


def test_gup_fast_cannot_take_a_folio_reclaim_froze_and_removed():
    """__remove_mapping(reclaimed=true) freezes the references at 0 and nothing unfreezes
    them before free_it: a GUP-fast that read the PTE before try_to_unmap cleared it finds a
    frozen folio, folio_ref_try_add fails, and it falls back. (The model once left the
    folio at refcount 1 in that window: GUP-fast took it, reclaim freed it anyway and the
    later put underflowed, a model failure the fuzzer reported on seed 9 of
    gupfast-fork-no-write-protect-seq.)"""
    r = new_run()
    f0 = r.m.files[1].cache[0]
    run_op(r, 2, "reclaim", 1, 0, 1)                     # young -> referenced, kept
    run_op(r, 0, "writeback", 1)                         # clean (va 0 was stored to)
    r.apply(["start", 1, "vmsplice", 0])                 # a FOLL_GET GUP-fast of file va 0
    step_until(r, 1, "ptep_get_lockless va 0x0 = pfn")
    r.apply(["start", 2, "reclaim", 1, 0, 1])            # unmap (flush batched), remove
    step_until(r, 2, "__filemap_remove_folio")
    assert f0.refcount == 0 and not f0.freed and f0.mapcount == 0   # frozen, not yet freed
    st = r.apply(["step", 1])
    assert "folio_ref_try_add_rcu fails" in st.text
    r.drain()
    assert f0.freed and r.violation is None and r.quiesce() is None
    assert r.m.pins[1].folio is not f0
