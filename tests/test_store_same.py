"""A user store of the value the page already holds (hw.STORE_SAME, ["access", cpu, vpn, 2]).

A program that writes back what it read (memset of a zeroed page, a counter rewritten with
its value) makes a store like any other: on x86 the walk sets D in the PTE and the store
faults on a read-only or missing PTE whatever the value; only the contents stay. That is
the first row of the ksm-madvfree-clearrefs diagram (b3a81d0841a9, Nadav Amit's scenario):
"write the same value the page already has", which leaves the page identical to its KSM
twin while the CPU holds a writable, dirty translation for it.
"""

import json
import random

import pytest

from mmfuzz import corpus
from mmfuzz.explore import STORE_SAME_SHARE, _shrink, access_kind
from mmfuzz.hw import STORE_SAME
from mmfuzz.kernel import Mainline
from mmfuzz.kernels import resolve_kernel
from mmfuzz.run import Run, default_world, execute
from mmfuzz.trace import render
from strategies.machine import ACCESS_KINDS
from tests.test_deferred import _ksm_scenario, _pte, _step_until


def _world(prefault=()):
    w = default_world()
    w["prefault"] = [list(p) for p in prefault]
    return w


def test_store_same_faults_like_a_store_and_leaves_the_contents():
    run = Run(Mainline, _world())
    st = run.apply(["access", 0, 4, STORE_SAME])     # anon va 4 not mapped: a write fault
    assert st.op == "fault" and st.text == "store-same va 0x4: page fault"
    run.drain()
    pte = _pte(run, 4)
    assert pte.write and pte.dirty
    st = run.apply(["access", 0, 4, STORE_SAME])
    assert st.text == f"store-same v0 va 0x4 -> pfn {pte.pfn} [TLB fill WD]"
    assert run.m.frames[pte.pfn].data == 0 and run.m.next_version == 1   # no new version
    assert run.quiesce() is None


def test_store_same_sets_the_dirty_bit_of_a_writable_clean_pte():
    """MADV_FREE leaves the PTE writable and clean and flushes; the next store of the same
    value re-walks and sets D in hardware (SDM: D is set on a write, not on a change), so
    the page is no longer lazily freeable and must keep its contents."""
    run = Run(Mainline, _world())
    run.apply(["access", 0, 4, 1])                     # the write fault
    run.drain()
    run.apply(["access", 0, 4, 1])                     # va 4 holds v1, cached W+D
    pfn = _pte(run, 4).pfn
    data = run.m.frames[pfn].data
    assert data != 0
    run.apply(["start", 1, "madvise_free", 4, 1])
    run.drain()
    assert _pte(run, 4).write and not _pte(run, 4).dirty
    st = run.apply(["access", 0, 4, STORE_SAME])
    assert "TLB fill W-" not in st.text and "[TLB fill WD]" in st.text
    assert _pte(run, 4).dirty and run.m.stats["hw_dirty_set"] == 1
    assert run.m.frames[pfn].data == data
    # the oracle: the page must read that value from now on (madvise returned before the
    # store); its writer is still the process that stored it first
    vid, want, _ = run.m.oracle.anon_expected[(1 << 32) | 4]
    assert want == data and run.m.oracle.writer[data][0] == 1
    run.apply(["start", 1, "reclaim"])
    run.drain()
    assert run.m.anon_content(run.m.mms[1], 4) == data
    assert run.quiesce() is None


def test_store_same_to_a_file_page_must_reach_the_disk():
    run = Run(Mainline, _world())
    run.apply(["access", 0, 1, STORE_SAME])
    run.drain()
    run.apply(["access", 0, 1, STORE_SAME])
    assert run.m.expected[(1, 1)] == 0
    assert run.quiesce() is None


def test_the_diagram_first_row_as_written_leaks_the_store_on_the_variant_only():
    """ksm-madvfree-clearrefs with CPU0's first access the diagram's "write the same value
    the page already has" (in _ksm_scenario a load stands in for it): the page stays
    identical to va 5 while CPU0 caches it writable and dirty, and the race runs as before
    on the three-CPU world (ksmd on CPU0, the scanned page the stale one); mainline's
    clear_refs blocks on the write lock, and its KSM flushes."""
    for kernel, bad in ((resolve_kernel("bug:ksm-madvfree-clearrefs"), True), (Mainline, False)):
        w = _world()
        run = Run(kernel, w)
        for va in (4, 5):
            run.apply(["access", 0, va, 1])
            run.drain()
        run.apply(["start", 2, "clear_refs"])
        run.drain()
        run.apply(["access", 0, 4, 1])            # write fault: wp_page_reuse
        run.drain()
        st = run.apply(["access", 0, 4, STORE_SAME])
        assert "store-same v0" in st.text and "[TLB fill WD]" in st.text
        run.apply(["start", 1, "madvise_free", 4, 1])
        _step_until(run, 1, "madvise_free_pte_range: pte_unmap_unlock")
        run.apply(["start", 2, "clear_refs"])
        if bad:
            _step_until(run, 2, "clear_refs_pte_range: pte_unmap_unlock")
        run.apply(["start", 0, "ksmd", 0])
        while run.m.cpus[0].task is not None:
            if 0 in run.runnable_cpus():
                run.apply(["step", 0])
            elif run.ipi_cpus():
                run.apply(["ipi", next(c for c in run.ipi_cpus() if c != 0)])
            else:
                run.apply(["step", run.runnable_cpus()[0]])
        assert any("clean and read-only, no flush" in s.text for s in run.trace) == bad
        run.apply(["access", 0, 4, 1])
        run.drain()
        v = run.quiesce()
        if bad:
            assert v is not None and v.prop == "no-lost-write-after-madv-free" and v.facts["va"] == 5
            text = render(run, "t")
            assert "store-same v0 va 0x4" in text
        else:
            assert v is None


def test_the_swarm_draw_keeps_its_random_stream():
    """One uniform draw decides load, store or store-same: exactly the stores of the old
    draw (r < store_bias), the lowest STORE_SAME_SHARE of them stores of the same value."""
    rng = random.Random(7)
    kinds = {0: 0, 1: 0, STORE_SAME: 0}
    for _ in range(20000):
        r = rng.random()
        k = access_kind(r, 0.5)
        assert (k != 0) == (r < 0.5)
        kinds[k] += 1
    share = kinds[STORE_SAME] / (kinds[1] + kinds[STORE_SAME])
    assert abs(share - STORE_SAME_SHARE) < 0.01


def test_hypothesis_draws_store_same_rarely_and_shrinks_it_to_a_store():
    values = ACCESS_KINDS.wrapped_strategy.elements if hasattr(ACCESS_KINDS, "wrapped_strategy") \
        else ACCESS_KINDS.elements
    assert values[0] == 1 and list(values).count(STORE_SAME) == 1
    stores = sum(1 for v in values if v)
    assert list(values).count(STORE_SAME) / stores == STORE_SAME_SHARE


def test_the_shrinker_turns_a_store_same_into_a_store_where_the_failure_stays():
    w = _world()
    acts = [["access", 0, 4, STORE_SAME], ["step", 0], ["access", 1, 5, STORE_SAME]]

    def fails(world, actions):   # the failure needs a store of any kind at va 5
        return any(a[0] == "access" and a[2] == 5 and a[3] for a in actions)

    _, out = _shrink(Mainline, w, acts, fails, 200)
    assert out == [["access", 1, 5, 1]]


def _cx(schedule, kernel="mainline"):
    return corpus.Counterexample(kernel, _world(), schedule, "", "a pass file for the test",
                                 found={"by": "hand"})


def test_corpus_writes_the_lowest_version_and_reads_both(tmp_path):
    plain = [["access", 0, 4, 1], ["until", 0, "vma_end_read"]]
    same = [["access", 0, 4, STORE_SAME], ["until", 0, "vma_end_read"], ["access", 0, 4, STORE_SAME]]
    assert _cx(plain).to_json()["format_version"] == 1
    assert _cx(same).to_json()["format_version"] == 2
    for name, sched in (("plain", plain), ("same", same)):
        p = tmp_path / f"{name}.json"
        p.write_text(json.dumps(_cx(sched).to_json()))
        v = corpus.check(corpus.load(str(p)))
        assert v.ok, v.message
    path = corpus.save(_cx(same), str(tmp_path / "corpus"))
    assert json.load(open(path))["format_version"] == 2
    assert "store-same v0 va 0x4" in open(path[:-5] + ".txt").read()


def test_a_version_1_file_with_a_store_same_is_bad_input(tmp_path):
    d = _cx([["access", 0, 4, STORE_SAME]]).to_json()
    p = tmp_path / "bad.json"
    for version, schedule, message in ((1, d["schedule"], "is format_version 2"),
                                       (2, [["access", 0, 4, 3]], "out of range 0..2")):
        p.write_text(json.dumps(dict(d, format_version=version, schedule=schedule)))
        with pytest.raises(corpus.CorpusError, match=message):
            corpus.load(str(p))


def test_a_schedule_with_store_same_replays_deterministically():
    w = _world([(0, 4, 1)])
    acts = [["access", 0, 4, STORE_SAME], ["start", 1, "madvise_free", 4, 1],
            ["access", 0, 4, STORE_SAME]]
    r1, o1 = execute(Mainline, w, acts, strict=True)
    r2, o2 = execute(Mainline, w, acts, strict=True)
    assert [s.text for s in r1.trace] == [s.text for s in r2.trace]
    assert o1.violation is None
