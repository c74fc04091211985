"""mm/memory.c: the zap path, page-table freeing, fork's page-table copy (copy_page_range)
and page faults (v6.12 structure; the v6.14 PT_RECLAIM table freeing from MADV_DONTNEED is
not modelled).

Faults run as x86 does them: under the per-VMA lock (lock_vma_under_rcu) when they can get
it, else under mmap_lock for read (lock_mm_and_find_vma). Every lockless read a decision
depends on is a labelled step of its own or named in the label of the step that makes it
(the PMD read of pte_offset_map_lock, pmd_none in pte_alloc, ptep_get_lockless, the pte_same
re-check under the PTL); where mainline retries (pte_offset_map_lock returning NULL, a changed
PMD or PTE), the model does too.

Left out everywhere here: mmu notifiers, rss counters, lazy MMU mode, uprobes, hugetlb, THP
PMDs, non-present PTEs other than swap entries (migration, device, uffd markers), uffd, KSM,
NUMA hinting, fault-around, the VM_FAULT_RETRY of filemap_fault dropping mmap_lock for I/O.
"""

from __future__ import annotations

from ..model import Folio, Mm, Pte, PteTable, Vma, tlb_key
from .base import KernelBase, Last, Task, Wait
from .mmu_gather import MmuGather

NOPAGE = "VM_FAULT_NOPAGE"
RETRY = "VM_FAULT_RETRY"


class Memory(KernelBase):
    # ------------------------------------------------------------------ zap -----------
    def zap_page_range_single(self, t: Task, vma: Vma, start: int, end: int,
                              even_cows: bool = True):
        """mm/memory.c zap_page_range_single (v6.12): one mmu_gather for this VMA's mm:
        tlb_gather_mmu, unmap_single_vma, tlb_finish_mmu. ``even_cows`` False is a struct
        zap_details with even_cows 0 (unmap_mapping_range's: "only unmap the page-cache
        pages, keep the private COWed ones"); the gather carries it to zap_present_ptes and
        zap_nonpresent_ptes, where mainline passes details down every zap_* level."""
        tlb = yield from self.tlb_gather_mmu(t, self.m.mms[vma.mm_id])
        tlb.even_cows = even_cows
        yield from self.unmap_single_vma(t, tlb, vma, start, end)
        yield from self.tlb_finish_mmu(t, tlb)

    def unmap_single_vma(self, t: Task, tlb: MmuGather, vma: Vma, start: int, end: int):
        """mm/memory.c unmap_single_vma: clamp to the VMA, then unmap_page_range."""
        start, end = max(start, vma.start), min(end, vma.end)
        if start >= end:
            return
        yield from self.unmap_page_range(t, tlb, vma, start, end)

    def unmap_page_range(self, t: Task, tlb: MmuGather, vma: Vma, start: int, end: int):
        """mm/memory.c unmap_page_range: tlb_start_vma (records VMA flags; the cache flush is a
        no-op on x86), zap_p4d/pud/pmd_range, tlb_end_vma."""
        yield from self.zap_pmd_range(t, tlb, vma, start, end)
        yield from self.tlb_end_vma(t, tlb, vma)

    def zap_pmd_range(self, t: Task, tlb: MmuGather, vma: Vma, start: int, end: int):
        """mm/memory.c zap_pmd_range: per PMD, skip a none PMD, else zap_pte_range; when it
        returns early (gather full) revisit the same PMD (pmd--) after cond_resched."""
        m = self.m
        p = m.ptrs_per_pte
        addr = start
        while addr < end:
            nxt = min((addr // p + 1) * p, end)
            if tlb.mm.pmd[addr // p] is None:  # pmd_none_or_trans_huge_or_clear_bad
                addr = nxt
                continue
            addr = yield from self.zap_pte_range(t, tlb, vma, addr, nxt)

    def zap_pte_range(self, t: Task, tlb: MmuGather, vma: Vma, addr: int, end: int):
        """mm/memory.c zap_pte_range (v6.12 form: returns addr, the caller re-enters).

        Under the PTL: flush_tlb_batched_pending (a flush reclaim deferred for this mm); clear
        each present PTE (zap_present_ptes); if force_flush, "Do the actual TLB flush before
        dropping ptl": tlb_flush_mmu_tlbonly, then tlb_flush_rmaps; unlock; then, still if
        force_flush, tlb_flush_mmu frees the batched pages."""
        m = self.m
        mm = tlb.mm
        pmd_index = addr // m.ptrs_per_pte
        table = mm.pmd[pmd_index]
        if table is None:  # pte_offset_map_lock failed: nothing to zap here
            return end
        yield from self.spin_lock(t, table.ptl, f"zap_pte_range: pte_offset_map_lock va {addr:#x}")
        if mm.pmd[pmd_index] is not table:
            yield from self.spin_unlock(t, table.ptl, "zap_pte_range: table changed, unlock")
            return addr
        yield from self.flush_tlb_batched_pending(t, mm)
        force_flush = False
        first = addr
        while addr < end:
            slot = addr % m.ptrs_per_pte
            ptent = table.ptes[slot]
            if ptent is None:
                addr += 1
                continue
            if not ptent.present:
                if tlb.even_cows:   # should_zap_cows: a swap entry is a private anon page
                    yield from self.zap_nonpresent_ptes(t, table, slot, addr)
                addr += 1
                continue
            force_flush, force_break = yield from self.zap_present_ptes(
                t, tlb, vma, table, slot, addr, force_flush)
            addr += 1
            if force_break:
                break
        if force_flush:
            yield from self.tlb_flush_mmu_tlbonly(t, tlb)
            yield from self.tlb_flush_rmaps(t, tlb, vma)
        for vpn in range(first, addr):
            t.observed[tlb_key(mm.mm_id, vpn)] = m.clock
        yield from self.spin_unlock(t, table.ptl, "zap_pte_range: pte_unmap_unlock")
        if force_flush:
            yield from self.tlb_flush_mmu(t, tlb)
        return addr

    def zap_nonpresent_ptes(self, t: Task, table: PteTable, slot: int, vpn: int):
        """mm/memory.c zap_nonpresent_ptes, a genuine swap entry ("hence a private anon
        page"): free_swap_and_cache, then pte_clear_not_present_full. No TLB entry to flush."""
        ptent = table.ptes[slot]
        yield from self.free_swap_and_cache(t, ptent)
        table.ptes[slot] = None
        t.observed[tlb_key(table.mm_id, vpn)] = self.m.clock
        yield f"zap_nonpresent_ptes: free_swap_and_cache(slot {ptent.offset}), pte_clear va {vpn:#x}"

    def zap_present_ptes(self, t: Task, tlb: MmuGather, vma: Vma, table: PteTable, slot: int,
                         vpn: int, force_flush: bool):
        """mm/memory.c zap_present_ptes: vm_normal_page; the zero page is cleared and recorded
        in the range with nothing queued; a normal page goes to zap_present_folio_ptes.
        Returns (force_flush, force_break)."""
        m = self.m
        ptent = table.ptes[slot]
        if ptent.special:
            table.ptes[slot] = None  # ptep_get_and_clear_full
            m.revoke(tlb.mm.mm_id, vpn)
            self.pte_table_flush_deferred(tlb.mm, table)
            self.tlb_remove_tlb_entry(tlb, vpn)
            yield f"zap_present_ptes: ptep_get_and_clear_full va {vpn:#x} (zero page)"
            return force_flush, False
        folio = m.frames[ptent.pfn]
        if folio.anon and not tlb.even_cows:
            return force_flush, False   # should_zap_folio: "only zap non-anon folios"
        return (yield from self.zap_present_folio_ptes(t, tlb, vma, folio, table, slot, vpn,
                                                       force_flush))

    def zap_file_pte_dirty_for_flush(self, tlb: MmuGather, pte) -> bool:
        """The test behind zap_present_folio_ptes' delayed rmap and forced flush for a file
        folio: mm/memory.c "if (pte_dirty(ptent)) { folio_mark_dirty(folio); if
        (tlb_delay_rmap(tlb)) { delay_rmap = true; *force_flush = true; } }". A hook so that
        a candidate fix (kernels.ZapDelaysRmapWhileFlushNested) can widen it."""
        return pte.dirty

    def zap_present_folio_ptes(self, t: Task, tlb: MmuGather, vma: Vma, folio: Folio,
                               table: PteTable, slot: int, vpn: int, force_flush: bool):
        """mm/memory.c zap_present_folio_ptes (PTL held). Returns (force_flush, force_break).

        File folio: get_and_clear_full_ptes (an atomic xchg that catches a D bit the hardware
        sets at the last moment); if the PTE was dirty, folio_mark_dirty and, when
        tlb_delay_rmap(), delay the rmap removal and force a flush under the PTL (5df397dec7c4).
        Anon folio: clear_full_ptes, "We don't need up-to-date accessed/dirty bits". Then
        tlb_remove_tlb_entries; the rmap is removed now unless delayed; the page is queued in
        the gather, whose reference it now owns.

        The PTE clear and the folio_mark_dirty of its dirty bit are one step: both happen under
        this PTL, and no path reads PG_dirty of a still-mapped folio without this PTL (writeback
        waits on it in folio_mkclean; eviction is refused while the gather holds a reference)."""
        m = self.m
        old = table.ptes[slot]
        table.ptes[slot] = None
        m.revoke(tlb.mm.mm_id, vpn)
        self.pte_table_flush_deferred(tlb.mm, table)
        delay_rmap = False
        dirty_note = ""
        if not folio.anon:
            if old.dirty:
                self.folio_mark_dirty_now(folio)
                dirty_note = " dirty -> folio_mark_dirty"
            if self.zap_file_pte_dirty_for_flush(tlb, old) and self.tlb_delay_rmap(tlb):
                delay_rmap = True
                force_flush = True
        self.tlb_remove_tlb_entry(tlb, vpn)
        kind = "anon" if folio.anon else "file"
        yield (f"zap_present_folio_ptes: get_and_clear_full_ptes va {vpn:#x} pfn {folio.pfn} "
               f"({kind}){dirty_note}{' [delay rmap]' if delay_rmap else ''}")
        if not delay_rmap:
            yield from self.folio_remove_rmap_ptes(t, folio, vma)
        force_break = False
        if self.tlb_remove_folio_pages_size(tlb, folio, delay_rmap):
            force_flush = force_break = True
        return force_flush, force_break

    def unmap_vmas(self, t: Task, tlb: MmuGather, vmas: list[Vma], start: int, end: int):
        """mm/memory.c unmap_vmas: unmap_single_vma for every VMA; no flush of its own (the
        caller "will flush the whole unmapped address range after unmap_vmas() returns")."""
        for vma in vmas:
            yield from self.unmap_single_vma(t, tlb, vma, start, end)

    # ------------------------------------------------------- page-table freeing -------
    def free_pgtables(self, t: Task, tlb: MmuGather, vmas: list[Vma], mm_wr_locked: bool = False):
        """mm/memory.c free_pgtables: "Hide vma from rmap and truncate_pagecache before freeing
        pgtables": vma_start_write when the caller holds mmap_lock for write (exit_mmap),
        unlink_anon_vmas, unlink_file_vma under i_mmap_rwsem (write), then free_pgd_range with
        floor/ceiling from the neighbouring VMAs."""
        m = self.m
        for vma in vmas:
            if mm_wr_locked:
                yield from self.vma_start_write(t, vma, f"free_pgtables: vma_start_write(vma{vma.vid})")
            if vma.anon_vma_chain:
                yield from self.unlink_anon_vmas(t, vma)
            if vma.file is not None:
                f = m.files[vma.file]
                yield from self.down_write(t, f.i_mmap_rwsem, f"unlink_file_vma: i_mmap_lock_write(file{f.file_id})")
                f.i_mmap.remove(vma)
                yield from self.up_write(t, f.i_mmap_rwsem, f"unlink_file_vma: {vma.describe()} off i_mmap, unlock")
        for vma in vmas:
            yield from self.free_pgd_range(t, tlb, vma.start, vma.end)

    def free_pgd_range(self, t: Task, tlb: MmuGather, start: int, end: int):
        """mm/memory.c free_pgd_range -> free_pte_range: a PTE table is freed when no remaining
        VMA overlaps its PMD (the floor/ceiling rule); pmd_clear without the PTL (the VMAs are
        isolated) and pte_free_tlb queues the page until after the flush. Upper levels are
        kept (the model has one PMD page per mm)."""
        m = self.m
        mm = t.mm
        p = m.ptrs_per_pte
        for pmd_index in range(start // p, (end - 1) // p + 1):
            table = mm.pmd[pmd_index]
            if table is None:
                continue
            lo, hi = pmd_index * p, (pmd_index + 1) * p
            if any(v.start < hi and lo < v.end for v in mm.vmas):
                continue
            mm.pmd[pmd_index] = None
            for vpn in range(lo, hi):
                t.observed[tlb_key(mm.mm_id, vpn)] = m.clock
            self.pte_free_tlb(tlb, table, lo)
            yield f"free_pte_range: pmd_clear + pte_free_tlb (table {table.tid}, va {lo:#x}-{hi:#x})"

    # ------------------------------------------------------------- fork copy ---------
    def vma_needs_copy(self, dst_vma: Vma, src_vma: Vma) -> bool:
        """mm/memory.c vma_needs_copy: "The presence of an anon_vma indicates an anonymous VMA
        has page tables which naturally cannot be reconstituted on page fault"; otherwise
        "Don't copy ptes where a page fault will fill them correctly" (VM_COPY_ON_FORK, for
        uffd-wp and PFN maps, is not modelled)."""
        return src_vma.anon_vma is not None

    def copy_page_range(self, t: Task, dst_vma: Vma, src_vma: Vma):
        """mm/memory.c copy_page_range (fork, both mmap_locks held for write, src_vma
        write-locked): skip unless vma_needs_copy; for a COW mapping hold
        src_mm->write_protect_seq (raw_write_seqcount_begin/end) across the copy, which
        GUP-fast checks for FOLL_PIN; copy_pte_range per PMD with a present source table
        (pmd_none_or_clear_bad). Left out: mmu notifiers, hugetlb, THP PMDs."""
        if not self.vma_needs_copy(dst_vma, src_vma):
            return
        m = self.m
        src_mm = m.mms[src_vma.mm_id]
        is_cow = not src_vma.shared
        if is_cow:
            src_mm.write_protect_seq += 1
            yield (f"copy_page_range({src_vma.describe()}): raw_write_seqcount_begin("
                   f"mm{src_mm.mm_id}->write_protect_seq) -> {src_mm.write_protect_seq}")
        p = m.ptrs_per_pte
        addr = src_vma.start
        while addr < src_vma.end:
            nxt = min((addr // p + 1) * p, src_vma.end)
            if src_mm.pmd[addr // p] is not None:
                yield from self.copy_pte_range(t, dst_vma, src_vma, addr, nxt)
            addr = nxt
        if is_cow:
            src_mm.write_protect_seq += 1
            yield (f"copy_page_range: raw_write_seqcount_end(mm{src_mm.mm_id}->write_protect_seq)"
                   f" -> {src_mm.write_protect_seq}")

    def copy_pte_range(self, t: Task, dst_vma: Vma, src_vma: Vma, addr: int, end: int):
        """mm/memory.c copy_pte_range: pte_alloc_map_lock in the child, then the parent's
        table (pte_offset_map_rw_nolock; "We already hold the exclusive mmap_lock ... the PTE
        page is stable") and spin_lock_nested(src_ptl); copy_present_ptes per present PTE.
        When a PTE needs a copy of its page (-EAGAIN: a possibly pinned exclusive anon page),
        drop both PTLs, folio_prealloc, and start again at that address."""
        m = self.m
        src_mm = m.mms[src_vma.mm_id]
        dst_mm = m.mms[dst_vma.mm_id]
        prealloc = None
        while True:
            yield from self.pte_alloc(t, addr, dst_mm)
            dst = yield from self.pte_offset_map_lock(t, dst_mm, addr, "copy_pte_range (child)")
            if dst is None:  # -ENOMEM in the kernel; the child table cannot vanish here
                break
            src = src_mm.pmd[addr // m.ptrs_per_pte]
            if src is None:
                yield from self.spin_unlock(t, dst.ptl, "copy_pte_range: no parent table, unlock")
                break
            yield from self.spin_lock(t, src.ptl, f"copy_pte_range: spin_lock_nested {src.ptl.name} (parent)")
            again = False
            while addr < end:
                ptent = src.ptes[addr % m.ptrs_per_pte]
                if ptent is not None and not ptent.present:
                    yield from self.copy_nonpresent_pte(t, dst, src, addr, ptent)
                elif ptent is not None:
                    ret, prealloc = yield from self.copy_present_ptes(
                        t, dst_vma, src_vma, dst, src, addr, ptent, prealloc)
                    if ret == "EAGAIN":
                        again = True
                        break
                addr += 1
            yield from self.spin_unlock(t, src.ptl, "copy_pte_range: pte_unmap_unlock (parent)")
            yield from self.spin_unlock(t, dst.ptl, "copy_pte_range: pte_unmap_unlock (child)")
            if not again:
                break
            prealloc = m.alloc_folio()
            yield f"copy_pte_range: -EAGAIN: folio_prealloc pfn {prealloc.pfn}, again at va {addr:#x}"
        if prealloc is not None:
            self.folio_put_now(prealloc)
            yield f"copy_pte_range: folio_put(unused prealloc pfn {prealloc.pfn})"

    def copy_nonpresent_pte(self, t: Task, dst: PteTable, src: PteTable, vpn: int, pte):
        """mm/memory.c copy_nonpresent_pte, a genuine swap entry (both PTLs held): swap_duplicate;
        "Mark the swap entry as shared": an exclusive swap PTE loses SWP_EXCLUSIVE in the
        parent (pte_swp_clear_exclusive) and the child gets the same entry. One step."""
        m = self.m
        slot = vpn % m.ptrs_per_pte
        self.swap_duplicate(pte.offset)
        if pte.exclusive:
            pte = pte._replace(exclusive=False)
            src.ptes[slot] = pte
        dst.ptes[slot] = pte
        yield f"copy_nonpresent_pte: swap_duplicate(slot {pte.offset}), shared swap PTE va {vpn:#x} in both"

    def copy_present_ptes(self, t: Task, dst_vma: Vma, src_vma: Vma, dst: PteTable,
                          src: PteTable, vpn: int, pte: Pte, prealloc):
        """mm/memory.c copy_present_ptes (one small folio, both PTLs held): vm_normal_page
        (none for the zero page: just copy the PTE); folio_get; an anon folio needs
        folio_try_dup_anon_rmap_pte, which refuses a possibly pinned PG_anon_exclusive folio
        ("copy the page immediately for the child so that we'll always guarantee the pinned
        page won't be randomly replaced in the future"): folio_put and copy_present_page; a
        file folio gets folio_dup_file_rmap_pte. Then __copy_present_ptes: "If it's a COW
        mapping, write protect it both processes" (wrprotect_ptes on the parent's PTE, an
        atomic bit clear that keeps a D set by hardware), "If it's a shared mapping, mark it
        clean in the child", pte_mkold, set_ptes in the child. All of it is under both PTLs,
        so nothing that takes a PTL sees a step of it; for an anon folio it is two steps all
        the same, because GUP-fast reads the parent's PTE without the PTL: between the
        PG_anon_exclusive clear and the write-protect it sees a writable PTE of a page that
        is no longer exclusive (the window of 57efa1fe5957, "there is a small race where
        get_user_pages_fast(FOLL_PIN) can establish a FOLL_PIN at the same time
        copy_present_page() is write protecting it", which mm->write_protect_seq closes).
        A file folio or the zero page is one step (no lockless reader tells the halves
        apart). Returns (ret, prealloc)."""
        m = self.m
        slot = vpn % m.ptrs_per_pte
        folio = None if pte.special else m.frames[pte.pfn]
        note = "zero page"
        if folio is not None:
            folio.refcount += 1  # folio_get
            if folio.anon:
                if not self.folio_try_dup_anon_rmap_pte_now(folio, src_vma):
                    folio.refcount -= 1  # folio_put: the PTE still holds its reference
                    return (yield from self.copy_present_page(t, dst_vma, src_vma, dst, vpn,
                                                              folio, prealloc))
                yield (f"copy_present_ptes va {vpn:#x}: folio_get, folio_try_dup_anon_rmap_pte("
                       f"pfn {folio.pfn}) -> mapcount {folio.mapcount}, shared")
                note = "__copy_present_ptes"
            else:
                self.folio_dup_file_rmap_pte_now(folio)
                note = f"folio_dup_file_rmap_pte(pfn {folio.pfn}) -> mapcount {folio.mapcount}"
        src_note = ""
        if not src_vma.shared and pte.write:
            # re-read: the hardware may have set D since copy_pte_range read the PTE
            cur = src.ptes[slot]
            src.ptes[slot] = cur._replace(write=False)
            m.revoke(src_vma.mm_id, vpn)
            # flushed by dup_mmap's flush_tlb_mm(oldmm) later (generation variants only)
            self.pte_table_flush_deferred(m.mms[src_vma.mm_id], src)
            pte = cur._replace(write=False)
            src_note = ", wrprotect_ptes(parent)"
        child = pte._replace(young=False, dirty=pte.dirty and not src_vma.shared)
        dst.ptes[slot] = child
        yield (f"copy_present_ptes va {vpn:#x}: {note}{src_note}, set_ptes(child) "
               f"{fmt_pte(child)}")
        return 1, prealloc

    def copy_present_page(self, t: Task, dst_vma: Vma, src_vma: Vma, dst: PteTable, vpn: int,
                          folio: Folio, prealloc):
        """mm/memory.c copy_present_page: without a preallocated folio return -EAGAIN (the
        caller allocates outside the PTLs and comes back); with one, copy the page
        (copy_mc_user_highpage), folio_add_new_anon_rmap(RMAP_EXCLUSIVE) in the child and
        set_pte_at the child's maybe_mkwrite(pte_mkdirty()) PTE. The parent's PTE and folio
        stay as they were (still exclusive, still writable)."""
        if prealloc is None:
            yield f"copy_present_ptes va {vpn:#x}: pfn {folio.pfn} may be pinned: copy_present_page -EAGAIN"
            return "EAGAIN", None
        new = prealloc
        new.data = folio.data
        self.folio_add_new_anon_rmap_now(new, dst_vma, vpn)
        child = Pte(new.pfn, write=dst_vma.writable, dirty=True, young=True, soft_dirty=True)
        dst.ptes[vpn % self.m.ptrs_per_pte] = child
        yield (f"copy_present_page va {vpn:#x}: pfn {folio.pfn} may be pinned: copy "
               f"(v{folio.data}) into pfn {new.pfn}, set_pte_at(child) {fmt_pte(child)}")
        return 1, None

    # ------------------------------------------------------ page-table lookup ---------
    def pte_offset_map_lock(self, t: Task, mm: Mm, vpn: int, who: str):
        """mm/pgtable-generic.c __pte_offset_map_lock: read the PMD locklessly (under RCU); a
        none PMD gives NULL, which every caller treats as "the PTE changed, retry the fault";
        else take the table's PTL and re-check pmd_same; a changed PMD drops the lock and
        looks again. Returns the table with its PTL held, or None."""
        idx = vpn // self.m.ptrs_per_pte
        while True:
            table = mm.pmd[idx]
            if table is None:
                yield f"{who}: pte_offset_map_lock va {vpn:#x}: pmd_none -> NULL"
                return None
            lock = table.ptl
            if lock.owner is not None:
                yield Wait(lambda: lock.owner is None, f"spins on {lock.name}")
            lock.owner = t.tid
            t.locks += 1
            if mm.pmd[idx] is table:
                yield f"{who}: pte_offset_map_lock va {vpn:#x}: {lock.name}"
                return table
            lock.owner = None
            t.locks -= 1
            yield (f"{who}: pte_offset_map_lock va {vpn:#x}: !pmd_same after spin_lock, "
                   "unlock, again")

    def pte_alloc(self, t: Task, vpn: int, mm: Mm | None = None):
        """include/linux/mm.h pte_alloc: a lockless pmd_none(*pmd) test; only if it is none,
        mm/memory.c __pte_alloc: pte_alloc_one (before any lock), pmd_install (under the PMD
        lock, mm->page_table_lock here: "Has another populated it ?"), and pte_free of our
        table if another did. A present PMD costs no step of its own: the read is folded into
        the caller's next step (pte_offset_map_lock reads the PMD again)."""
        m = self.m
        mm = t.mm if mm is None else mm
        pmd_index = vpn // m.ptrs_per_pte
        if mm.pmd[pmd_index] is not None:
            return
        new = m.alloc_pte_table(mm.mm_id, pmd_index)
        yield (f"pte_alloc: pmd_none(*pmd) va {vpn:#x} = 1 (lockless) -> __pte_alloc: "
               f"pte_alloc_one table {new.tid}")
        installed = yield from self.pmd_install(t, mm, pmd_index, new)
        if not installed:
            m.free_pte_table(new)
            yield f"__pte_alloc: pte_free(table {new.tid}): another populated the PMD"

    def pmd_install(self, t: Task, mm: Mm, pmd_index: int, new: PteTable):
        """mm/memory.c pmd_install: under pmd_lock, populate the PMD only if it is still none.
        Returns whether ``new`` was installed."""
        yield from self.spin_lock(t, mm.page_table_lock, "pmd_install: pmd_lock")
        installed = mm.pmd[pmd_index] is None
        if installed:
            mm.pmd[pmd_index] = new
            note = f"pmd_none = 1, pmd_populate table {new.tid}"
        else:
            note = f"pmd_none = 0 (table {mm.pmd[pmd_index].tid} installed meanwhile)"
        yield from self.spin_unlock(t, mm.page_table_lock, f"pmd_install: {note}, unlock")
        return installed

    # ----------------------------------------------------------------- faults ---------
    def do_user_addr_fault(self, t: Task, vpn: int, write: bool):
        """arch/x86/mm/fault.c do_user_addr_fault (v6.12): a user fault first tries the per-VMA
        lock (lock_vma_under_rcu); on success, access_error, handle_mm_fault with
        FAULT_FLAG_VMA_LOCK, vma_end_read. Without the VMA lock, or when the fault returns
        VM_FAULT_RETRY (the VMA lock dropped), lock_mm_and_find_vma takes mmap_lock for read
        and the fault runs again under it. Left out: the fault's retry with FAULT_FLAG_TRIED
        after filemap_fault drops mmap_lock for I/O (the model never drops it there)."""
        mm = t.mm
        rw = "W" if write else "R"
        vma = yield from self.lock_vma_under_rcu(t, mm, vpn)
        if vma is not None:
            if write and not vma.writable:
                self.vma_end_read_now(t, vma)
                t.result = "SIGSEGV"
                yield Last(f"bad_area_access_error: va {vpn:#x} {rw}: vma_end_read, SIGSEGV")
                return
            ret = yield from self.handle_mm_fault(t, vma, vpn, write=write, vma_lock=True)
            if ret != RETRY:
                self.vma_end_read_now(t, vma)
                yield Last(f"do_user_addr_fault: va {vpn:#x} {rw} done under the VMA lock, "
                           f"vma_end_read{_ret_note(ret)}")
                return
        # lock_mm_and_find_vma
        yield from self.down_read(t, mm.mmap_lock, f"lock_mm_and_find_vma: mmap_read_lock (va {vpn:#x} {rw})")
        vma = mm.find_vma(vpn)
        if vma is None or (write and not vma.writable):
            t.result = "SIGSEGV"
            yield from self.up_read(t, mm.mmap_lock, f"bad_area: SIGSEGV va {vpn:#x}, mmap_read_unlock", last=True)
            return
        ret = yield from self.handle_mm_fault(t, vma, vpn, write=write)
        yield from self.up_read(t, mm.mmap_lock, f"handle_mm_fault done{_ret_note(ret)}: mmap_read_unlock", last=True)

    def lock_vma_under_rcu(self, t: Task, mm: Mm, vpn: int):
        """mm/memory.c lock_vma_under_rcu (v6.12): mas_walk finds the VMA under RCU and
        vma_start_read tries its lock (one step here: a writer write-locks a VMA before it
        detaches or changes it, so a walk that raced with one only retries); a VMA detached
        meanwhile is dropped and the walk retried; an address outside it or a failed
        vma_start_read gives NULL (VMA_LOCK_ABORT: fall back to mmap_lock). Returns the VMA
        read-locked, or None."""
        while True:
            vma = mm.find_vma(vpn)
            if vma is None:
                yield f"lock_vma_under_rcu: mas_walk va {vpn:#x} -> none, fall back to mmap_lock"
                return None
            if not self.vma_start_read_now(t, vma):
                yield (f"lock_vma_under_rcu: mas_walk va {vpn:#x} -> vma{vma.vid}: "
                       "vma_start_read(vma{0}) failed (write-locked), fall back to mmap_lock").format(vma.vid)
                return None
            if vma.detached:
                self.vma_end_read_now(t, vma)
                yield f"lock_vma_under_rcu: vma{vma.vid} detached meanwhile, vma_end_read, retry"
                continue
            if not vma.contains(vpn):
                self.vma_end_read_now(t, vma)
                yield f"lock_vma_under_rcu: vma{vma.vid} no longer covers va {vpn:#x}, vma_end_read, fall back"
                return None
            yield f"lock_vma_under_rcu: mas_walk va {vpn:#x} -> vma{vma.vid}: vma_start_read(vma{vma.vid})"
            return vma

    def handle_mm_fault(self, t: Task, vma: Vma, vpn: int, write: bool = False,
                        unshare: bool = False, vma_lock: bool = False):
        """mm/memory.c handle_mm_fault (entered with mmap_lock or the VMA lock held, as
        ``vma_lock`` says): sanitize_fault_flags ("FAULT_FLAG_UNSHARE only applies to COW
        mappings": dropped on a shared one), then __handle_mm_fault -> handle_pte_fault.
        Returns 0, NOPAGE, RETRY (the VMA lock was dropped: retry under mmap_lock) or
        SIGSEGV. Left out: THP and hugetlb, the p4d/pud/pmd allocation (the model has one PMD
        page per mm), memcg OOM and fault accounting."""
        if unshare:
            assert not write, "WARN_ON_ONCE(*flags & FAULT_FLAG_WRITE)"
            if vma.shared:  # !is_cow_mapping
                unshare = False
        return (yield from self.handle_pte_fault(t, vma, vpn, write, unshare, vma_lock))

    def handle_pte_fault(self, t: Task, vma: Vma, vpn: int, write: bool, unshare: bool = False,
                         vma_lock: bool = False):
        """mm/memory.c handle_pte_fault. Lockless: pmd_none(*pmd), then (pte_offset_map_rw_nolock)
        ptep_get_lockless, one step that shows both reads. No PTE -> do_pte_missing. Else take
        the PTL and re-check pte_same (in that step): changed -> unlock and return (the access
        retries). A write or unshare to a read-only PTE -> do_wp_page (PTL held); else
        pte_mkdirty for a write, pte_mkyoung, ptep_set_access_flags (arch/x86/mm/pgtable.c:
        writes the PTE only if it changed and the fault is a write, never flushes; the
        spurious-fault flush is a no-op on x86)."""
        m = self.m
        mm = t.mm
        table, slot = m.pte_lookup(mm, vpn)
        rw = "W" if write else ("unshare" if unshare else "R")
        if table is None:
            orig = None
            yield f"handle_pte_fault: va {vpn:#x} {rw}: pmd_none(*pmd) = 1 (lockless)"
        else:
            orig = table.ptes[slot]
            yield (f"handle_pte_fault: va {vpn:#x} {rw}: pmd -> table {table.tid}, "
                   f"ptep_get_lockless = {fmt_pte(orig)}")
        if orig is not None and not orig.present:
            return (yield from self.do_swap_page(t, vma, vpn, write, orig, unshare, vma_lock))
        if orig is None:
            return (yield from self.do_pte_missing(t, vma, vpn, write, vma_lock))
        same = yield from self.spin_lock_and(
            t, table.ptl, lambda: table.ptes[slot] == orig,
            lambda ok: f"handle_pte_fault: spin_lock {table.ptl.name}, pte_same(orig) = {int(ok)}")
        if not same:
            yield from self.spin_unlock(t, table.ptl, "handle_pte_fault: PTE changed, unlock (the access retries)")
            return 0
        if write:
            yield from self.pte_table_flush_check(t, t.mm, table)  # generation variants only
        if (write or unshare) and not orig.write:
            return (yield from self.do_wp_page(t, vma, table, slot, vpn, orig, unshare, vma_lock))
        entry = orig._replace(young=True, dirty=orig.dirty or write,
                              soft_dirty=orig.soft_dirty or write)
        self.ptep_set_access_flags(table, slot, entry, write)
        yield from self.spin_unlock(t, table.ptl, "handle_pte_fault: ptep_set_access_flags, unlock")
        return 0

    def ptep_set_access_flags(self, table: PteTable, slot: int, entry: Pte, dirty: bool) -> bool:
        """arch/x86/mm/pgtable.c ptep_set_access_flags (PTL held): changed = !pte_same(*ptep,
        entry); set_pte only when changed && dirty ("On x86, the accessed and dirty bits are
        tracked by hardware"). So a read fault never writes the PTE: a D bit the hardware set
        after the fault's pte_same (a store through a refilled writable entry) is never
        overwritten with the clean value the fault read. Returns changed."""
        changed = table.ptes[slot] != entry
        if changed and dirty:
            table.ptes[slot] = entry
        return changed

    def do_pte_missing(self, t: Task, vma: Vma, vpn: int, write: bool, vma_lock: bool):
        """mm/memory.c do_pte_missing: anonymous VMA -> do_anonymous_page, else do_fault. (An
        unshare fault on a missing PTE is a read fault: GUP only unshares a present page.)"""
        if vma.file is None:
            return (yield from self.do_anonymous_page(t, vma, vpn, write, vma_lock))
        return (yield from self.do_fault(t, vma, vpn, write, vma_lock))

    def vmf_anon_prepare(self, t: Task, vma: Vma, vma_lock: bool):
        """mm/memory.c __vmf_anon_prepare: nothing if the VMA has an anon_vma; under the
        per-VMA lock, __anon_vma_prepare needs mmap_lock too ("not safe to do with only the
        per-VMA lock held"): mmap_read_trylock, or drop the VMA lock and return
        VM_FAULT_RETRY. Returns 0 or RETRY."""
        if vma.anon_vma is not None:
            return 0
        mm = t.mm
        if vma_lock:
            if mm.mmap_lock.writer is not None:
                self.vma_end_read_now(t, vma)
                yield "vmf_anon_prepare: mmap_read_trylock failed, vma_end_read: VM_FAULT_RETRY"
                return RETRY
            mm.mmap_lock.readers.append(t.tid)
            yield "vmf_anon_prepare: mmap_read_trylock"
        yield from self.anon_vma_prepare(t, vma)
        if vma_lock:
            yield from self.up_read(t, mm.mmap_lock, "vmf_anon_prepare: mmap_read_unlock")
        return 0

    def do_fault(self, t: Task, vma: Vma, vpn: int, write: bool, vma_lock: bool = False):
        """mm/memory.c do_fault: read -> do_read_fault, write to a private mapping ->
        do_cow_fault, write to a shared one -> do_shared_fault. (The filesystem has ->fault
        and ->map_pages, so vmf_can_call_fault never asks for a retry under the VMA lock.)"""
        if not write:
            return (yield from self.do_read_fault(t, vma, vpn))
        if not vma.shared:
            return (yield from self.do_cow_fault(t, vma, vpn, vma_lock))
        return (yield from self.do_shared_fault(t, vma, vpn))

    def do_read_fault(self, t: Task, vma: Vma, vpn: int):
        """mm/memory.c do_read_fault: __do_fault (folio locked, one ref), finish_fault,
        folio_unlock; the ref is dropped if no PTE was installed. In a private mapping the
        page-cache folio is mapped read-only (vm_page_prot of a COW mapping has no write bit).
        Fault-around is left out."""
        folio = yield from self.filemap_fault(t, vma, vma.file_index(vpn))
        ret = yield from self.finish_fault(t, vma, vpn, folio, write=False)
        self.folio_unlock_now(t, folio)
        if ret == NOPAGE:
            self.folio_put_now(folio)
        yield f"do_read_fault: folio_unlock(pfn {folio.pfn}){' + folio_put' if ret == NOPAGE else ''}"
        return ret

    def do_cow_fault(self, t: Task, vma: Vma, vpn: int, vma_lock: bool = False):
        """mm/memory.c do_cow_fault: vmf_anon_prepare; folio_prealloc the copy; __do_fault
        (the page-cache folio, locked, one ref); copy_mc_user_highpage; finish_fault maps the
        copy (folio_add_new_anon_rmap, maybe_mkwrite(pte_mkdirty)); unlock_page + put_page of
        the page-cache folio; the copy is released if no PTE was installed."""
        ret = yield from self.vmf_anon_prepare(t, vma, vma_lock)
        if ret:
            return ret
        m = self.m
        new = m.alloc_folio()
        yield f"do_cow_fault: folio_prealloc pfn {new.pfn}"
        folio = yield from self.filemap_fault(t, vma, vma.file_index(vpn))
        new.data = folio.data
        yield f"do_cow_fault: copy_mc_user_highpage pfn {folio.pfn} (v{folio.data}) -> pfn {new.pfn}"
        ret = yield from self.finish_fault(t, vma, vpn, new, write=True)
        self.folio_unlock_now(t, folio)
        self.folio_put_now(folio)
        yield f"do_cow_fault: unlock_page + put_page(pfn {folio.pfn})"
        if ret == NOPAGE:
            self.folio_put_now(new)
            yield f"do_cow_fault: PTE changed, folio_put(pfn {new.pfn})"
        return ret

    def do_shared_fault(self, t: Task, vma: Vma, vpn: int):
        """mm/memory.c do_shared_fault: __do_fault; with ->page_mkwrite, folio_unlock then
        do_page_mkwrite (returns locked, PG_dirty set); finish_fault; fault_dirty_shared_page."""
        folio = yield from self.filemap_fault(t, vma, vma.file_index(vpn))
        self.folio_unlock_now(t, folio)
        yield f"do_shared_fault: folio_unlock(pfn {folio.pfn}) before page_mkwrite"
        ok = yield from self.filemap_page_mkwrite(t, vma, folio)
        if not ok:
            self.folio_put_now(folio)
            yield f"do_shared_fault: page_mkwrite NOPAGE, folio_put(pfn {folio.pfn})"
            return NOPAGE
        ret = yield from self.finish_fault(t, vma, vpn, folio, write=True)
        if ret == NOPAGE:
            self.folio_unlock_now(t, folio)
            self.folio_put_now(folio)
            yield f"do_shared_fault: PTE changed, folio_unlock + folio_put(pfn {folio.pfn})"
            return ret
        yield from self.fault_dirty_shared_page(t, folio)
        return 0

    def finish_fault(self, t: Task, vma: Vma, vpn: int, folio: Folio, write: bool):
        """mm/memory.c finish_fault -> set_pte_range. pte_alloc if the PMD is none (the
        prealloc_pte that __do_fault makes before locking the folio is allocated here
        instead); pte_offset_map_lock (NULL -> VM_FAULT_NOPAGE); "Re-check under ptl":
        vmf_pte_changed -> NOPAGE. Else the fault's reference becomes the PTE's and
        set_pte_range: a COW (write, private) folio_add_new_anon_rmap, else
        folio_add_file_rmap_ptes; then set_ptes with mk_pte(vm_page_prot) (read-only in a
        write-notify shared VMA and in any private one) or maybe_mkwrite(pte_mkdirty()) for a
        write. The rmap add and the PTE store are one step: both under the PTL."""
        m = self.m
        mm = t.mm
        yield from self.pte_alloc(t, vpn)
        table = yield from self.pte_offset_map_lock(t, mm, vpn, "finish_fault")
        if table is None:
            return NOPAGE
        slot = vpn % m.ptrs_per_pte
        if table.ptes[slot] is not None:
            yield from self.spin_unlock(t, table.ptl, "finish_fault: vmf_pte_changed, unlock")
            return NOPAGE
        cow = write and not vma.shared
        if cow:
            self.folio_add_new_anon_rmap_now(folio, vma, vpn)
            what = "folio_add_new_anon_rmap"
        else:
            self.folio_add_file_rmap_ptes_now(folio)
            what = "folio_add_file_rmap_ptes"
        pte = Pte(folio.pfn, write=write and vma.writable, dirty=write, young=True,
                  soft_dirty=write)
        table.ptes[slot] = pte
        yield f"set_pte_range: {what}(pfn {folio.pfn}) + set_ptes va {vpn:#x} {fmt_pte(pte)}"
        yield from self.spin_unlock(t, table.ptl, "finish_fault: pte_unmap_unlock")
        return 0

    def fault_dirty_shared_page(self, t: Task, folio: Folio):
        """mm/memory.c fault_dirty_shared_page: folio_mark_dirty, folio_unlock
        (balance_dirty_pages_ratelimited is left out)."""
        self.folio_mark_dirty_now(folio)
        self.folio_unlock_now(t, folio)
        yield f"fault_dirty_shared_page: folio_mark_dirty + folio_unlock(pfn {folio.pfn})"

    def do_wp_page(self, t: Task, vma: Vma, table: PteTable, slot: int, vpn: int, orig: Pte,
                   unshare: bool = False, vma_lock: bool = False):
        """mm/memory.c do_wp_page (entered with the PTL held; handles FAULT_FLAG_WRITE and
        FAULT_FLAG_UNSHARE). vm_normal_page (none for the zero page). Shared mapping ->
        wp_page_shared. Private: "If we encounter a page that is marked exclusive, we must
        reuse the page without further checks": an anon folio that is PG_anon_exclusive or
        passes wp_can_reuse_anon_folio is marked exclusive, and then an unshare fault is done
        (unlock) and a write fault reuses it (wp_page_reuse). Otherwise "we need to copy":
        folio_get, pte_unmap_unlock, wp_page_copy. Left out: uffd-wp."""
        m = self.m
        folio = None if orig.special else m.frames[orig.pfn]
        if vma.shared:
            yield from self.wp_page_shared(t, vma, table, slot, vpn, orig, folio)
            return 0
        reuse = folio is not None and folio.anon and self.wp_can_reuse_anon_folio(t, folio, vma)
        return (yield from self.wp_reuse_or_copy(t, vma, table, slot, vpn, orig, folio, reuse,
                                                 unshare, vma_lock))

    def wp_reuse_or_copy(self, t: Task, vma: Vma, table: PteTable, slot: int, vpn: int,
                         orig: Pte, folio: Folio | None, reuse: bool, unshare: bool,
                         vma_lock: bool):
        """mm/memory.c do_wp_page after its reuse decision (PTL held): a reused folio is marked exclusive,
        then an unshare fault is done (unlock) and a write fault reuses it (wp_page_reuse);
        otherwise folio_get, pte_unmap_unlock, wp_page_copy."""
        if reuse:
            folio.anon_exclusive = True  # SetPageAnonExclusive (a no-op if it was set)
            if unshare:
                yield from self.spin_unlock(t, table.ptl, f"do_wp_page: unshare: pfn {folio.pfn} is exclusive, nothing to do, unlock")
                return 0
            yield from self.wp_page_reuse(t, vma, table, slot, vpn, orig)
            return 0
        note = "zero page"
        if folio is not None:
            folio.refcount += 1
            note = f"folio_get(pfn {folio.pfn}) -> refcount {folio.refcount}"
        yield from self.spin_unlock(t, table.ptl, f"do_wp_page: copy needed: {note}, pte_unmap_unlock")
        return (yield from self.wp_page_copy(t, vma, vpn, orig, folio, unshare, vma_lock))

    def wp_can_reuse_anon_folio(self, t: Task, folio: Folio, vma: Vma) -> bool:
        """The reuse decision of do_wp_page for an anon folio, PTL held, one atomic step:
        PageAnonExclusive (do_wp_page's own test, folded in here so that an older reuse rule is
        one override), else mm/memory.c wp_can_reuse_anon_folio (v6.12, small folio): "KSM
        doesn't necessarily raise the folio refcount" / refcount > 3 quick reject; refcount >
        1 -> no; folio_trylock (fails -> no); refcount != 1 -> no; folio_move_anon_rmap (the
        folio now belongs to this VMA's anon_vma); folio_unlock. Left out: the swap cache
        (folio_free_swap) and lru_add_drain (no LRU batches in the model)."""
        if folio.anon_exclusive:
            return True
        if folio.ksm:   # "KSM doesn't necessarily raise the folio refcount"
            return False
        if folio.refcount > 3:
            return False
        if folio.refcount > 1:
            return False
        if folio.locked is not None:  # folio_trylock
            return False
        if folio.refcount != 1:
            return False
        self.folio_move_anon_rmap_now(folio, vma)
        return True

    def wp_page_reuse(self, t: Task, vma: Vma, table: PteTable, slot: int, vpn: int, orig: Pte):
        """mm/memory.c wp_page_reuse (PTL held): entry = maybe_mkwrite(pte_mkdirty(
        pte_mkyoung(orig))) via ptep_set_access_flags: a permission upgrade, so no TLB flush.
        (x86 pte_mkdirty sets D and soft-dirty; maybe_mkwrite sets W only with VM_WRITE.)
        Unlocks the PTL."""
        table.ptes[slot] = orig._replace(write=vma.writable, dirty=True, young=True, soft_dirty=True)
        yield f"wp_page_reuse: va {vpn:#x} -> {fmt_pte(table.ptes[slot])} (no flush)"
        yield from self.spin_unlock(t, table.ptl, "wp_page_reuse: pte_unmap_unlock")

    def wp_page_shared(self, t: Task, vma: Vma, table: PteTable, slot: int, vpn: int, orig: Pte,
                       folio: Folio):
        """mm/memory.c wp_page_shared: folio_get; with ->page_mkwrite: unlock the PTL,
        do_page_mkwrite (folio locked, PG_dirty set), finish_mkwrite_fault
        (pte_offset_map_lock, NULL -> NOPAGE; give up unless pte_same, else wp_page_reuse);
        then fault_dirty_shared_page and folio_put."""
        m = self.m
        folio.refcount += 1
        yield from self.spin_unlock(t, table.ptl, f"wp_page_shared: folio_get(pfn {folio.pfn}), pte_unmap_unlock")
        ok = yield from self.filemap_page_mkwrite(t, vma, folio)
        if not ok:
            self.folio_put_now(folio)
            yield f"wp_page_shared: page_mkwrite NOPAGE, folio_put(pfn {folio.pfn})"
            return
        # finish_mkwrite_fault
        table = yield from self.pte_offset_map_lock(t, t.mm, vpn, "finish_mkwrite_fault")
        slot = vpn % m.ptrs_per_pte
        if table is None or table.ptes[slot] != orig:
            if table is not None:
                yield from self.spin_unlock(t, table.ptl, "finish_mkwrite_fault: !pte_same, unlock")
            self.folio_unlock_now(t, folio)
            self.folio_put_now(folio)
            yield f"wp_page_shared: NOPAGE: folio_unlock + folio_put(pfn {folio.pfn})"
            return
        yield from self.wp_page_reuse(t, vma, table, slot, vpn, orig)
        yield from self.fault_dirty_shared_page(t, folio)
        self.folio_put_now(folio)
        yield f"wp_page_shared: folio_put(pfn {folio.pfn})"

    def wp_page_copy(self, t: Task, vma: Vma, vpn: int, orig: Pte, old: Folio | None,
                     unshare: bool = False, vma_lock: bool = False):
        """mm/memory.c wp_page_copy ("Called with mmap_lock locked and the old page referenced,
        but without the ptl held"): vmf_anon_prepare; allocate and copy (zeroed for the zero
        page) outside the lock; pte_offset_map_lock and "Re-check the pte - we dropped the
        lock" (pte_same); then "Clear the pte entry and flush it first, before updating the pte
        with the new entry" (ptep_clear_flush), folio_add_new_anon_rmap, set_pte_at (an unshare
        keeps the PTE read-only, with the old soft-dirty bit; a write gets
        maybe_mkwrite(pte_mkdirty)), and only then folio_remove_rmap_pte of the old folio;
        unlock. Finally folio_put of the PTE's old reference (or of the unused copy) and of
        the reference do_wp_page took."""
        m = self.m
        ret = yield from self.vmf_anon_prepare(t, vma, vma_lock)
        if ret:
            if old is not None:
                self.folio_put_now(old)
                yield f"wp_page_copy: {ret}, folio_put(pfn {old.pfn})"
            return ret
        new = m.alloc_folio()
        new.data = 0 if old is None else old.data
        yield f"wp_page_copy: alloc pfn {new.pfn}, copy {'zero page' if old is None else f'pfn {old.pfn} (v{old.data})'}"
        table = yield from self.pte_offset_map_lock(t, t.mm, vpn, "wp_page_copy")
        slot = vpn % m.ptrs_per_pte
        put_first = new
        if table is not None and table.ptes[slot] != orig:
            yield from self.spin_unlock(t, table.ptl, "wp_page_copy: !pte_same, unlock")
        elif table is not None:
            yield from self.ptep_clear_flush(
                t, t.mm, table, slot, vpn,
                f"wp_page_copy: pte_same; ptep_clear_flush va {vpn:#x}: clear")
            self.folio_add_new_anon_rmap_now(new, vma, vpn)
            if unshare:
                pte = Pte(new.pfn, write=False, dirty=False, young=True,
                          soft_dirty=orig.soft_dirty)
            else:
                pte = Pte(new.pfn, write=vma.writable, dirty=True, young=True, soft_dirty=True)
            table.ptes[slot] = pte
            yield f"wp_page_copy: folio_add_new_anon_rmap + set_pte_at va {vpn:#x} {fmt_pte(pte)}"
            if old is not None:
                yield from self.folio_remove_rmap_ptes(t, old, vma, "wp_page_copy: ")
            yield from self.spin_unlock(t, table.ptl, "wp_page_copy: pte_unmap_unlock")
            put_first = old  # "Free the old page..": the PTE's reference
        if put_first is not None:
            self.folio_put_now(put_first)
            yield f"wp_page_copy: folio_put(pfn {put_first.pfn})"
        if old is not None:
            self.folio_put_now(old)
            yield f"wp_page_copy: folio_put(pfn {old.pfn}) (do_wp_page's reference)"
        return 0

    def do_anonymous_page(self, t: Task, vma: Vma, vpn: int, write: bool,
                          vma_lock: bool = False):
        """mm/memory.c do_anonymous_page: pte_alloc; a read maps the shared zero page (special
        PTE, no rmap, no reference); a write does vmf_anon_prepare, allocates a zeroed folio,
        and with VM_WRITE makes the entry pte_mkwrite(pte_mkdirty()). Then
        pte_offset_map_lock (NULL: return, the access retries) and, giving up if
        vmf_pte_changed, folio_add_new_anon_rmap(RMAP_EXCLUSIVE) and set_ptes."""
        m = self.m
        yield from self.pte_alloc(t, vpn)
        folio = None
        if write:
            ret = yield from self.vmf_anon_prepare(t, vma, vma_lock)
            if ret:
                return ret
            folio = m.alloc_folio()
            yield f"do_anonymous_page: alloc_anon_folio pfn {folio.pfn} (zeroed)"
        table = yield from self.pte_offset_map_lock(t, t.mm, vpn, "do_anonymous_page")
        slot = vpn % m.ptrs_per_pte
        if table is None or table.ptes[slot] is not None:
            if table is not None:
                yield from self.spin_unlock(t, table.ptl, "do_anonymous_page: vmf_pte_changed, unlock")
            if folio is not None:
                self.folio_put_now(folio)
                yield f"do_anonymous_page: release pfn {folio.pfn}"
            return 0
        if folio is None:
            pte = Pte(m.zero_pfn, write=False, dirty=False, young=True, special=True)
            note = "zero page"
        else:
            self.folio_add_new_anon_rmap_now(folio, vma, vpn)
            pte = Pte(folio.pfn, write=vma.writable, dirty=vma.writable, young=True,
                      soft_dirty=vma.writable)
            note = f"folio_add_new_anon_rmap pfn {folio.pfn}"
        table.ptes[slot] = pte
        yield f"do_anonymous_page: {note} + set_ptes va {vpn:#x} {fmt_pte(pte)}"
        yield from self.spin_unlock(t, table.ptl, "do_anonymous_page: pte_unmap_unlock")
        return 0

    # ----------------------------------------------------------------- swap-in ---------
    def do_swap_page(self, t: Task, vma: Vma, vpn: int, write: bool, orig, unshare: bool = False,
                     vma_lock: bool = False):
        """mm/memory.c do_swap_page for a genuine swap entry (entered from handle_pte_fault
        without the PTL; the swap-cache bypass of SWP_SYNCHRONOUS_IO devices is left out).

        swap_cache_get_folio, else swapin_readahead -> read_swap_cache_async (None: the slot
        was freed meanwhile, "Back out if somebody else faulted in this pte"); folio_lock;
        the folio must still be the slot's swap-cache folio; ksm_might_need_to_copy (a private
        copy if its index or anon_vma root is not this VMA's); under the PTL give up unless
        pte_same. exclusive = pte_swp_exclusive(orig), or true for the copy ("a fresh page
        that is not exposed to the swapcache"). swap_free; should_try_to_free_swap
        (a write fault on a folio nobody else references) -> folio_free_swap. The new PTE is
        mk_pte(vm_page_prot): read-only, clean, young, soft-dirty from the swap PTE; if the
        page is exclusive (or the folio's only reference is ours) and the VMA is writable
        and no soft-dirty write-protect is wanted, pte_mkwrite -- writable and CLEAN unless
        this is a write fault (then pte_mkdirty, and the write is done). folio_add_anon_rmap
        (RMAP_EXCLUSIVE then; folio_add_new_anon_rmap for a folio not yet anon, whose
        mapping is the root anon_vma unless exclusive), set_ptes, folio_unlock (and unlock and
        put the swap-cache folio after a copy); a write fault still pending goes to
        do_wp_page with the PTL held. Returns 0 (the access retries if nothing was mapped)."""
        m = self.m
        offset = orig.offset
        folio = yield from self.swap_cache_get_folio(t, offset)
        if folio is None:
            folio = yield from self.read_swap_cache_async(t, offset)
            if folio is None:
                yield "do_swap_page: swap entry freed under us: retry"
                return 0
        yield from self.folio_lock(t, folio, f"do_swap_page: folio_lock_or_retry(pfn {folio.pfn})")
        if not folio.swapcache or folio.swap != offset:
            self.folio_unlock_now(t, folio)
            self.folio_put_now(folio)
            yield f"do_swap_page: pfn {folio.pfn} left the swap cache: out_page, retry"
            return 0
        swapcache = folio
        # ksm_might_need_to_copy: a private copy when the swap-cache folio's index or anon_vma
        # root is not this VMA's (its rmap could not find this mapping)
        folio = yield from self.ksm_might_need_to_copy(t, swapcache, vma, vpn)
        table, slot = m.pte_lookup(t.mm, vpn)
        if table is None:
            self.do_swap_page_out_page(t, folio, swapcache)
            yield "do_swap_page: no PTE table: out_page"
            return 0
        yield from self.spin_lock(t, table.ptl, f"do_swap_page: pte_offset_map_lock va {vpn:#x}")
        if t.mm.pmd[vpn // m.ptrs_per_pte] is not table or table.ptes[slot] != orig:
            yield from self.spin_unlock(t, table.ptl, "do_swap_page: !pte_same: out_nomap, unlock")
            self.do_swap_page_out_page(t, folio, swapcache)
            yield f"do_swap_page: folio_unlock + folio_put(pfn {folio.pfn})"
            return 0
        # "We have a fresh page that is not exposed to the swapcache -> certainly exclusive."
        exclusive = orig.exclusive or folio is not swapcache
        self.swap_free(offset)
        freed = False
        if self.should_try_to_free_swap(folio, write):
            freed = yield from self.folio_free_swap(t, folio)
        pte = Pte(folio.pfn, write=False, dirty=False, young=True, soft_dirty=orig.soft_dirty)
        if exclusive or folio.refcount == 1:
            if vma.writable and not self.pte_needs_soft_dirty_wp(vma, pte):
                pte = pte._replace(write=True)
                if write:
                    pte = pte._replace(dirty=True, soft_dirty=True)
                    write = False
            exclusive = True  # rmap_flags |= RMAP_EXCLUSIVE
        if folio is not swapcache:  # "ksm created a completely new copy"
            self.folio_add_new_anon_rmap_now(folio, vma, vpn, True)
        elif folio.anon:  # folio_add_anon_rmap_ptes
            folio.mapcount += 1
            if exclusive:
                folio.anon_exclusive = True
        else:  # a folio read in just now: folio_add_new_anon_rmap(rmap_flags)
            self.folio_add_new_anon_rmap_now(folio, vma, vpn, exclusive)
        table.ptes[slot] = pte  # the lookup's (or the copy's allocation) reference becomes the PTE's
        self.folio_unlock_now(t, folio)
        if folio is not swapcache:
            self.folio_unlock_now(t, swapcache)
            self.folio_put_now(swapcache)
        yield (f"do_swap_page: swap_free(slot {offset}){', folio_free_swap' if freed else ''}, "
               f"folio_add_anon_rmap pfn {folio.pfn}{' exclusive' if exclusive else ''} + set_ptes "
               f"va {vpn:#x} {fmt_pte(pte)}, folio_unlock"
               f"{'' if folio is swapcache else f' + folio_unlock, folio_put(pfn {swapcache.pfn})'}")
        if write:
            return (yield from self.do_wp_page(t, vma, table, slot, vpn, pte, False, vma_lock))
        yield from self.spin_unlock(t, table.ptl, "do_swap_page: pte_unmap_unlock")
        return 0

    def do_swap_page_out_page(self, t: Task, folio: Folio, swapcache: Folio) -> None:
        """mm/memory.c do_swap_page's out_page/out_release: folio_unlock, folio_put; "if
        (folio != swapcache && swapcache)" the same for the swap-cache folio."""
        self.folio_unlock_now(t, folio)
        self.folio_put_now(folio)
        if folio is not swapcache:
            self.folio_unlock_now(t, swapcache)
            self.folio_put_now(swapcache)

    def should_try_to_free_swap(self, folio: Folio, write: bool) -> bool:
        """mm/memory.c should_try_to_free_swap: "If we want to map a page that's in the
        swapcache writable, we have to detect via the refcount if we're really the exclusive
        user": a write fault and folio_ref_count == 1 + nr_pages (ours and the swap cache's).
        Swap-full and mlock cases are left out."""
        return folio.swapcache and write and folio.refcount == 2

    def pte_needs_soft_dirty_wp(self, vma: Vma, pte: Pte) -> bool:
        """include/linux/mm.h pte_needs_soft_dirty_wp = vma_soft_dirty_enabled(vma) &&
        !pte_soft_dirty(pte); mm/internal.h vma_soft_dirty_enabled: "its tracking is enabled
        when the vma flags not set", !(vma->vm_flags & VM_SOFTDIRTY) (clear_refs 4 clears
        it). Then a page that is not soft-dirty is mapped read-only, and its first store
        faults to mark it."""
        return not vma.softdirty and not pte.soft_dirty

def _ret_note(ret) -> str:
    return f" ({ret})" if ret else ""



def fmt_pte(pte) -> str:
    if pte is None:
        return "none"
    if not pte.present:
        return f"swap slot {pte.offset}{' excl' if pte.exclusive else ''}"
    flags = ("W" if pte.write else "-") + ("D" if pte.dirty else "-") + ("S" if pte.soft_dirty else "")
    return f"pfn {pte.pfn} {flags}" + (" zero" if pte.special else "")
