"""KSM: mm/ksm.c, ksmd merging two identical anonymous pages into one KSM page.

One ksmd pass here is cmp_and_merge_page finding its match in the unstable tree and calling
try_to_merge_two_pages: the scanned page is write-protected and becomes the KSM page
(try_to_merge_with_ksm_page with kpage NULL), then the tree page is write-protected, compared
(pages_identical) and its PTE replaced by one mapping the KSM page (replace_page).
write_protect_page is where the deferred-flush rule lives: it clears the PTE and flushes
("ptep_clear_flush") if "pte_write(entry) || pte_dirty(entry) || anon_exclusive ||
mm_tlb_flush_pending(mm)", and only then compares the refcount with the mapcount (GUP-fast
takes no lock, so the check must follow the flush).

The scanned mm is the world's first process and its anonymous VMA is taken as VM_MERGEABLE
(madvise(MADV_MERGEABLE) is not modelled); ``page`` (0 or 1) says which of its first two
pages is the scanned one, the other being the tree page. Left out: the stable and unstable
rbtrees, stable_node chains and ksm_max_page_sharing (the KSM folio keeps its rmap items in
``Folio.ksm_rmap``, the stable node's hlist), checksums (calc_checksum's "has it changed since
the last scan" filter), break_cow when the second merge fails (the first page stays a KSM
page with one mapping), the KSM zero page, large folios, mmu notifiers. A KSM folio is
reclaimed like any anon folio (rmap_walk_ksm finds its mappings); once it leaves the swap
cache the flag is lost, and do_swap_page's ksm_might_need_to_copy (below) copies where the
swapped-in folio's index or anon_vma root is not the faulting VMA's.
"""

from __future__ import annotations

from ..model import Folio, Pte, Vma
from ..ops import Choice, operation
from .base import KernelBase, Task

KSM_MM = 1


class Ksm(KernelBase):
    # State (mmfuzz.ops.STATE), from the kernel source:
    # mm/ksm.c find_mergeable_vma (vm_flags); write_protect_page: pte_write / pte_dirty /
    # PageAnonExclusive / mm_tlb_flush_pending -> ptep_clear_flush, folio_mapcount + 1 +
    # folio_test_swapcache against folio_ref_count, folio_try_share_anon_rmap_pte, pte_dirty ->
    # folio_mark_dirty, pte_mkclean(pte_wrprotect()); pages_identical; replace_page (the PTE maps
    # the KSM page: its rmap added, the old folio's removed); try_to_merge_one_page:
    # folio_mark_accessed, folio_mark_dirty; folio_get/folio_put around the merge
    @operation("ksmd", Choice("page", (0, 1), "which of the anon VMA's first two pages is scanned"),
               context="kthread",
               doc="ksmd: write_protect_page, pages_identical, replace_page on two anon pages",
               writes=("pte.map:anon", "pte.write:anon", "pte.dirty:anon",
                       "folio.mapcount:anon", "folio.refcount", "PG_anon_exclusive",
                       "folio.dirty:anon", "folio.lru"),
               reads=("vma", "pte.write:anon", "pte.dirty:anon", "tlb.deferred",
                      "folio.mapcount:anon", "folio.refcount", "PG_anon_exclusive", "swap",
                      "folio.data"))
    def ksmd(self, t: Task, page: int):
        """mm/ksm.c ksm_do_scan -> cmp_and_merge_page -> try_to_merge_two_pages, for the pages
        at the anon VMA's start + page (scanned) and start + 1 - page (tree page)."""
        m = self.m
        mm = m.mms.get(KSM_MM)
        spec = next((v for v in m.world["vmas"] if v["mm"] == KSM_MM and v["file"] is None
                     and v["end"] - v["start"] >= 2), None)
        if mm is None or spec is None:
            yield "ksm_do_scan: no mergeable VMA"
            return
        va, tree_va = spec["start"] + page, spec["start"] + 1 - page
        yield from self.down_read(t, mm.mmap_lock, f"scan_get_next_rmap_item: mmap_read_lock(mm{mm.mm_id})")
        folio = yield from self.ksm_get_mergeable_folio(t, mm, va)
        tree_folio = yield from self.ksm_get_mergeable_folio(t, mm, tree_va)
        yield from self.up_read(t, mm.mmap_lock, "scan_get_next_rmap_item: mmap_read_unlock")
        if folio is not None and tree_folio is not None and folio is not tree_folio:
            # unstable_tree_search_insert: memcmp_pages(page, tree_page) == 0 is the match
            same = folio.data == tree_folio.data
            yield (f"unstable_tree_search_insert: memcmp_pages(pfn {folio.pfn}, pfn "
                   f"{tree_folio.pfn}) {'== 0' if same else '!= 0'}")
            if same and not folio.ksm and not tree_folio.ksm:
                ok = yield from self.try_to_merge_with_ksm_page(t, mm, va, folio, None)
                if ok:
                    yield from self.try_to_merge_with_ksm_page(t, mm, tree_va, tree_folio, folio)
        for f in (folio, tree_folio):
            if f is not None:
                self.folio_put_now(f)
                yield f"cmp_and_merge_page: folio_put(pfn {f.pfn})"

    def ksm_get_mergeable_folio(self, t: Task, mm, vpn: int):
        """mm/ksm.c scan_get_next_rmap_item's folio_walk_start (PTL held): the normal anon
        folio mapped at ``vpn``, with a reference (folio_get), or None."""
        m = self.m
        table, slot = m.pte_lookup(mm, vpn)
        if table is None:
            return None
        yield from self.spin_lock(t, table.ptl, f"folio_walk_start: PTL va {vpn:#x}")
        pte = table.ptes[slot]
        folio = None
        if pte is not None and pte.present and not pte.special:
            frame = m.frames[pte.pfn]
            if isinstance(frame, Folio) and frame.anon:
                folio = frame
                folio.refcount += 1
        yield from self.spin_unlock(t, table.ptl, f"folio_walk_end: "
                                    f"{f'folio_get(pfn {folio.pfn})' if folio else 'no anon folio'}")
        return folio

    def try_to_merge_with_ksm_page(self, t: Task, mm, vpn: int, folio: Folio,
                                   kfolio: Folio | None):
        """mm/ksm.c try_to_merge_with_ksm_page: mmap_read_lock, find_mergeable_vma,
        try_to_merge_one_page, mmap_read_unlock. Returns True on success."""
        yield from self.down_read(t, mm.mmap_lock, f"try_to_merge_with_ksm_page: mmap_read_lock(mm{mm.mm_id})")
        vma = mm.find_vma(vpn)
        ok = False
        if vma is not None and vma.file is None:     # find_mergeable_vma
            ok = yield from self.try_to_merge_one_page(t, mm, vma, vpn, folio, kfolio)
        yield from self.up_read(t, mm.mmap_lock, f"try_to_merge_with_ksm_page: "
                                f"{'merged' if ok else 'failed'}, mmap_read_unlock")
        return ok

    def try_to_merge_one_page(self, t: Task, mm, vma: Vma, vpn: int, folio: Folio,
                              kfolio: Folio | None):
        """mm/ksm.c try_to_merge_one_page: folio_trylock (give up if locked); if
        write_protect_page succeeds: with no kpage the folio becomes a KSM folio
        (folio_set_stable_node, folio_mark_accessed, folio_mark_dirty "so that the ksm page
        would be swapped"), else if pages_identical, replace_page; folio_unlock."""
        if folio.locked is not None:
            yield f"try_to_merge_one_page: folio_trylock(pfn {folio.pfn}) failed"
            return False
        folio.locked = t.tid
        t.locks += 1
        yield f"try_to_merge_one_page: folio_trylock(pfn {folio.pfn})"
        ok = False
        orig = yield from self.write_protect_page(t, mm, vma, vpn, folio)
        if orig is not None:
            if kfolio is None:
                folio.ksm = True
                folio.ksm_rmap = [(mm.mm_id, vpn)]
                folio.referenced = True
                self.folio_mark_dirty_now(folio)
                yield f"try_to_merge_one_page: folio_set_stable_node(pfn {folio.pfn}): a KSM folio"
                ok = True
            else:
                same = folio.data == kfolio.data
                yield (f"pages_identical(pfn {folio.pfn} v{folio.data}, pfn {kfolio.pfn} "
                       f"v{kfolio.data}) = {int(same)}")
                if same:
                    ok = yield from self.replace_page(t, mm, vma, vpn, folio, kfolio, orig)
        self.folio_unlock_now(t, folio)
        yield f"try_to_merge_one_page: folio_unlock(pfn {folio.pfn})"
        return ok

    def ksm_write_protect_must_flush(self, mm, table, entry: Pte, anon_exclusive: bool) -> bool:
        """The test of mm/ksm.c write_protect_page: "if (pte_write(entry) || pte_dirty(entry)
        || anon_exclusive || mm_tlb_flush_pending(mm))" (b3a81d0841a9 added the last term;
        variants override only this)."""
        return entry.write or entry.dirty or anon_exclusive or self.ksm_needs_flush_pending(mm, table)

    def ksm_needs_flush_pending(self, mm, table) -> bool:
        """include/linux/mm_inline.h mm_tlb_flush_pending: someone may still have stale TLB
        entries for a PTE behind this PTL (valid because the caller holds it)."""
        return mm.tlb_flush_pending > 0

    def write_protect_page(self, t: Task, mm, vma: Vma, vpn: int, folio: Folio):
        """mm/ksm.c write_protect_page: page_vma_mapped_walk (PTL); give up unless the PTE is
        present and maps the folio. If the test says so: ptep_clear_flush (clear, then flush),
        then "Check that no O_DIRECT or similar I/O is in progress": mapcount + 1 + swapped
        must equal the refcount, else restore the PTE and fail; an exclusive page must be
        shared (folio_try_share_anon_rmap_pte: fails while pinned); folio_mark_dirty if the
        PTE was dirty; set_pte_at(wrprotect(mkclean(entry))). Returns the final PTE (the
        orig_pte replace_page compares against) or None."""
        m = self.m
        table, slot = m.pte_lookup(mm, vpn)
        if table is None:
            return None
        yield from self.spin_lock(t, table.ptl, f"write_protect_page: page_vma_mapped_walk PTL va {vpn:#x}")
        entry = table.ptes[slot]
        if mm.pmd[vpn // m.ptrs_per_pte] is not table or entry is None or not entry.present \
                or entry.special or entry.pfn != folio.pfn:
            yield from self.spin_unlock(t, table.ptl, "write_protect_page: not mapped here, unlock")
            return None
        yield from self.pte_table_flush_check(t, mm, table)   # generation variants only
        entry = table.ptes[slot]
        anon_exclusive = folio.anon_exclusive
        if not self.ksm_write_protect_must_flush(mm, table, entry, anon_exclusive):
            # Mainline never gets here with an exclusive folio (the anon_exclusive term sends
            # it to the flush below); a variant whose test lacks that term does, and it must
            # share the folio all the same: a KSM folio is never PG_anon_exclusive (replace_page
            # and folio_set_stable_node VM_BUG_ON it), else do_wp_page would reuse it in place.
            if anon_exclusive and self.folio_try_share_anon_rmap_pte(folio):
                yield from self.spin_unlock(t, table.ptl, f"write_protect_page: pfn {folio.pfn} "
                                            "exclusive and maybe pinned, unlock")
                return None
            yield from self.spin_unlock(t, table.ptl,
                                        f"write_protect_page: va {vpn:#x} clean and read-only, "
                                        "no flush, unlock")
            return entry
        swapped = 1 if folio.swapcache else 0
        entry = yield from self.ptep_clear_flush(
            t, mm, table, slot, vpn, f"write_protect_page: ptep_clear_flush va {vpn:#x}: clear")
        if folio.mapcount + 1 + swapped != folio.refcount or \
                (anon_exclusive and folio.pincount):
            table.ptes[slot] = entry
            yield from self.spin_unlock(t, table.ptl,
                                        f"write_protect_page: refcount {folio.refcount} != "
                                        f"mapcount {folio.mapcount} + 1 + {swapped} (or pinned): "
                                        "set_pte_at(orig), unlock")
            return None
        folio.anon_exclusive = False              # folio_try_share_anon_rmap_pte
        m.anon_shared_at = m.clock
        if entry.dirty:
            self.folio_mark_dirty_now(folio)
        entry = entry._replace(write=False, dirty=False)
        table.ptes[slot] = entry
        yield f"write_protect_page: set_pte_at va {vpn:#x} read-only, clean"
        yield from self.spin_unlock(t, table.ptl, "write_protect_page: page_vma_mapped_walk_done")
        return entry

    def replace_page(self, t: Task, mm, vma: Vma, vpn: int, folio: Folio, kfolio: Folio,
                     orig: Pte):
        """mm/ksm.c replace_page: PTL; give up unless pte_same(orig_pte); folio_get(kfolio),
        folio_add_anon_rmap_pte(kfolio, RMAP_NONE), newpte = mk_pte(kpage, vm_page_prot)
        (read-only: a private mapping's vm_page_prot); ptep_clear_flush; set_pte_at;
        folio_remove_rmap_pte(folio); folio_put(folio); unlock."""
        m = self.m
        table, slot = m.pte_lookup(mm, vpn)
        if table is None:
            return False
        yield from self.spin_lock(t, table.ptl, f"replace_page: pte_offset_map_lock va {vpn:#x}")
        if mm.pmd[vpn // m.ptrs_per_pte] is not table or table.ptes[slot] != orig:
            yield from self.spin_unlock(t, table.ptl, "replace_page: !pte_same, unlock")
            return False
        kfolio.refcount += 1
        kfolio.mapcount += 1
        kfolio.ksm_rmap.append((mm.mm_id, vpn))
        yield from self.ptep_clear_flush(t, mm, table, slot, vpn,
                                         f"replace_page: folio_get + folio_add_anon_rmap_pte(pfn "
                                         f"{kfolio.pfn}), ptep_clear_flush va {vpn:#x}: clear")
        table.ptes[slot] = Pte(kfolio.pfn, write=False, dirty=False, young=False,
                               soft_dirty=orig.soft_dirty)
        yield f"replace_page: set_pte_at va {vpn:#x} -> KSM pfn {kfolio.pfn} (read-only)"
        yield from self.folio_remove_rmap_ptes(t, folio, vma, "replace_page: ")
        self.folio_put_now(folio)
        yield from self.spin_unlock(t, table.ptl, f"replace_page: folio_put(pfn {folio.pfn}), "
                                    "pte_unmap_unlock")
        return True

    def ksm_might_need_to_copy(self, t: Task, folio: Folio, vma: Vma, vpn: int):
        """mm/ksm.c ksm_might_need_to_copy, called by do_swap_page with the swap-cache folio
        locked ("KSM sometimes has to copy on read faults, for example, if folio->index of
        non-ksm folios would be nonlinear inside the anon VMA -- the ksm flag is lost on
        actual swapout"). No copy for a KSM folio (its stable node is set; KSM_RUN_UNMERGE
        is not modelled), for a folio that is not anon yet (!anon_vma), or when
        "folio->index == linear_page_index(vma, addr) && anon_vma->root ==
        vma->anon_vma->root", nor for a folio not uptodate. Otherwise a new folio, the page
        copied, folio_set_dirty, __folio_mark_uptodate, __folio_set_locked. Returns the
        folio do_swap_page is to map (the allocation reference is the caller's)."""
        if folio.ksm or not folio.anon:
            return folio
        if folio.index == vpn and folio.anon_vma.root is vma.anon_vma.root:
            return folio
        if not folio.uptodate:
            return folio
        new = self.m.alloc_folio()
        new.data = folio.data
        new.dirty = True
        new.locked = t.tid
        t.locks += 1
        yield (f"ksm_might_need_to_copy: pfn {folio.pfn} (index {folio.index:#x}, "
               f"av{folio.anon_vma.avid}) is not this VMA's: alloc pfn {new.pfn}, copy "
               f"v{new.data}, folio_set_dirty, __folio_set_locked")
        return new
