"""GUP-fast against fork's write-protect (57efa1fe5957, "mm/gup: prevent gup_fast from racing
with COW during fork"): the commit's diagram, step by step, on mainline and on the variant
without the write_protect_seq check (bug:gupfast-fork-no-write-protect-seq)."""

from __future__ import annotations

import pytest

from mmfuzz.exhaust import exhaust
from mmfuzz.kernel.gup import GUP_PIN_COUNTING_BIAS
from mmfuzz.kernels import resolve_kernel
from mmfuzz.run import Run, execute

from .test_faults import step_until
from .test_fork import MAINLINE, fork_world, pte, store

VARIANT = resolve_kernel("bug:gupfast-fork-no-write-protect-seq")


def _pin_inside_forks_window(kernel):
    """CPU1 forks; between folio_try_dup_anon_rmap_pte (the pin check passed, PG_anon_exclusive
    cleared) and the write-protect of the parent's PTE, CPU2 (a thread of the parent) runs
    pin_user_pages_fast(FOLL_WRITE) of that page as far as it can; then everything finishes
    and the parent (CPU0) stores to the page."""
    r = Run(kernel, fork_world())
    folio = r.m.frames[pte(r, 1, 4).pfn]
    r.apply(["start", 1, "fork", 3])
    step_until(r, 1, "folio_try_dup_anon_rmap_pte", limit=80)
    assert pte(r, 1, 4).write and not folio.anon_exclusive    # fork's window is open
    r.apply(["start", 2, "pin_user_pages", 4, 1, 1])
    while r.m.cpus[2].task is not None and r.apply(["step", 2]) is not None:
        pass
    r.drain()
    assert r.violation is None, r.violation
    assert r.m.pins[1].folio is not None
    store(r, 0, 4)
    r.drain()
    return r, folio, r.violation or r.quiesce()


def test_mainline_gup_fast_gives_up_while_fork_copies_and_the_slow_pin_waits_for_it():
    r, folio, v = _pin_inside_forks_window(MAINLINE)
    texts = [s.text for s in r.trace]
    # GUP-fast saw the odd seqcount and never walked; the slow path slept on mmap_lock
    assert any("write_protect_seq) = 1" in t for t in texts)
    assert not any("local_irq_save" in t for t in texts)
    assert v is None
    # the slow pin came after fork: its write fault gave the parent an exclusive page again
    pinned = r.m.pins[1].folio
    assert pte(r, 1, 4).pfn == pinned.pfn and pinned.anon_exclusive
    assert pinned.refcount >= 1 + GUP_PIN_COUNTING_BIAS


def test_without_the_seqcount_gup_fast_pins_a_page_fork_then_write_protects():
    r, folio, v = _pin_inside_forks_window(VARIANT)
    texts = [s.text for s in r.trace]
    # the commit's diagram: GUP-fast reads the writable PTE and grabs the page inside fork's
    # window, finds the PTE unchanged, and returns a page fork then write-protects and shares
    grab = next(i for i, t in enumerate(texts) if "try_grab_folio_fast" in t)
    wrprotect = next(i for i, t in enumerate(texts) if "wrprotect_ptes(parent)" in t)
    assert grab < wrprotect
    assert r.m.pins[1].folio is folio and r.m.stats["bug_path_hits"] >= 1
    assert v is not None and v.prop == "gup-pin-coherent"
    assert v.facts["pinned"] == folio.pfn and v.facts["mapped"] != folio.pfn


def test_a_pin_taken_before_fork_starts_is_copied_for_the_child_on_both_kernels():
    """Outside the window the variant behaves as mainline: a pin taken before fork makes
    folio_try_dup_anon_rmap_pte refuse, the child gets a copy, the parent keeps the pinned
    page writable and exclusive."""
    for kernel in (MAINLINE, VARIANT):
        r = Run(kernel, fork_world())
        r.apply(["start", 2, "pin_user_pages", 4, 1, 1])
        r.drain()
        r.apply(["start", 1, "fork", 3])
        r.drain()
        store(r, 0, 4)
        r.drain()
        assert r.violation is None and r.quiesce() is None, kernel.name
        assert pte(r, 1, 4).pfn == r.m.pins[1].folio.pfn


@pytest.mark.cost(15)
def test_every_interleaving_of_the_three_calls_on_both_kernels():
    """The commit's three actors as programs (the parent's fork, a thread's
    pin_user_pages_fast(FOLL_WRITE), the parent's store), every interleaving: the variant's
    shortest violation is gup-pin-coherent; mainline closes every one of them (16,957
    states, measured)."""
    progs = {0: [["access", 0, 4, 1]], 1: [["start", 1, "fork", 3]],
             2: [["start", 2, "pin_user_pages", 4, 1, 1]]}
    res = exhaust(VARIANT, fork_world(), progs)
    assert res.violation is not None and res.violation.prop == "gup-pin-coherent"
    assert len(res.schedule) == 48
    run, out = execute(VARIANT, fork_world(), res.schedule, strict=True)
    assert out.violation.prop == "gup-pin-coherent" and run.m.stats["bug_path_hits"] >= 1
    clean = exhaust(MAINLINE, fork_world(), progs)
    assert clean.violation is None and not clean.truncated
