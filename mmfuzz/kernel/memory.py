"""mm/memory.c: the zap path, page-table freeing and page faults (v6.12 structure; the
v6.14 PT_RECLAIM table freeing from MADV_DONTNEED is not modelled).

Left out everywhere here: mmu notifiers, rss counters, lazy MMU mode, uprobes, hugetlb, THP
PMDs, non-present PTEs other than swap entries (migration, device, uffd markers),
fault-around, the per-VMA lock (faults take mmap_lock for read, as lock_mm_and_find_vma does
when the VMA lock is not available).
"""

from __future__ import annotations

from ..model import Folio, Pte, PteTable, Vma, tlb_key
from .base import KernelBase, Task
from .mmu_gather import MmuGather

NOPAGE = "VM_FAULT_NOPAGE"


class Memory(KernelBase):
    # ------------------------------------------------------------------ zap -----------
    def zap_page_range_single(self, t: Task, vma: Vma, start: int, end: int):
        """mm/memory.c zap_page_range_single (v6.12): one mmu_gather for this VMA:
        tlb_gather_mmu, unmap_single_vma, tlb_finish_mmu."""
        tlb = yield from self.tlb_gather_mmu(t, t.mm)
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
            if t.mm.pmd[addr // p] is None:  # pmd_none_or_trans_huge_or_clear_bad
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
        mm = t.mm
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
        t.observed[tlb_key(t.mm.mm_id, vpn)] = self.m.clock
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
            m.revoke(t.mm.mm_id, vpn)
            self.pte_table_flush_deferred(t.mm, table)
            self.tlb_remove_tlb_entry(tlb, vpn)
            yield f"zap_present_ptes: ptep_get_and_clear_full va {vpn:#x} (zero page)"
            return force_flush, False
        folio = m.frames[ptent.pfn]
        return (yield from self.zap_present_folio_ptes(t, tlb, vma, folio, table, slot, vpn,
                                                       force_flush))

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
        m.revoke(t.mm.mm_id, vpn)
        self.pte_table_flush_deferred(t.mm, table)
        delay_rmap = False
        dirty_note = ""
        if not folio.anon:
            if old.dirty:
                self.folio_mark_dirty_now(folio)
                dirty_note = " dirty -> folio_mark_dirty"
                if self.tlb_delay_rmap(tlb):
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
    def free_pgtables(self, t: Task, tlb: MmuGather, vmas: list[Vma]):
        """mm/memory.c free_pgtables: "Hide vma from rmap and truncate_pagecache before freeing
        pgtables": unlink_file_vma under i_mmap_rwsem (write), then free_pgd_range with
        floor/ceiling from the neighbouring VMAs."""
        m = self.m
        for vma in vmas:
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

    # ----------------------------------------------------------------- faults ---------
    def handle_mm_fault(self, t: Task, vpn: int, write: bool):
        """arch/x86/mm/fault.c do_user_addr_fault -> lock_mm_and_find_vma (mmap_lock read) ->
        mm/memory.c handle_mm_fault -> handle_pte_fault."""
        mm = t.mm
        yield from self.down_read(t, mm.mmap_lock, f"do_user_addr_fault: mmap_read_lock (va {vpn:#x} {'W' if write else 'R'})")
        vma = mm.find_vma(vpn)
        if vma is None or (write and not vma.writable):
            t.result = "SIGSEGV"
            yield from self.up_read(t, mm.mmap_lock, f"bad_area: SIGSEGV va {vpn:#x}, mmap_read_unlock", last=True)
            return
        yield from self.handle_pte_fault(t, vma, vpn, write)
        yield from self.up_read(t, mm.mmap_lock, "handle_mm_fault done: mmap_read_unlock", last=True)

    def handle_pte_fault(self, t: Task, vma: Vma, vpn: int, write: bool):
        """mm/memory.c handle_pte_fault: lockless ptep_get_lockless; none -> do_pte_missing;
        else take the PTL, give up if the PTE changed, do_wp_page for a write to a read-only PTE,
        else ptep_set_access_flags (x86: writes the PTE if it changed, never flushes)."""
        m = self.m
        table, slot = m.pte_lookup(t.mm, vpn)
        orig = table.ptes[slot] if table is not None else None
        yield f"handle_pte_fault: ptep_get_lockless va {vpn:#x} = {fmt_pte(orig)}"
        if orig is not None and not orig.present:
            yield from self.do_swap_page(t, vma, vpn, write, orig)
            return
        if orig is None:
            if vma.file is None:
                yield from self.do_anonymous_page(t, vma, vpn, write)
            else:
                yield from self.do_fault(t, vma, vpn, write)
            return
        yield from self.spin_lock(t, table.ptl, "handle_pte_fault: PTL")
        if t.mm.pmd[vpn // m.ptrs_per_pte] is not table or table.ptes[slot] != orig:
            yield from self.spin_unlock(t, table.ptl, "handle_pte_fault: PTE changed, unlock (retry)")
            return
        if write:
            yield from self.pte_table_flush_check(t, t.mm, table)  # generation variants only
        if write and not orig.write:
            yield from self.do_wp_page(t, vma, table, slot, vpn, orig)
            return
        entry = orig._replace(young=True, dirty=orig.dirty or write,
                              soft_dirty=orig.soft_dirty or write)
        if entry != orig:
            table.ptes[slot] = entry
        yield from self.spin_unlock(t, table.ptl, "handle_pte_fault: ptep_set_access_flags, unlock")

    def pte_alloc(self, t: Task, vpn: int):
        """mm/memory.c __pte_alloc -> pmd_install: allocate a table, install it under the PMD lock
        (mm->page_table_lock) unless someone else did; free ours in that case."""
        m = self.m
        mm = t.mm
        pmd_index = vpn // m.ptrs_per_pte
        if mm.pmd[pmd_index] is not None:
            return
        yield from self.spin_lock(t, mm.page_table_lock, "pmd_install: pmd_lock")
        if mm.pmd[pmd_index] is None:
            mm.pmd[pmd_index] = m.alloc_pte_table(mm.mm_id, pmd_index)
            note = f"install PTE table {mm.pmd[pmd_index].tid}"
        else:
            note = "already installed"
        yield from self.spin_unlock(t, mm.page_table_lock, f"pmd_install: {note}, unlock")

    def do_fault(self, t: Task, vma: Vma, vpn: int, write: bool):
        """mm/memory.c do_fault: read -> do_read_fault, write to a shared mapping ->
        do_shared_fault (private file COW is not modelled)."""
        if not write:
            yield from self.do_read_fault(t, vma, vpn)
        elif vma.shared:
            yield from self.do_shared_fault(t, vma, vpn)
        else:
            raise NotImplementedError("do_cow_fault (private file mappings) is not modelled")

    def do_read_fault(self, t: Task, vma: Vma, vpn: int):
        """mm/memory.c do_read_fault: __do_fault (folio locked, one ref), finish_fault,
        folio_unlock; the ref is dropped if no PTE was installed. Fault-around is left out."""
        folio = yield from self.filemap_fault(t, vma, vma.file_index(vpn))
        ret = yield from self.finish_fault(t, vma, vpn, folio, write=False)
        self.folio_unlock_now(t, folio)
        if ret == NOPAGE:
            self.folio_put_now(folio)
        yield f"do_read_fault: folio_unlock(pfn {folio.pfn})"

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
            return
        ret = yield from self.finish_fault(t, vma, vpn, folio, write=True)
        if ret == NOPAGE:
            self.folio_unlock_now(t, folio)
            self.folio_put_now(folio)
            yield f"do_shared_fault: PTE changed, folio_unlock + folio_put(pfn {folio.pfn})"
            return
        yield from self.fault_dirty_shared_page(t, folio)

    def finish_fault(self, t: Task, vma: Vma, vpn: int, folio: Folio, write: bool):
        """mm/memory.c finish_fault -> set_pte_range: pte_alloc if needed; under the PTL, give
        up if the PTE is no longer none (vmf_pte_changed); else the fault's reference becomes
        the PTE's, folio_add_file_rmap_ptes then set_ptes: vm_page_prot (read-only in a
        write-notify VMA), or maybe_mkwrite(pte_mkdirty()) for a write. The rmap add and the
        PTE store are one step: both under the PTL and the folio lock."""
        m = self.m
        yield from self.pte_alloc(t, vpn)
        table, slot = m.pte_lookup(t.mm, vpn)
        yield from self.spin_lock(t, table.ptl, f"finish_fault: pte_offset_map_lock va {vpn:#x}")
        if t.mm.pmd[vpn // m.ptrs_per_pte] is not table or table.ptes[slot] is not None:
            yield from self.spin_unlock(t, table.ptl, "finish_fault: vmf_pte_changed, unlock")
            return NOPAGE
        self.folio_add_file_rmap_ptes_now(folio)
        pte = Pte(folio.pfn, write=write and vma.writable, dirty=write, young=True,
                  soft_dirty=write)
        table.ptes[slot] = pte
        yield f"set_pte_range: folio_add_file_rmap_ptes(pfn {folio.pfn}) + set_ptes va {vpn:#x} {fmt_pte(pte)}"
        yield from self.spin_unlock(t, table.ptl, "finish_fault: pte_unmap_unlock")
        return 0

    def fault_dirty_shared_page(self, t: Task, folio: Folio):
        """mm/memory.c fault_dirty_shared_page: folio_mark_dirty, folio_unlock
        (balance_dirty_pages_ratelimited is left out)."""
        self.folio_mark_dirty_now(folio)
        self.folio_unlock_now(t, folio)
        yield f"fault_dirty_shared_page: folio_mark_dirty + folio_unlock(pfn {folio.pfn})"

    def do_wp_page(self, t: Task, vma: Vma, table: PteTable, slot: int, vpn: int, orig: Pte):
        """mm/memory.c do_wp_page (entered with the PTL held): shared -> wp_page_shared; private
        anon: reuse an exclusive folio (wp_page_reuse), else copy (the zero page always)."""
        m = self.m
        if vma.shared:
            yield from self.wp_page_shared(t, vma, table, slot, vpn, orig)
            return
        folio = None if orig.special else m.frames[orig.pfn]
        if folio is not None and folio.anon and self.wp_can_reuse_anon_folio(folio, vma):
            yield from self.wp_page_reuse(t, table, slot, vpn, orig)
            return
        yield from self.spin_unlock(t, table.ptl, "do_wp_page: pte_unmap_unlock before copy")
        yield from self.wp_page_copy(t, vma, vpn, orig, folio)

    def wp_can_reuse_anon_folio(self, folio: Folio, vma: Vma) -> bool:
        """mm/memory.c wp_can_reuse_anon_folio, reduced to what the model has: reuse a folio
        that is PG_anon_exclusive (no fork, so no shared anon folios, no swap cache). A KSM
        folio is never exclusive (write_protect_page shared it), so it is copied, as
        folio_test_ksm makes mainline do."""
        return folio.anon_exclusive

    def wp_page_reuse(self, t: Task, table: PteTable, slot: int, vpn: int, orig: Pte):
        """mm/memory.c wp_page_reuse (PTL held): maybe_mkwrite(pte_mkdirty(pte_mkyoung(orig)))
        via ptep_set_access_flags: a permission upgrade, so no TLB flush. Unlocks the PTL."""
        table.ptes[slot] = orig._replace(write=True, dirty=True, young=True, soft_dirty=True)
        yield f"wp_page_reuse: va {vpn:#x} -> {fmt_pte(table.ptes[slot])} (no flush)"
        yield from self.spin_unlock(t, table.ptl, "wp_page_reuse: pte_unmap_unlock")

    def wp_page_shared(self, t: Task, vma: Vma, table: PteTable, slot: int, vpn: int, orig: Pte):
        """mm/memory.c wp_page_shared: folio_get; with ->page_mkwrite: unlock the PTL,
        do_page_mkwrite (folio locked, PG_dirty set), finish_mkwrite_fault (retake the PTL, give
        up unless pte_same, else wp_page_reuse); then fault_dirty_shared_page and folio_put."""
        m = self.m
        folio = m.frames[orig.pfn]
        folio.refcount += 1
        yield from self.spin_unlock(t, table.ptl, f"wp_page_shared: folio_get(pfn {folio.pfn}), pte_unmap_unlock")
        ok = yield from self.filemap_page_mkwrite(t, vma, folio)
        if not ok:
            self.folio_put_now(folio)
            yield f"wp_page_shared: page_mkwrite NOPAGE, folio_put(pfn {folio.pfn})"
            return
        # finish_mkwrite_fault
        yield from self.spin_lock(t, table.ptl, f"finish_mkwrite_fault: PTL va {vpn:#x}")
        if t.mm.pmd[vpn // m.ptrs_per_pte] is not table or table.ptes[slot] != orig:
            yield from self.spin_unlock(t, table.ptl, "finish_mkwrite_fault: !pte_same, unlock")
            self.folio_unlock_now(t, folio)
            self.folio_put_now(folio)
            yield f"finish_mkwrite_fault: folio_unlock + folio_put(pfn {folio.pfn})"
            return
        yield from self.wp_page_reuse(t, table, slot, vpn, orig)
        yield from self.fault_dirty_shared_page(t, folio)
        self.folio_put_now(folio)
        yield f"wp_page_shared: folio_put(pfn {folio.pfn})"

    def wp_page_copy(self, t: Task, vma: Vma, vpn: int, orig: Pte, old: Folio | None):
        """mm/memory.c wp_page_copy: allocate and copy outside the lock; under the PTL, give up
        unless pte_same; "Clear the pte entry and flush it first, before updating the pte with
        the new entry" (ptep_clear_flush), folio_add_new_anon_rmap, set_pte_at, remove the old
        folio's rmap; unlock; folio_put(old)."""
        m = self.m
        new = m.alloc_folio()
        new.data = 0 if old is None else old.data
        yield f"wp_page_copy: alloc pfn {new.pfn}, copy {'zero page' if old is None else f'pfn {old.pfn}'}"
        table, slot = m.pte_lookup(t.mm, vpn)
        if table is None:
            self.folio_put_now(new)
            yield "wp_page_copy: table gone, release new folio"
            return
        yield from self.spin_lock(t, table.ptl, f"wp_page_copy: PTL va {vpn:#x}")
        if t.mm.pmd[vpn // m.ptrs_per_pte] is not table or table.ptes[slot] != orig:
            yield from self.spin_unlock(t, table.ptl, "wp_page_copy: !pte_same, unlock")
            self.folio_put_now(new)
            yield f"wp_page_copy: release pfn {new.pfn}"
            return
        table.ptes[slot] = None
        m.revoke(t.mm.mm_id, vpn)
        yield f"wp_page_copy: ptep_clear_flush va {vpn:#x}: clear"
        yield from self.flush_tlb_page(t, t.mm, vpn)
        self.folio_add_new_anon_rmap_now(new, vma, vpn)
        table.ptes[slot] = Pte(new.pfn, write=vma.writable, dirty=True, young=True,
                               soft_dirty=True)
        yield f"wp_page_copy: folio_add_new_anon_rmap + set_pte_at va {vpn:#x} -> pfn {new.pfn}"
        if old is not None:
            yield from self.folio_remove_rmap_ptes(t, old, vma, "wp_page_copy: ")
        yield from self.spin_unlock(t, table.ptl, "wp_page_copy: pte_unmap_unlock")
        if old is not None:
            self.folio_put_now(old)
            yield f"wp_page_copy: folio_put(old pfn {old.pfn})"

    def do_anonymous_page(self, t: Task, vma: Vma, vpn: int, write: bool):
        """mm/memory.c do_anonymous_page: a read maps the shared zero page (special PTE, no rmap,
        no reference); a write allocates a zeroed folio, and under the PTL (giving up if the PTE
        is no longer none) folio_add_new_anon_rmap(RMAP_EXCLUSIVE) and set_ptes W+D."""
        m = self.m
        yield from self.pte_alloc(t, vpn)
        table, slot = m.pte_lookup(t.mm, vpn)
        folio = None
        if write:
            folio = m.alloc_folio()
            yield f"do_anonymous_page: alloc_anon_folio pfn {folio.pfn} (zeroed)"
        yield from self.spin_lock(t, table.ptl, f"do_anonymous_page: PTL va {vpn:#x}")
        if t.mm.pmd[vpn // m.ptrs_per_pte] is not table or table.ptes[slot] is not None:
            yield from self.spin_unlock(t, table.ptl, "do_anonymous_page: vmf_pte_changed, unlock")
            if folio is not None:
                self.folio_put_now(folio)
                yield f"do_anonymous_page: release pfn {folio.pfn}"
            return
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

    # ----------------------------------------------------------------- swap-in ---------
    def do_swap_page(self, t: Task, vma: Vma, vpn: int, write: bool, orig):
        """mm/memory.c do_swap_page for a genuine swap entry (entered from handle_pte_fault
        without the PTL; the swap-cache bypass of SWP_SYNCHRONOUS_IO devices is left out).

        swap_cache_get_folio, else swapin_readahead -> read_swap_cache_async (None: the slot
        was freed meanwhile, "Back out if somebody else faulted in this pte"); folio_lock;
        the folio must still be the slot's swap-cache folio; under the PTL give up unless
        pte_same. exclusive = pte_swp_exclusive(orig). swap_free; should_try_to_free_swap
        (a write fault on a folio nobody else references) -> folio_free_swap. The new PTE is
        mk_pte(vm_page_prot): read-only, clean, young, soft-dirty from the swap PTE; if the
        page is exclusive (or the folio's only reference is ours) and the VMA is writable
        and no soft-dirty write-protect is wanted, pte_mkwrite -- writable and CLEAN unless
        this is a write fault (then pte_mkdirty, and the write is done). folio_add_anon_rmap
        (RMAP_EXCLUSIVE then), set_ptes, folio_unlock; a write fault still pending goes to
        do_wp_page with the PTL held."""
        m = self.m
        offset = orig.offset
        folio = yield from self.swap_cache_get_folio(t, offset)
        if folio is None:
            folio = yield from self.read_swap_cache_async(t, offset)
            if folio is None:
                yield "do_swap_page: swap entry freed under us: retry"
                return
        yield from self.folio_lock(t, folio, f"do_swap_page: folio_lock_or_retry(pfn {folio.pfn})")
        if not folio.swapcache or folio.swap != offset:
            self.folio_unlock_now(t, folio)
            self.folio_put_now(folio)
            yield f"do_swap_page: pfn {folio.pfn} left the swap cache: out_page, retry"
            return
        table, slot = m.pte_lookup(t.mm, vpn)
        if table is None:
            self.folio_unlock_now(t, folio)
            self.folio_put_now(folio)
            yield "do_swap_page: no PTE table: out_page"
            return
        yield from self.spin_lock(t, table.ptl, f"do_swap_page: pte_offset_map_lock va {vpn:#x}")
        if t.mm.pmd[vpn // m.ptrs_per_pte] is not table or table.ptes[slot] != orig:
            yield from self.spin_unlock(t, table.ptl, "do_swap_page: !pte_same: out_nomap, unlock")
            self.folio_unlock_now(t, folio)
            self.folio_put_now(folio)
            yield f"do_swap_page: folio_unlock + folio_put(pfn {folio.pfn})"
            return
        exclusive = orig.exclusive
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
        if folio.anon:  # folio_add_anon_rmap_ptes
            folio.mapcount += 1
            if exclusive:
                folio.anon_exclusive = True
        else:  # a folio read in just now: folio_add_new_anon_rmap
            folio.anon = True
            folio.mapping = None
            folio.index = vpn
            folio.mapcount = 1
            folio.anon_exclusive = exclusive
        table.ptes[slot] = pte  # the lookup's reference becomes the PTE's
        self.folio_unlock_now(t, folio)
        yield (f"do_swap_page: swap_free(slot {offset}){', folio_free_swap' if freed else ''}, "
               f"folio_add_anon_rmap pfn {folio.pfn}{' exclusive' if exclusive else ''} + set_ptes "
               f"va {vpn:#x} {fmt_pte(pte)}, folio_unlock")
        if write:
            yield from self.do_wp_page(t, vma, table, slot, vpn, pte)
            return
        yield from self.spin_unlock(t, table.ptl, "do_swap_page: pte_unmap_unlock")

    def should_try_to_free_swap(self, folio: Folio, write: bool) -> bool:
        """mm/memory.c should_try_to_free_swap: "If we want to map a page that's in the
        swapcache writable, we have to detect via the refcount if we're really the exclusive
        user": a write fault and folio_ref_count == 1 + nr_pages (ours and the swap cache's).
        Swap-full and mlock cases are left out."""
        return folio.swapcache and write and folio.refcount == 2

    def pte_needs_soft_dirty_wp(self, vma: Vma, pte: Pte) -> bool:
        """include/linux/mm.h pte_needs_soft_dirty_wp = vma_soft_dirty_enabled(vma) &&
        !pte_soft_dirty(pte). VM_SOFTDIRTY is not modelled: tracking is taken as enabled
        (as after clear_refs 4), so a page swapped out clean of soft-dirty is mapped
        read-only and its first store faults to mark it."""
        return not pte.soft_dirty


def fmt_pte(pte) -> str:
    if pte is None:
        return "none"
    if not pte.present:
        return f"swap slot {pte.offset}{' excl' if pte.exclusive else ''}"
    flags = ("W" if pte.write else "-") + ("D" if pte.dirty else "-") + ("S" if pte.soft_dirty else "")
    return f"pfn {pte.pfn} {flags}" + (" zero" if pte.special else "")
