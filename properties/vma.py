"""VMA properties: the page tables never grant more than the VMAs do."""

from __future__ import annotations

from ._core import Violation, live_ptes

NAME = "pte-within-vma-protection"


def pte_within_vma_protection_quiescent(m) -> Violation | None:
    """pte-within-vma-protection: with no operation in flight, every present writable PTE lies
    inside a VMA of its mm that has VM_WRITE. mm/mprotect.c: mprotect_fixup clears VM_WRITE
    (vm_flags_reset_once, vma_set_page_prot) and change_protection write-protects every PTE of
    the range before mmap_write_unlock; every fault path makes a PTE writable only through
    maybe_mkwrite / the VMA's own protection, under that VMA's lock (mm/memory.c), so after
    mprotect(PROT_READ) or munmap returns no PTE lets the user store there. Checked only at
    quiescence: inside mprotect the VMA's flags change before its PTEs do."""
    for mm, vpn, pte in live_ptes(m):
        if not pte.present or not pte.write:
            continue
        vma = mm.find_vma(vpn)
        if vma is None or not vma.writable:
            where = "no VMA" if vma is None else f"VMA {vma.describe()} without VM_WRITE"
            return Violation(NAME, f"mm{mm.mm_id} va {vpn:#x} has a writable PTE (pfn "
                             f"{pte.pfn}) but {where} covers it",
                             {"mm": mm.mm_id, "va": vpn, "pfn": pte.pfn,
                              "vma": None if vma is None else vma.vid})
    return None
