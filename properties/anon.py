"""no-lost-write-after-madv-free: anonymous memory keeps what was stored in it.

madvise(2): after MADV_FREE "the kernel can free these pages, but the freeing could be
delayed until memory pressure occurs. For each of the pages that has been marked to be freed
but has not yet been freed, the free operation will be canceled if the caller writes into the
page". MADV_DONTNEED: "subsequent accesses of pages in the range will succeed, but will result
in [...] zero-fill-on-demand pages for anonymous private mappings", so after it returns a page
reads zeroes until it is written again. A store that raced with the call may be lost: through
a CPU's stale TLB entry, or through a GUP reference (a device write through a pin, the
kernel's FOLL_FORCE write for /proc/pid/mem) taken before the zap -- mm/gup.c: GUP takes "the
page that would be accessed if a user thread accesses the given user virtual address at that
instant. This does not guarantee that the page exists in the user mappings when
__get_user_pages returns". Such a store counts as concurrent from the start of the call that
took the reference (mmfuzz/oracle.py discarded_since). In between,
reclaim may swap the page out and back in (mm/swap_state.c add_to_swap: "This can cause data
corruption when the folio is swapped in later") -- the contents must survive that too, which
is dirty-data-preserved for anonymous memory.
"""

from __future__ import annotations

from ._core import Violation

NAME = "no-lost-write-after-madv-free"


def no_lost_write_after_madv_free_quiescent(m) -> Violation | None:
    """When every operation has finished: each anonymous page reads (through its PTE, the swap
    cache or the swap device) the last store made to it (by a CPU or through a pin); if
    madvise(MADV_FREE or MADV_DONTNEED) returned on it since, 0 or a version stored to it
    before (a store concurrent with the call may be the one that survives; so may be lost a
    store through a GUP reference whose page a discard zapped while the reference existed).
    Pages whose VMA was unmapped or replaced since (another mapping: Vma.mapid, which a
    split keeps) are not checked."""
    for key, (mapid, want, was) in m.oracle.anon_expected.items():
        mm_id, vpn = key >> 32, key & 0xffffffff
        mm = m.mms.get(mm_id)
        vma = mm.find_vma(vpn) if mm is not None else None
        if vma is None or vma.mapid != mapid:
            continue
        got = m.anon_content(mm, vpn)
        if want is None:
            if got == 0 or got in was:
                continue
            expect = f"0 or one of {', '.join('v%d' % x for x in was)} (madvise returned on it since)"
        else:
            if got == want:
                continue
            expect = f"v{want}"
        return Violation(NAME, f"mm{mm_id} va {vpn:#x} reads v{got}, but it must read {expect}: "
                         "a store was discarded", {"mm": mm_id, "va": vpn, "reads": got,
                                                   "want": want, "stored": list(was)})
    return None


def no_store_leak_into_unwritten_anon_quiescent(m) -> Violation | None:
    """The other half of "anonymous memory reads its last store": a page of an anonymous
    VMA that no store reached reads 0 (mmap(2) MAP_ANONYMOUS: "The mapping is not backed by
    any file; its contents are initialized to zero"; a read fault maps the shared zero page,
    a write fault a zeroed folio). A store meant for one page must not show up in another,
    as it does when KSM merges a page a CPU can still write through a stale TLB entry into
    the KSM page another address maps (b3a81d0841a9: "CPU0 already wrote on the page, but
    KSM ignored this write"). Only the world's processes are checked: a forked child's
    pages read what its parent stored before the fork (cow-isolation's business); pages the
    world's prefault wrote are left out (their versions are not noted)."""
    oracle = m.oracle
    for mm_id in sorted(m.mms):
        if mm_id in oracle.parent:
            continue
        mm = m.mms[mm_id]
        for vma in mm.vmas:
            if vma.file is not None:
                continue
            for vpn in range(vma.start, vma.end):
                key = (mm_id << 32) | vpn
                if key in oracle.anon_expected or key in oracle.setup_written:
                    continue   # stored to at some time (maybe in a VMA since split or replaced)
                got = m.anon_content(mm, vpn)
                writer = oracle.writer.get(got)
                # a version the oracle never saw stored is not judged: exhaust's SearchRun
                # re-creates states without taking notes
                if got != 0 and writer is not None:
                    return Violation(NAME, f"mm{mm_id} va {vpn:#x} reads v{got}, but no store "
                                     "reached it: it must read 0 (a store meant for another "
                                     "page landed here)", {"mm": mm_id, "va": vpn, "reads": got,
                                                           "want": 0, "stored": [],
                                                           "writer": list(writer)})
    return None
