"""The shrinker's last two passes: renumbering GUP pins when it drops the operation that took
one, and reordering a shrunk schedule into fewer rows (trace.segments, the unit of a race
diagram).

Before them, cow-gup-wrong-direction seed 1 shrank to 77 actions in 17 rows: an unrelated
vmsplice of a file page stayed because dropping it renumbered the pin that the final
pin_read names (pins are numbered in the order they are taken), and the race's operations
stayed interleaved step by step where the interleaving did not matter.
"""

import pytest

from mmfuzz.explore import _coalesce, _renumber_pins, fails_with, shrink
from mmfuzz.kernel import Mainline
from mmfuzz.trace import segments


def test_renumbering_moves_later_pin_numbers_down_past_the_dropped_ones():
    acts = [["start", 0, "vmsplice", 4], ["start", 1, "pin_read", 2], ["step", 1],
            ["start", 2, "unpin", 3], ["start", 0, "pin_write", 1]]
    out = _renumber_pins(acts, [1])
    assert out[1] == ["start", 1, "pin_read", 1]
    assert out[3] == ["start", 2, "unpin", 2]
    # a pin that was dropped keeps its number (it now names no pin); others are untouched
    assert out[4] == ["start", 0, "pin_write", 1]
    assert out[0] == acts[0] and out[2] == acts[2]
    assert acts[1] == ["start", 1, "pin_read", 2]   # the input is not changed


def test_coalesce_joins_one_cpus_stretches_when_the_order_does_not_matter():
    acts = [["step", 0], ["step", 1], ["step", 0], ["step", 1]]
    out = _coalesce(acts, lambda a: True, lambda: True)
    assert out is not None and segments(out) < segments(acts)
    assert sorted(map(tuple, out)) == sorted(map(tuple, acts))


def test_coalesce_keeps_an_order_that_the_failure_needs():
    acts = [["step", 0], ["step", 1], ["step", 0]]
    assert _coalesce(acts, lambda a: a == acts, lambda: True) is None
    # and it stops when its budget is spent
    assert _coalesce([["step", 0], ["step", 1], ["step", 0]], lambda a: True, lambda: False) is None


@pytest.mark.cost(4)
def test_the_cve_counterexample_shrinks_no_further_than_its_diagram_and_fails_only_on_the_bug():
    """The CVE's saved find (seed 1, run 719: fork; the parent's vmsplice reads its PTE and
    grabs the shared page; the parent's own write fault copies, leaving the page mapped once
    by the child; the child's write fault reuses it and stores; the vmsplice returns),
    shrunk again: a schedule that fails on the bug only, in no more rows than it had, with
    the one pin. cow-isolation judges a held reference as read (the pipe may be read at any
    time), so no pipe read is needed."""
    import glob
    import os

    from mmfuzz.corpus import load
    from mmfuzz.kernels import BUGS
    bug = next(b for b in BUGS if b.slug == "cow-gup-wrong-direction")
    root = os.path.join(os.path.dirname(__file__), "..", "corpus", "violations",
                        "cow-gup-wrong-direction")
    cx = load(sorted(glob.glob(os.path.join(root, "*.json")))[0])
    assert cx.expect == "violation:cow-isolation"
    world, actions = shrink(bug.kernel, cx.world, cx.schedule, "cow-isolation")
    assert len(actions) <= len(cx.schedule) == 55
    assert segments(actions) <= 9      # the diagram has 5
    assert fails_with(bug.kernel, world, actions, "cow-isolation")
    assert not fails_with(Mainline, world, actions, "cow-isolation")
    # one pin taken, and no read of it left
    assert [a[2] for a in actions if a[0] == "start" and a[2] in ("vmsplice", "pin_read")] == \
        ["vmsplice"]
