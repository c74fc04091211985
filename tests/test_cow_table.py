"""tools/testing/selftests/mm/cow.c, anonymous base-page cases, as mmfuzz scenarios.

Each row is one cow.c test translated step for step into a world and a program: the steps run
one after another, each to completion (cow.c orders parent and child with pipes), and the
verdict is the first property violated, or None. Expected verdicts are given for mainline,
for the two older reuse rules as catalogued (bug:cow-gup-wrong-direction: reuse by mapcount,
before 09854ba94c6a; bug:cow-gup-wrong-direction-pagecount: reuse by
page_count, 09854ba94c6a until PG_anon_exclusive) and for fork without its early copy of a
pinned page (bug:fork-pinned-no-early-cow, 70e806e4e645 reverted: only the iouring fork case,
where the pin is taken before the fork, goes through it). cow.c's own check becomes the property
that encodes it: "Leak from parent into child" / "from child into parent" is cow-isolation,
"Longterm R/O pin is not reliable" / "R/W pin is not reliable" is gup-pin-coherent.

The world: CPU0 and CPU1 run the parent (mm1), CPU2 is free for the child; the anon page at
va 4 is populated first (cow.c: memset(mem, 1, pagesize)). Devices (the gup_test pin reader,
a pipe reader) run on CPU1 as kernel threads.

Not translated: the "... with mprotect() optimization" variants, "R/O-mapping a page
registered as iouring fixed buffer", swapped-out pages, THP and hugetlb. "R/O-mapped exclusive
page" is reached two ways: cow.c's own mprotect(PROT_READ); clear_softdirty();
mprotect(PROT_READ | PROT_WRITE) (the upgrade leaves the page read-only because soft-dirty
tracking wants its write fault: can_change_pte_writable), and clear_refs alone, whose effect
is the same: the page stays exclusive and mapped read-only.
"""

from __future__ import annotations

import pytest

from mmfuzz.kernels import resolve_kernel
from mmfuzz.run import Run, default_world

PARENT, DEVICE, CHILD = 0, 1, 2
VA = 4
KERNELS = ("mainline", "bug:cow-gup-wrong-direction", "bug:cow-gup-wrong-direction-pagecount",
           "bug:fork-pinned-no-early-cow")
COW, PIN = "cow-isolation", "gup-pin-coherent"


def world() -> dict:
    w = default_world()
    w.update(ncpus=3, cpu_mm=[1, 1, 0], prefault=[[PARENT, VA, 1]])
    return w


def fork():
    return ("op", PARENT, "fork", CHILD)


def ro_map_with_mprotect():
    """cow.c do_test_ro_pin: mprotect(PROT_READ); clear_softdirty(); mprotect(PROT_READ |
    PROT_WRITE) ("Map anonymous page read-only" while keeping it exclusive)."""
    return [("op", PARENT, "mprotect", VA, 1, 1), ("op", PARENT, "clear_refs"),
            ("op", PARENT, "mprotect", VA, 1, 3)]


def ro_pin(fast):
    return ("op", PARENT, "pin_user_pages", VA, 0, fast)


# name (cow.c test), program, expected verdict per KERNELS
CASES = [
    ("Basic COW after fork()",
     [fork(), ("store", PARENT), ("load", CHILD)],
     (None, None, None, None)),
    ("vmsplice() + unmap in child (CVE-2020-29374)",
     [fork(), ("op", CHILD, "vmsplice", VA), ("op", CHILD, "munmap", VA, 2),
      ("store", PARENT), ("op", DEVICE, "pin_read", 1)],
     (None, COW, None, None)),
    ("vmsplice() before fork(), unmap in parent after fork()",
     [("op", PARENT, "vmsplice", VA), fork(), ("op", PARENT, "munmap", VA, 2),
      ("store", CHILD), ("op", DEVICE, "pin_read", 1)],
     (None, COW, None, None)),
    ("vmsplice() + unmap in parent after fork()",
     [fork(), ("op", PARENT, "vmsplice", VA), ("op", PARENT, "munmap", VA, 2),
      ("store", CHILD), ("op", DEVICE, "pin_read", 1)],
     (None, COW, None, None)),
    ("fork() with an iouring fixed buffer",
     [("op", PARENT, "pin_user_pages", VA, 1, 1), fork(), ("store", PARENT),
      ("op", DEVICE, "pin_read", 1), ("load", CHILD)],
     (None, None, None, PIN)),
    ("R/O GUP pin on R/O-mapped shared page",
     [fork(), ro_pin(0), ("store", PARENT), ("op", DEVICE, "pin_read", 1)],
     (None, None, PIN, None)),
    ("R/O GUP-fast pin on R/O-mapped shared page",
     [fork(), ro_pin(1), ("store", PARENT), ("op", DEVICE, "pin_read", 1)],
     (None, None, PIN, None)),
    ("R/O GUP pin on R/O-mapped previously-shared page",
     [fork(), ("op", CHILD, "exit"), ro_pin(0), ("store", PARENT),
      ("op", DEVICE, "pin_read", 1)],
     (None, None, PIN, None)),
    ("R/O GUP-fast pin on R/O-mapped previously-shared page",
     [fork(), ("op", CHILD, "exit"), ro_pin(1), ("store", PARENT),
      ("op", DEVICE, "pin_read", 1)],
     (None, None, PIN, None)),
    ("R/O GUP pin on R/O-mapped exclusive page",
     [("op", PARENT, "clear_refs"), ro_pin(0), ("store", PARENT),
      ("op", DEVICE, "pin_read", 1)],
     (None, None, PIN, None)),
    ("R/O GUP-fast pin on R/O-mapped exclusive page",
     [("op", PARENT, "clear_refs"), ro_pin(1), ("store", PARENT),
      ("op", DEVICE, "pin_read", 1)],
     (None, None, PIN, None)),
    ("R/O GUP pin on R/O-mapped exclusive page (cow.c's mprotect sequence)",
     [*ro_map_with_mprotect(), ro_pin(0), ("store", PARENT), ("op", DEVICE, "pin_read", 1)],
     (None, None, PIN, None)),
    ("R/O GUP-fast pin on R/O-mapped exclusive page (cow.c's mprotect sequence)",
     [*ro_map_with_mprotect(), ro_pin(1), ("store", PARENT), ("op", DEVICE, "pin_read", 1)],
     (None, None, PIN, None)),
]


def run_case(kernel_name: str, program: list):
    """Run the program, each step to completion; returns (verdict, run)."""
    r = Run(resolve_kernel(kernel_name), world())
    for step in program:
        if step[0] == "op":
            _, cpu, op, *args = step
            assert r.apply(["start", cpu, op, *args]) is not None, (step, r.idle_cpus())
            r.drain()
        else:
            kind, cpu = step
            for _ in range(3):              # the access, its fault, the access again
                st = r.apply(["access", cpu, VA, int(kind == "store")])
                assert st is not None, step
                if st.op != "fault":
                    break
                r.drain()
            else:
                raise AssertionError(f"{step} kept faulting")
        if r.violation is not None:
            return r.violation.prop, r
    return None, r


@pytest.mark.parametrize("kernel_index", range(len(KERNELS)), ids=KERNELS)
@pytest.mark.parametrize("name,program,expected", CASES, ids=[c[0] for c in CASES])
def test_cow_selftest_case(name, program, expected, kernel_index):
    verdict, r = run_case(KERNELS[kernel_index], program)
    assert verdict == expected[kernel_index], (name, KERNELS[kernel_index],
                                               [s.text for s in r.trace][-12:])
    if verdict is None:
        assert r.quiesce() is None


def test_every_older_rule_fails_some_case_that_mainline_passes():
    for i in range(1, len(KERNELS)):
        assert any(exp[i] is not None and exp[0] is None for _, _, exp in CASES)


def test_the_mprotect_sequence_maps_the_page_read_only_and_exclusive():
    """What the cow.c sequence is for: on mainline the page ends read-only and exclusive. With
    76aefad628aa reverted (bug:mprotect-softdirty-inverted) the upgrade maps it writable, and
    the "R/O-mapped" cases would test nothing."""
    for kernel, writable in (("mainline", False), ("bug:mprotect-softdirty-inverted", True)):
        _, r = run_case(kernel, ro_map_with_mprotect())
        table, slot = r.m.pte_lookup(r.m.mms[1], VA)
        pte = table.ptes[slot]
        assert pte.write is writable, kernel
        assert r.m.frames[pte.pfn].anon_exclusive
