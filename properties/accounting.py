"""accounting: mapcount, refcount and frame lifetime.

mm/rmap.c: mapcount counts the page-table entries that map a folio; a PTE that maps a
page-cache folio holds one reference ("finish_fault ... consumes a reference"); mm/vmscan.c
__remove_mapping freezes the refcount at 1 + nr_pages to prove that nothing else holds it.
"""

from __future__ import annotations

from mmfuzz.kernel.gup import FOLL_PIN, GUP_PIN_COUNTING_BIAS
from mmfuzz.model import SWAP_HAS_CACHE, Folio, PteTable

from ._core import Violation, live_ptes

NAME = "accounting"


def accounting(m, events) -> Violation | None:
    """At every step: nothing is freed while mapped or cached, and no present PTE maps a freed
    frame or lives in a freed table."""
    for ev in events:
        if ev[0] == "free" and (ev[3] or ev[4]):
            _, pfn, uid, mapcount, cached = ev
            return Violation(NAME, f"pfn {pfn} was freed while "
                             f"{'mapped (mapcount %d)' % mapcount if mapcount else 'in the page cache'}",
                             {"pfn": pfn, "mapcount": mapcount, "cached": cached})
    frames = m.frames   # checked after every step: locals, and the slot only when it fails
    for mm in m.mms.values():
        for table in mm.pmd:
            if table is None:
                continue
            if table.freed:
                return Violation(NAME, f"mm{mm.mm_id}'s PMD points at freed PTE table {table.tid}",
                                 {"mm": mm.mm_id, "table": table.tid})
            for pte in table.ptes:
                if pte is None or not pte.present or pte.special:
                    continue
                if not isinstance(frames[pte.pfn], Folio):
                    va = table.pmd_index * m.ptrs_per_pte + next(
                        i for i, x in enumerate(table.ptes) if x is pte)
                    return Violation(NAME, f"mm{mm.mm_id} va {va:#x} maps pfn {pte.pfn}, "
                                     "which is free", {"mm": mm.mm_id, "va": va,
                                                       "pfn": pte.pfn})
    for f in m.files.values():
        for folio in f.cache.values():
            if folio.freed:
                index = next(i for i, x in f.cache.items() if x is folio)
                return Violation(NAME, f"file{f.file_id}[{index}] caches freed pfn {folio.pfn}",
                                 {"file": f.file_id, "index": index, "pfn": folio.pfn})
    return None


def gup_references(m, folio) -> int:
    """The references GUP users still hold on ``folio``: GUP_PIN_COUNTING_BIAS per FOLL_PIN,
    one per FOLL_GET (mm/gup.c try_grab_folio)."""
    return sum(GUP_PIN_COUNTING_BIAS if pin.flags & FOLL_PIN else 1
               for pin in m.pins.values() if pin.folio is folio)


def accounting_quiescent(m) -> Violation | None:
    """With no operation in flight: every swap slot's swap_map counts the swap PTEs that refer
    to it, with SWAP_HAS_CACHE iff it is in the swap cache; every live folio's mapcount
    equals the PTEs that map it and its refcount equals those PTEs plus the page cache's or
    swap cache's reference plus the GUP references still held; nothing is leaked; and every
    PTE mapping an anon folio lies in a VMA its anon_vma links, at the address its index
    gives (rmap can find it)."""
    sw = m.swap
    swap_ptes = [0] * len(sw.swap_map)
    for _mm, _vpn, pte in live_ptes(m):
        if not pte.present:
            swap_ptes[pte.offset] += 1
    for offset, count in enumerate(sw.swap_map):
        in_cache = offset in sw.cache
        if count != swap_ptes[offset] | (SWAP_HAS_CACHE if in_cache else 0):
            return Violation(NAME, f"swap slot {offset}: swap_map {count:#x}, but "
                             f"{swap_ptes[offset]} swap PTEs refer to it and it is "
                             f"{'' if in_cache else 'not '}in the swap cache",
                             {"slot": offset, "swap_map": count, "ptes": swap_ptes[offset],
                              "cached": in_cache})
    # mapped_ptes(m, folio) for every folio at once: the PTEs of each pfn, in live_ptes order
    by_pfn: dict = {}
    for mm, vpn, pte in live_ptes(m):
        if pte.present and not pte.special:
            by_pfn.setdefault(pte.pfn, []).append((mm.mm_id, vpn, pte))
    for frame in m.frames:
        if isinstance(frame, Folio):
            ptes = by_pfn.get(frame.pfn, [])
            if frame.ksm:
                # mm/ksm.c rmap_walk_ksm: a KSM folio is found through its stable node's rmap
                # items, not its anon_vma; a forked child's mapping through the item's anon_vma
                # ("covering vmas in other mms ... forked from the original")
                origin = m.mms
                for mm_id, vpn, _pte in ptes:
                    if not any(v == vpn and (i == mm_id or (i in origin and
                                                             origin[i].origin ==
                                                             origin[mm_id].origin))
                               for i, v in frame.ksm_rmap):
                        return Violation(NAME, f"KSM pfn {frame.pfn} is mapped at mm{mm_id} va "
                                         f"{vpn:#x}, but its stable node has no rmap item for "
                                         "it", {"pfn": frame.pfn, "mm": mm_id, "va": vpn})
            elif frame.anon:
                for mm_id, vpn, _pte in ptes:
                    # mm/rmap.c rmap_walk_anon: "Find all the mappings of a folio using the
                    # mapping pointer and the vma chains contained in the anon_vma struct it
                    # points to": folio->mapping's anon_vma must link every VMA that maps it,
                    # and each mapping must lie at vma_address(folio->index) --
                    # __page_check_anon_rmap: "VM_BUG_ON_PAGE(page_to_pgoff(page) !=
                    # linear_page_index(vma, address), page)" (the model's anon index is the vpn)
                    vma = m.mms[mm_id].find_vma(vpn)
                    av = frame.anon_vma
                    if vma is None or av is None or vma not in av.vmas:
                        return Violation(NAME, f"anon pfn {frame.pfn} is mapped at mm{mm_id} va "
                                         f"{vpn:#x}, but rmap cannot find that mapping from its "
                                         "anon_vma", {"pfn": frame.pfn, "mm": mm_id, "va": vpn})
                    if frame.index != vpn:
                        return Violation(NAME, f"anon pfn {frame.pfn} is mapped at mm{mm_id} va "
                                         f"{vpn:#x}, but its index {frame.index:#x} sends rmap "
                                         "elsewhere", {"pfn": frame.pfn, "mm": mm_id, "va": vpn,
                                                       "index": frame.index})
            cached = m.in_page_cache(frame) or sw.cache.get(frame.swap) is frame
            want_ref = len(ptes) + (1 if cached else 0) + gup_references(m, frame)
            if frame.mapcount != len(ptes) or frame.refcount != want_ref:
                return Violation(NAME, f"pfn {frame.pfn}: mapcount {frame.mapcount}, refcount "
                                 f"{frame.refcount}, but {len(ptes)} PTEs map it"
                                 f"{' and the page cache holds it' if cached else ''}",
                                 {"pfn": frame.pfn, "mapcount": frame.mapcount,
                                  "refcount": frame.refcount, "ptes": len(ptes),
                                  "cached": cached})
        elif isinstance(frame, PteTable):
            mm = m.mms[frame.mm_id]
            if mm.pmd[frame.pmd_index] is not frame:
                return Violation(NAME, f"PTE table {frame.tid} is allocated but unreachable",
                                 {"table": frame.tid})
    return None
