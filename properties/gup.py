"""COW and GUP: what fork, the write-fault reuse decision and GUP references promise.

tools/testing/selftests/mm/cow.c checks these from user space: after fork() "the child must
not observe modifications of the parent" ("COW with vmsplice() not working"), and a long-term
pin must stay "reliable" (the pinned page is the page mapped, and changes through the page
tables are visible through the pin). include/linux/mm.h documents the pin side: pinned
anonymous pages are exclusive and "PG_anon_exclusive ... cannot get cleared (e.g., by fork(),
KSM) while the page is pinned" (6c287605fd56), so "the pin will be fully reliable and stay
consistent with the pages mapped into the page table".

The ground truth (who wrote which version, the fork tree, pins the user detached by
discarding their range) is the checker's, in mmfuzz/oracle.py.
"""

from __future__ import annotations

from mmfuzz.kernel.gup import FOLL_PIN
from mmfuzz.model import Folio

from ._core import Violation, pte_at

NAME_COW = "cow-isolation"
NAME_PIN = "gup-pin-coherent"
NAME_ROFILE = "no-write-to-readonly-file"


def cow_isolation(m, events) -> Violation | None:
    """cow-isolation: after fork, a store by one process is never observable by the other,
    neither through its own mapping nor through a reference it took with GUP (cow.c
    "vmsplice() + unmap in child": "This is CVE-2020-29374 reported by Jann Horn"). A
    process may see its own stores, its ancestors' stores made before the fork that
    separated them returned, and any store into a page-cache page. A reference the process
    holds is observable whenever it is held (the pipe may be read at any time), so a
    referenced page holding a version its holder may not see is the violation, read or not."""
    oracle = m.oracle
    for ev in events:
        kind = ev[0]
        if kind == "load":
            _, cpu, vpn, pfn, data = ev
            reader, how = m.cpus[cpu].mm_id, f"CPU{cpu} loads va {vpn:#x}"
        elif kind == "pin_load":
            _, reader, vpn, pfn, data, pin_id = ev
            how = f"a read through pin {pin_id} (taken at va {vpn:#x})"
        else:
            continue
        if oracle.may_observe(reader, data):
            continue
        return _cow_violation(oracle, reader, data, how, pfn, vpn)
    if not events:
        return None
    # A held reference is readable at any moment (a pipe read, a device's DMA: pin_read has
    # no precondition), so a referenced page that holds a version its holder may not see is
    # already observable. Folio data changes only by a step with a store event, and a new
    # reference comes with a "gup_take" event, so checking after steps with events suffices.
    for pin in m.pins.values():
        folio = pin.folio
        if folio is None or oracle.may_observe(pin.mm_id, folio.data):
            continue
        return _cow_violation(oracle, pin.mm_id, folio.data,
                              f"a read through pin {pin.pin_id} (taken at va {pin.vpn:#x}) "
                              "would return it", folio.pfn, pin.vpn)
    return None


def _cow_violation(oracle, reader, data, how, pfn, vpn) -> Violation:
    writer, when = oracle.writer_of(data)
    return Violation(NAME_COW, f"mm{reader} observes v{data}, stored by mm{writer} after "
                     f"they were separated by fork: {how} -> pfn {pfn}",
                     {"reader": reader, "writer": writer, "version": data, "pfn": pfn,
                      "va": vpn, "stored_at": when})


def _held_pins(m):
    """The FOLL_PIN pins the user still holds on a live mm and has not detached from the
    mapping (munmap, MADV_DONTNEED or exit of that range since the pin was taken), in pin
    order: the pins both halves of gup-pin-coherent judge."""
    if not m.pins:
        return ()
    oracle = m.oracle
    return [pin for pin in m.pins.values()
            if pin.flags & FOLL_PIN and not oracle.pin_detached(m, pin) and pin.mm_id in m.mms]


def gup_pin_coherent(m, events) -> Violation | None:
    """gup-pin-coherent: a FOLL_PIN reference (every pin here is FOLL_LONGTERM, the reliable
    kind) keeps referring to the page mapped at its address for as long as the user keeps the
    mapping there (no munmap, MADV_DONTNEED or exit of that range): while a PTE maps that
    address it maps the pinned page, so stores through the mapping and through the pin see
    each other. A transiently cleared PTE is no violation; a different page mapped there is
    the "wrong COW" that loses synchronicity (COW fixes part 2, 2022)."""
    for pin in _held_pins(m):
        pte = pte_at(m, pin.mm_id, pin.vpn)
        if pte is None:
            continue
        pinned = m.zero_pfn if pin.folio is None else pin.folio.pfn
        mapped = pte.pfn
        if not pte.present:  # swapped out: a swap-in maps the swap cache's folio, if any
            cached = m.swap.cache.get(pte.offset)
            mapped = cached.pfn if cached is not None else None
        if mapped != pinned:
            return Violation(NAME_PIN, f"pin {pin.pin_id} refers to pfn {pinned}, but mm{pin.mm_id} "
                             f"va {pin.vpn:#x} now maps pfn {mapped}: the pin and the page "
                             "table disagree", {"pin": pin.pin_id, "mm": pin.mm_id,
                                                "va": pin.vpn, "pinned": pinned,
                                                "mapped": mapped})
    return None


def no_write_to_readonly_file(m, events) -> Violation | None:
    """no-write-to-readonly-file: no process changes the contents of a file it may only read
    (the world marks such files ``readonly``: opened O_RDONLY, so mapped shared read-only or
    private). FOLL_FORCE may write a private mapping only after breaking COW: mm/gup.c
    can_follow_write_pte "FOLL_FORCE can write to even unwritable PTEs in COW mappings" only
    for "an exclusive anonymous page" (Dirty COW, CVE-2016-5195, wrote the page cache)."""
    for file_id in m.readonly_files:   # the world's files with "readonly", in world order
        f = m.files[file_id]
        for index in range(f.npages):
            folio = f.cache.get(index)
            if f.disk[index] != 0:
                return Violation(NAME_ROFILE, f"read-only file{f.file_id}[{index}] on disk became "
                                 f"v{f.disk[index]}", {"file": f.file_id, "index": index,
                                                       "disk": f.disk[index]})
            if folio is not None and folio.uptodate and folio.data != f.disk[index]:
                return Violation(NAME_ROFILE, f"read-only file{f.file_id}[{index}] (pfn "
                                 f"{folio.pfn}) in the page cache holds v{folio.data}, not the "
                                 f"disk's v{f.disk[index]}",
                                 {"file": f.file_id, "index": index, "pfn": folio.pfn,
                                  "data": folio.data})
    return None


def no_write_through_private_mapping(m, events) -> Violation | None:
    """no-write-to-readonly-file, its other half: a process may only read a file through a
    private mapping, whatever the file's open mode. mmap(2) MAP_PRIVATE: "Updates to the
    mapping are not visible to other processes mapping the same file, and are not carried
    through to the underlying file"; a FOLL_FORCE | FOLL_WRITE reference of a private file
    page is taken only after the write fault broke COW (mm/gup.c can_follow_write_pte: only
    "an exclusive anonymous page"), so /proc/PID/mem's copy_to_user_page never lands in a
    page-cache folio (Dirty COW, CVE-2016-5195, did: the page cache of a file opened
    read-write changes with no store to the file, and is not even dirty). Reads the step's
    events only ("gup_store": a write through a GUP reference taken by its own operation,
    which refuses shared mappings)."""
    for ev in events:
        if ev[0] != "gup_store":
            continue
        _, mm_id, vpn, pfn, version, _tid = ev
        frame = m.frames[pfn]
        if not isinstance(frame, Folio) or not m.in_page_cache(frame):
            continue
        mapping = frame.mapping
        mm = m.mms.get(mm_id)
        vma = mm.find_vma(vpn) if mm is not None else None
        if vma is None or vma.shared:
            continue
        return Violation(NAME_ROFILE, f"a FOLL_FORCE write through mm{mm_id}'s private mapping "
                         f"va {vpn:#x} stored v{version} into file{mapping}[{frame.index}] (pfn "
                         f"{pfn}) in the page cache", {"file": mapping, "index": frame.index,
                                                      "pfn": pfn, "data": version, "va": vpn})
    return None


def gup_pin_coherent_quiescent(m) -> Violation | None:
    """gup-pin-coherent, its eventual half: when every operation has finished, a pin the user
    has not detached still refers to the page a user access at its address would reach. A
    PTE that is none now is no longer transient: the next access faults, and the fault maps
    the page-cache folio at that file index (a file VMA), or for anonymous memory the shared
    zero page on a read and a new zeroed folio on a write (mm/memory.c do_anonymous_page),
    never the pinned folio. mm/rmap.c try_to_unmap_one keeps a lazyfree folio GUP holds
    ("The only page refs must be one from isolation plus the rmap(s)", 6c8e2a256915), and
    mm/vmscan.c shrink_folio_list does not swap out a maybe-pinned anon folio, so on mainline
    a pinned page leaves its PTE only when the user discards the range."""
    for pin in _held_pins(m):
        if pte_at(m, pin.mm_id, pin.vpn) is not None:
            continue   # present or swap: gup_pin_coherent's own case, checked at every step
        vma = m.mms[pin.mm_id].find_vma(pin.vpn)
        if vma is None:
            continue
        pinned = m.zero_pfn if pin.folio is None else pin.folio.pfn
        if vma.file is None:
            if pin.folio is None:
                continue   # a read fault maps the zero page again
            mapped, how = None, "a fault maps the zero page or a new folio"
        else:
            index = vma.pgoff + pin.vpn - vma.start
            cached = m.files[vma.file].cache.get(index)
            if cached is not None and cached.pfn == pinned:
                continue
            mapped = cached.pfn if cached is not None else None
            how = f"a fault maps file{vma.file}[{index}]" + (
                f" (pfn {mapped})" if cached is not None else " read from disk")
        return Violation(NAME_PIN, f"pin {pin.pin_id} refers to pfn {pinned}, but mm{pin.mm_id} "
                         f"va {pin.vpn:#x} maps nothing and {how}: the pin and the page "
                         "table disagree", {"pin": pin.pin_id, "mm": pin.mm_id, "va": pin.vpn,
                                            "pinned": pinned, "mapped": mapped})
    return None
