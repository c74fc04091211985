"""A store through a GUP reference that a discard of the address overtook may be lost.

The rule machine (OpsMachine, seed 1, example 160) flagged mainline with
no-lost-write-after-madv-free: write(/proc/self/mem) to an anonymous page took its
reference (follow_page_pte: try_grab_folio), MADV_DONTNEED zapped the page and returned, and
only then did __access_remote_vm copy the data into the page it holds; set_page_dirty_lock
and put_page follow, the page is freed, and the address reads zero. A defect of the oracle,
not of the model: mainline does exactly that (mm/memory.c __access_remote_vm does not look
at the page tables again after get_user_page_vma_remote), and mm/gup.c says it may:
"__get_user_pages walks a process's page tables and takes a reference to each struct page
that each user address corresponds to at a given instant. [...] This does not guarantee that
the page exists in the user mappings when __get_user_pages returns [...] And mostly callers
simply care that the page contains data that was valid *at some point in time*." The write()
was concurrent with the madvise(MADV_DONTNEED) (it began first, it returned after), so it may
take effect before the zap, and madvise(2) says the page then reads "zero-fill-on-demand".

The class: every store through a GUP reference (a device write through a pin, pin_write;
the kernel's own write through the reference it took, proc_mem_write; vmsplice only reads)
whose address a discard (munmap, MADV_DONTNEED, exit) reached while the reference existed,
from the start of the call that took it. Pins were already dated so (Oracle.pin_detached);
gup_store now is too (Oracle.discarded_since). MADV_FREE is not a discard: reclaim leaves a
referenced lazyfree folio mapped (try_to_unmap_one: "ref_count == 1 + map_count"), and the
writer marks it dirty before its put_page, so such a store must survive, and
bug:madvfree-reclaim-vs-dio (the refcount check reverted) still trips the property
(tests/test_reclaim.py).

tests/data/proc-mem-write-vs-dontneed.json is the fuzzer's 18-action schedule (shrunk on a
bug kernel; the world cut to the anonymous VMA, the race unchanged).
"""

from __future__ import annotations

import json
import os

from mmfuzz.kernel import Mainline
from mmfuzz.run import Run, execute
from properties.anon import no_lost_write_after_madv_free_quiescent

DATA = os.path.join(os.path.dirname(__file__), "data", "proc-mem-write-vs-dontneed.json")
MM, VA = 1, 2


def _saved():
    with open(DATA) as f:
        d = json.load(f)
    return d["world"], d["schedule"]


def _pte(r: Run, vpn: int):
    table, slot = r.m.pte_lookup(r.m.mms[MM], vpn)
    return None if table is None else table.ptes[slot]


def _drain_op(r: Run, cpu: int, op: str, *args):
    assert r.apply(["start", cpu, op, *args]) is not None
    r.drain()
    assert r.violation is None, r.violation


def test_the_fuzzers_schedule_replays_clean_on_mainline_and_the_write_is_lost():
    """The write lands in the page DONTNEED zapped, which its put_page frees: the address
    reads 0, which the oracle allows for a store the discard overtook."""
    world, schedule = _saved()
    run, outcome = execute(Mainline, world, schedule, strict=True)
    assert outcome.violation is None, outcome.violation
    texts = [s.text for s in run.trace]
    zap = next(i for i, t in enumerate(texts) if t.startswith("zap_present_folio_ptes"))
    ret = texts.index("madvise: mmap_read_unlock, return")
    grab = next(i for i, t in enumerate(texts) if "try_grab_folio(pfn" in t)
    copy = next(i for i, t in enumerate(texts) if "copy_to_user_page" in t)
    assert grab < zap < ret < copy               # the reference predates the zap, the data
    assert run.m.anon_content(run.m.mms[MM], VA) == 0    # lands after madvise returned: lost
    pfn = int(texts[copy].split("pfn ")[1].split()[0])
    assert texts[copy + 3] == f"__access_remote_vm: put_page(pfn {pfn})"
    assert run.m.frames[pfn] is None             # put_page freed the zapped page
    vid, want, seen = run.m.oracle.anon_expected[(MM << 32) | VA]
    assert want is None and len(seen) == 1       # 0 or the version the write stored


def test_every_zap_point_in_a_foll_force_write_is_clean_on_mainline():
    """MADV_DONTNEED of the page run to completion after each step of proc_mem_write:
    mainline never violates a property (the saved schedule is one of these cut points)."""
    world, _ = _saved()
    n = None
    k = 0
    while n is None or k <= n:
        r = Run(Mainline, world)
        r.apply(["start", 0, "proc_mem_write", VA])
        steps = 0
        while r.m.cpus[0].task is not None and steps < k:
            if r.apply(["step", 0]) is None:
                break
            steps += 1
        if r.m.cpus[0].task is None:
            n = steps
        r.apply(["start", 1, "madvise_dontneed", VA, 1])
        while r.m.cpus[1].task is not None:      # to its return; CPU0 takes its IPI, or
            if r.apply(["step", 1]) is None:     # a step when CPU1 waits for its PTL
                if r.apply(["ipi", 0]) is None:
                    assert r.apply(["step", 0]) is not None, k
        r.drain()
        assert r.violation is None, (k, r.violation)
        assert r.quiesce() is None, k
        k += 1
    assert n is not None and n >= 6


def test_a_write_no_discard_overtook_must_still_be_read():
    """DONTNEED returned before the write() began: the write faults a fresh page in, and
    that page must read it (a discard that ended before the call does not excuse a loss)."""
    world, _ = _saved()
    r = Run(Mainline, world)
    _drain_op(r, 1, "madvise_dontneed", VA, 1)
    _drain_op(r, 0, "proc_mem_write", VA)
    assert r.quiesce() is None
    folio = r.m.frames[_pte(r, VA).pfn]
    want = folio.data
    assert want != 0 and r.m.oracle.anon_expected[(MM << 32) | VA][1] == want
    folio.data = 0                               # as if the store had been lost
    v = no_lost_write_after_madv_free_quiescent(r.m)
    assert v is not None and v.prop == "no-lost-write-after-madv-free"
    assert v.facts["want"] == want and v.facts["reads"] == 0


def test_a_write_with_no_discard_at_all_must_be_read():
    world, _ = _saved()
    r = Run(Mainline, world)
    _drain_op(r, 0, "proc_mem_write", VA)
    folio = r.m.frames[_pte(r, VA).pfn]
    assert r.m.oracle.anon_expected[(MM << 32) | VA][1] == folio.data != 0
    folio.data = 0
    assert no_lost_write_after_madv_free_quiescent(r.m) is not None
