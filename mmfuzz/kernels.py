"""The registry of kernel variants: ``mainline``, ``bug:SLUG`` (mainline with exactly one
historic fix reverted) and ``package.module:Name`` (a user's own subclass of Mainline)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from .kernel import Mainline


class KernelNameError(ValueError):
    pass


@dataclass(frozen=True)
class Bug:
    slug: str
    fix: str
    title: str
    prop: str
    kernel: type
    diagram_steps: int  # rows of the published / catalogued race diagram (see trace.segments)


class ZapRmapBeforeFlush(Mainline):
    """Mainline with 5df397dec7c4 ("mm: delay page_remove_rmap() until after the TLB has been
    flushed") reverted: zap_present_folio_ptes as before the fix. A dirty file PTE still forces
    the flush under the PTL (1cf35d47712d), but its rmap is removed at once, before that flush,
    so folio_mkclean can see the folio unmapped while a stale writable TLB entry exists."""

    name = "bug:zap-rmap-before-flush"

    def zap_present_folio_ptes(self, t, tlb, vma, folio, table, slot, vpn, force_flush):
        """mm/memory.c zap_pte_range's per-page body before 5df397dec7c4: "if (pte_dirty(ptent))
        { force_flush = 1; set_page_dirty(page); } ... page_remove_rmap(page, vma, false);"."""
        m = self.m
        old = table.ptes[slot]
        table.ptes[slot] = None
        m.revoke(t.mm.mm_id, vpn)
        dirty_note = ""
        if not folio.anon and old.dirty:
            force_flush = True
            self.folio_mark_dirty_now(folio)
            dirty_note = " dirty -> set_page_dirty"
            m.stats["bug_path_hits"] = m.stats.get("bug_path_hits", 0) + 1
        self.tlb_remove_tlb_entry(tlb, vpn)
        kind = "anon" if folio.anon else "file"
        yield (f"zap_pte_range: ptep_get_and_clear_full va {vpn:#x} pfn {folio.pfn} "
               f"({kind}){dirty_note}")
        yield from self.folio_remove_rmap_ptes(t, folio, vma, "page_remove_rmap [before flush]: ")
        force_break = False
        if self.tlb_remove_folio_pages_size(tlb, folio, False):
            force_flush = force_break = True
        return force_flush, force_break


class MadvParallelFlushMiss(Mainline):
    """Mainline with 99baac21e458 ("mm: fix MADV_[FREE|DONTNEED] TLB flush miss problem",
    Minchan Kim, 2017) reverted: tlb_finish_mmu no longer widens the flush when another gather
    is pending on the mm. Two threads zap the same range under mmap_lock for read; the second
    sees pte_none for a PTE the first cleared and has not flushed yet, finds nothing to flush,
    and returns while a CPU still holds the stale translation ("a thread has stable TLB entry
    can fail to flush the TLB by observing pte_none|!pte_dirty", from the patch). The pending
    counter itself is kept: today it has other readers."""

    name = "bug:madv-parallel-flush-miss"

    def tlb_finish_mmu(self, t, tlb):
        """mm/mmu_gather.c tlb_finish_mmu without the mm_tlb_flush_nested() widening."""
        mm = tlb.mm
        if mm.tlb_flush_pending > 1:
            self.m.stats["bug_path_hits"] = self.m.stats.get("bug_path_hits", 0) + 1
        yield from self.tlb_flush_mmu(t, tlb)
        mm.tlb_flush_pending -= 1
        yield f"tlb_finish_mmu: dec_tlb_flush_pending(mm{mm.mm_id}) -> {mm.tlb_flush_pending}"


class ClearRefsSoftDirtyNoFlush(Mainline):
    """Mainline with 912efa17e512 ("mm: proc: Invalidate TLB after clearing soft-dirty page
    state", Will Deacon, 2021) reverted: clear_refs_write brackets the walk with
    tlb_gather_mmu / tlb_finish_mmu again, only for the tlb_flush_pending side effect. The
    walk records nothing in the gather, so since 0758cd830494 tlb_flush_mmu_tlbonly finds no
    range and skips the flush, "leaving entries where pte_write() is false, yet a writable
    mapping remains in the TLB"."""

    name = "bug:clear-refs-softdirty-no-flush"

    def clear_refs(self, t):
        """fs/proc/task_mmu.c clear_refs_write before 912efa17e512 (on today's structure):
        tlb_gather_mmu(&tlb, mm) ... walk ... tlb_finish_mmu(&tlb)."""
        mm = t.mm
        yield from self.down_write(t, mm.mmap_lock, "clear_refs(SOFT_DIRTY): mmap_write_lock")
        tlb = yield from self.tlb_gather_mmu(t, mm)
        for vma in mm.vmas:
            vma.softdirty = False
        yield "clear_refs: for_each_vma: vm_flags_clear(VM_SOFTDIRTY) + vma_set_page_prot"
        yield from self.clear_refs_walk(t)
        if not (tlb.freed_tables or tlb.cleared_ptes or tlb.cleared_pmds):
            self.m.stats["bug_path_hits"] = self.m.stats.get("bug_path_hits", 0) + 1
        yield from self.tlb_finish_mmu(t, tlb)
        yield from self.up_write(t, mm.mmap_lock, "clear_refs: mmap_write_unlock, return", last=True)
        self.m.events.append(("softdirty_cleared", mm.mm_id, t.tid, dict(t.observed)))


BUGS: list[Bug] = [
    Bug("zap-rmap-before-flush", "5df397dec7c4",
        "mm: delay page_remove_rmap() until after the TLB has been flushed",
        "dirty-data-preserved", ZapRmapBeforeFlush, 8),
    Bug("madv-parallel-flush-miss", "99baac21e458",
        "mm: fix MADV_[FREE|DONTNEED] TLB flush miss problem",
        "no-stale-translation-after-return", MadvParallelFlushMiss, 7),
    Bug("clear-refs-softdirty-no-flush", "912efa17e512",
        "mm: proc: Invalidate TLB after clearing soft-dirty page state",
        "soft-dirty-accurate", ClearRefsSoftDirtyNoFlush, 3),
]

_BY_NAME = {"mainline": Mainline}
_BY_NAME.update({f"bug:{b.slug}": b.kernel for b in BUGS})


def kernel_names() -> list[str]:
    return list(_BY_NAME)


def bug_by_slug(slug: str) -> Bug:
    for b in BUGS:
        if b.slug == slug:
            return b
    raise KernelNameError(
        f"unknown bug {slug!r}; `mmfuzz bugs` lists them: {', '.join(b.slug for b in BUGS)}")


def resolve_kernel(name: str) -> type:
    """Map a kernel name to its class; raise KernelNameError with the fix in the message."""
    if name in _BY_NAME:
        return _BY_NAME[name]
    if name.startswith("bug:"):
        bug_by_slug(name[4:])
    if ":" in name and not name.startswith("bug:"):
        mod_name, _, attr = name.partition(":")
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as e:
            raise KernelNameError(f"kernel {name!r}: cannot import module {mod_name!r} ({e}); "
                                  "use package.module:ClassName on the Python path") from None
        cls = getattr(mod, attr, None)
        if not (isinstance(cls, type) and issubclass(cls, Mainline)):
            raise KernelNameError(f"kernel {name!r}: {attr!r} in {mod_name} is not a subclass "
                                  "of mmfuzz.kernel.Mainline")
        if cls.name == Mainline.name:
            cls.name = name
        return cls
    raise KernelNameError(f"unknown kernel {name!r}; use one of {', '.join(kernel_names())} "
                          "or package.module:ClassName")
