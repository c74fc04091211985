"""TLB properties.

include/asm-generic/tlb.h: "1) unhook page 2) TLB invalidate page 3) free page" -- the order
every unmapping path must keep, so a freed frame is never reachable through a TLB.
"""

from __future__ import annotations

from mmfuzz.model import Folio, tlb_key

from ._core import Violation, last_changed_by_caller, pte_at

NAME_UAF = "no-use-after-free-via-TLB"
NAME_STALE = "no-stale-translation-after-return"


def no_use_after_free_via_tlb(m, events) -> Violation | None:
    """no-use-after-free-via-TLB: no CPU holds a cached translation to a frame that was freed
    or reused since the translation was filled (include/asm-generic/tlb.h: "1) unhook page
    2) TLB invalidate page 3) free page")."""
    frames = m.frames   # checked after every step: locals, and the key only when it fails
    for cpu in m.cpus:
        if not cpu.tlb:
            continue
        for e in cpu.tlb.values():
            uid = e.uid
            if uid == 0:
                continue  # the zero page is never freed
            frame = frames[e.pfn]
            if isinstance(frame, Folio) and frame.uid == uid:
                continue
            key = next(k for k, x in cpu.tlb.items() if x is e)
            state = "reused" if frame is not None else "free"
            return Violation(NAME_UAF,
                             f"CPU{cpu.cpu_id} still translates va {key & 0xffffffff:#x} to pfn "
                             f"{e.pfn}, which was freed ({state} now)",
                             {"cpu": cpu.cpu_id, "va": key & 0xffffffff, "pfn": e.pfn,
                              "writable": e.write, "frame": state})
    return None


def _entry_allowed(m, mm_id: int, vpn: int, e) -> bool:
    pte = pte_at(m, mm_id, vpn)
    if pte is None or pte.pfn != e.pfn:
        return False
    if e.write and not pte.write:
        return False
    if e.write and e.dirty and not pte.dirty:
        return False
    return True


def no_stale_translation_after_return(m, events) -> Violation | None:
    """no-stale-translation-after-return: when munmap() or madvise(MADV_DONTNEED) returns, no
    CPU holds a translation in its range that the page tables no longer allow, if the call saw
    that page-table state under the PTL (a later change belongs to whoever made it, who flushes
    under its own PTL or owes its own flush). mm/mmu_gather.c tlb_finish_mmu: parallel zappers
    "may end up seeing inconsistent PTEs and result in having stale TLB entries", hence the
    nested flush."""
    for ev in events:
        if ev[0] != "unmap_returned":
            continue
        _, mm_id, start, end, _tid, observed = ev
        for cpu in m.cpus:
            for vpn in range(start, end):
                key = tlb_key(mm_id, vpn)
                e = cpu.tlb.get(key)
                if e is None or _entry_allowed(m, mm_id, vpn, e):
                    continue
                if not last_changed_by_caller(m, observed, key):
                    continue
                return Violation(NAME_STALE,
                                 f"the call on [{start:#x}-{end:#x}) returned while CPU{cpu.cpu_id} "
                                 f"still translates va {vpn:#x} to pfn {e.pfn}",
                                 {"cpu": cpu.cpu_id, "mm": mm_id, "va": vpn, "pfn": e.pfn,
                                  "writable": e.write, "dirty": e.dirty})
    return None


def no_stale_translation_quiescent(m) -> Violation | None:
    """When every operation has finished, every cached translation is one the page tables
    allow: a flush owed by any path has been done."""
    for cpu in m.cpus:
        for key, e in cpu.tlb.items():
            mm_id, vpn = key >> 32, key & 0xffffffff
            if not _entry_allowed(m, mm_id, vpn, e):
                return Violation(NAME_STALE,
                                 f"after every operation finished, CPU{cpu.cpu_id} still "
                                 f"translates va {vpn:#x} to pfn {e.pfn} against the page tables",
                                 {"cpu": cpu.cpu_id, "mm": mm_id, "va": vpn, "pfn": e.pfn})
    return None
