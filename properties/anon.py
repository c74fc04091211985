"""no-lost-write-after-madv-free: anonymous memory keeps what was stored in it.

madvise(2): after MADV_FREE "the kernel can free these pages, but the freeing could be
delayed until memory pressure occurs. For each of the pages that has been marked to be freed
but has not yet been freed, the free operation will be canceled if the caller writes into the
page". After MADV_DONTNEED returns, a page reads zeroes until it is written again. In between,
reclaim may swap the page out and back in (mm/swap_state.c add_to_swap: "This can cause data
corruption when the folio is swapped in later") -- the contents must survive that too, which
is dirty-data-preserved for anonymous memory.
"""

from __future__ import annotations

from ._core import Violation

NAME = "no-lost-write-after-madv-free"


def no_lost_write_after_madv_free_quiescent(m) -> Violation | None:
    """When every operation has finished: each anonymous page reads (through its PTE, the swap
    cache or the swap device) the last store made to it, or, if madvise returned on it since,
    what it held when madvise returned (0 after MADV_DONTNEED, unless a store concurrent with
    the call faulted a new page in); a page freed by MADV_FREE may read 0 instead.
    Pages whose VMA was unmapped or replaced since (another VMA id) are not checked."""
    for key, (vid, want, was) in m.anon_expected.items():
        mm_id, vpn = key >> 32, key & 0xffffffff
        mm = m.mms[mm_id]
        vma = mm.find_vma(vpn)
        if vma is None or vma.vid != vid:
            continue
        got = m.anon_content(mm, vpn)
        if want is None:
            if got == 0 or got == was:
                continue
            expect = f"0 or v{was} (freed by MADV_FREE)"
        else:
            if got == want:
                continue
            expect = f"v{want}"
        return Violation(NAME, f"mm{mm_id} va {vpn:#x} reads v{got}, but it must read {expect}: "
                         "a store was discarded", {"mm": mm_id, "va": vpn, "reads": got,
                                                   "want": want, "freed_with": was})
    return None
