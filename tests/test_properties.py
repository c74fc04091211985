"""Every property in properties/ fails on a hand-built bad state and passes on the matching
good state; plus the catalogued bug's schedule, which the buggy kernel fails and mainline
passes."""

from __future__ import annotations

import pytest

import properties
from mmfuzz.kernels import BUGS, resolve_kernel
from mmfuzz.kernel.gup import FOLL_PIN, GUP_PIN_COUNTING_BIAS
from mmfuzz.model import Folio, Pin, TlbEntry, tlb_key
from mmfuzz.run import Run, default_world, execute
from properties.accounting import accounting, accounting_quiescent
from properties.anon import (no_lost_write_after_madv_free_quiescent,
                             no_store_leak_into_unwritten_anon_quiescent)
from properties.dirty import dirty_data_preserved, dirty_data_preserved_quiescent
from properties.softdirty import soft_dirty_accurate
from properties.tlb import (no_stale_translation_after_return, no_stale_translation_quiescent,
                            no_use_after_free_via_tlb)

MAINLINE = resolve_kernel("mainline")
BUGGY = resolve_kernel("bug:zap-rmap-before-flush")
MM = 1
FILE = 1


def new_run() -> Run:
    return Run(MAINLINE, default_world())


def run_op(r: Run, cpu: int, op: str, *args) -> None:
    assert r.apply(["start", cpu, op, *args]) is not None
    r.drain()
    assert r.violation is None and not r.busy()


def fault_in(r: Run, cpu: int, vpn: int, write: bool) -> None:
    step = r.apply(["access", cpu, vpn, int(write)])
    if step.op == "fault":
        r.drain()
        step = r.apply(["access", cpu, vpn, int(write)])
        assert step.op != "fault"
    assert r.violation is None


def pte_slot(r: Run, vpn: int):
    return r.m.pte_lookup(r.m.mms[MM], vpn)


def cached(r: Run, index: int) -> Folio:
    return r.m.files[FILE].cache[index]


def stale_tlb_entry_after_munmap(r: Run):
    """munmap va 0 cleanly, then put CPU0's old W+D entry for it back; return the entry."""
    old = r.m.cpus[0].tlb[tlb_key(MM, 0)]
    run_op(r, 1, "munmap", 0, 1)
    return old


# ======================================================================================
# no-use-after-free-via-TLB
# ======================================================================================
def test_uaf_good_states():
    r = new_run()
    assert no_use_after_free_via_tlb(r.m, []) is None
    fault_in(r, 0, 4, False)                     # a zero-page entry (uid 0) is always fine
    assert r.m.cpus[0].tlb[tlb_key(MM, 4)].uid == 0
    assert no_use_after_free_via_tlb(r.m, []) is None


def test_uaf_fires_on_tlb_entry_to_freed_frame():
    r = new_run()
    m = r.m
    fault_in(r, 0, 4, True)
    key = tlb_key(MM, 4)
    entry = m.cpus[0].tlb[key]
    run_op(r, 1, "madvise_dontneed", 4, 1)
    assert m.frames[entry.pfn] is None and key not in m.cpus[0].tlb
    assert no_use_after_free_via_tlb(m, []) is None       # good: flushed before freeing
    m.cpus[2].tlb[key] = entry                            # bad: a stale entry survives
    v = no_use_after_free_via_tlb(m, [])
    assert v is not None and v.prop == "no-use-after-free-via-TLB"
    assert v.facts["cpu"] == 2 and v.facts["pfn"] == entry.pfn and v.facts["frame"] == "free"


def test_uaf_fires_on_tlb_entry_to_reused_frame():
    r = new_run()
    m = r.m
    fault_in(r, 0, 4, True)
    key = tlb_key(MM, 4)
    entry = m.cpus[0].tlb[key]
    run_op(r, 1, "madvise_dontneed", 4, 1)
    fault_in(r, 1, 5, True)                       # LIFO free list: the frame is reused
    reused = m.frames[entry.pfn]
    assert isinstance(reused, Folio) and reused.uid != entry.uid
    assert no_use_after_free_via_tlb(m, []) is None
    m.cpus[0].tlb[key] = entry
    v = no_use_after_free_via_tlb(m, [])
    assert v is not None and v.facts["frame"] == "reused"


def test_uaf_checked_by_run_after_each_step():
    r = new_run()
    m = r.m
    entry = m.cpus[0].tlb[tlb_key(MM, 1)]
    # bad state built by hand: CPU2 caches a translation to a frame that is free
    free_pfn = m.free_pfns[-1]
    m.cpus[2].tlb[tlb_key(MM, 1)] = entry._replace(pfn=free_pfn)
    r.apply(["access", 1, 0, 0])
    assert r.violation is not None and r.violation.prop == "no-use-after-free-via-TLB"
    assert r.violation_step == len(r.trace) - 1


# ======================================================================================
# dirty-data-preserved (step)
# ======================================================================================
def _clean_folio_with_new_data(r: Run):
    """Writeback file page 0, then set newer data with the PTE and PG_dirty clean."""
    run_op(r, 0, "writeback", FILE)
    folio = cached(r, 0)
    table, slot = pte_slot(r, 0)
    assert not folio.dirty and not table.ptes[slot].dirty
    folio.data = 99
    return folio, table, slot


def test_dirty_good_states():
    r = new_run()
    assert dirty_data_preserved(r.m, []) is None          # newer data, but PG_dirty + dirty PTE
    run_op(r, 0, "writeback", FILE)
    assert dirty_data_preserved(r.m, []) is None          # clean and on disk


def test_dirty_fires_on_clean_folio_newer_than_disk():
    r = new_run()
    folio, table, slot = _clean_folio_with_new_data(r)
    v = dirty_data_preserved(r.m, [])
    assert v is not None and v.prop == "dirty-data-preserved"
    assert v.facts == {"file": FILE, "index": 0, "pfn": folio.pfn, "data": 99, "disk": 1}


@pytest.mark.parametrize("rescue", ["pg_dirty", "dirty_pte", "wb_pending", "on_disk"])
def test_dirty_passes_when_something_still_owns_the_data(rescue):
    r = new_run()
    folio, table, slot = _clean_folio_with_new_data(r)
    assert dirty_data_preserved(r.m, []) is not None
    if rescue == "pg_dirty":
        folio.dirty = True
    elif rescue == "dirty_pte":
        table.ptes[slot] = table.ptes[slot]._replace(dirty=True)
    elif rescue == "wb_pending":
        folio.wb_pending = True
    else:
        r.m.files[FILE].disk[0] = 99
    assert dirty_data_preserved(r.m, []) is None


def test_dirty_dirty_pte_in_other_folio_does_not_count():
    r = new_run()
    _clean_folio_with_new_data(r)
    t1, s1 = pte_slot(r, 1)
    t1.ptes[s1] = t1.ptes[s1]._replace(dirty=True)        # dirty PTE of a different folio
    assert dirty_data_preserved(r.m, []) is not None


def test_dirty_fires_when_folio_left_cache_with_newer_data():
    r = new_run()
    m = r.m
    run_op(r, 1, "munmap", 0, 2)
    run_op(r, 1, "writeback", FILE)
    run_op(r, 1, "drop_cache", FILE, 0)
    assert 0 not in m.files[FILE].cache
    assert dirty_data_preserved(m, []) is None             # good: disk has v1
    m.expected[(FILE, 0)] = 7                             # bad: a v7 store never hit disk
    v = dirty_data_preserved(m, [])
    assert v is not None and v.facts["lost"] == 7 and v.facts["disk"] == 1


def test_dirty_fires_on_store_lost_event():
    r = new_run()
    ev = ("store_lost", 0, 0, 1, 5, "file folio no longer in the page cache")
    v = dirty_data_preserved(r.m, [ev])
    assert v is not None and v.facts["version"] == 5
    assert dirty_data_preserved(r.m, [("store", 0, 0, 1, 5)]) is None


# ======================================================================================
# dirty-data-preserved (quiescent)
# ======================================================================================
def test_dirty_quiescent():
    r = new_run()
    m = r.m
    v = dirty_data_preserved_quiescent(m)                  # bad: v1, v2 never written
    assert v is not None and v.prop == "dirty-data-preserved"
    assert v.facts["lost"] == 1 and v.facts["disk"] == 0
    run_op(r, 0, "writeback", FILE)
    assert dirty_data_preserved_quiescent(m) is None       # good
    m.files[FILE].disk[1] = 0                              # bad: the disk lost v2
    v = dirty_data_preserved_quiescent(m)
    assert v is not None and v.facts["index"] == 1 and v.facts["lost"] == 2


# ======================================================================================
# no-stale-translation-after-return
# ======================================================================================
def _madvise_returned(r: Run):
    """madvise(DONTNEED va 0) to completion; return the events of its returning step."""
    run_op(r, 1, "madvise_dontneed", 0, 1)
    events = list(r.m.events)
    assert [e[0] for e in events] == ["unmap_returned"]
    return events


def test_stale_after_return_good():
    r = new_run()
    events = _madvise_returned(r)
    assert no_stale_translation_after_return(r.m, events) is None
    # an entry outside the call's range is not its business
    r.m.cpus[2].tlb[tlb_key(MM, 1)] = r.m.cpus[0].tlb[tlb_key(MM, 1)]._replace(pfn=0)
    assert no_stale_translation_after_return(r.m, events) is None


def test_stale_after_return_fires_on_surviving_entry():
    r = new_run()
    m = r.m
    entry = m.cpus[0].tlb[tlb_key(MM, 0)]
    events = _madvise_returned(r)
    m.cpus[2].tlb[tlb_key(MM, 0)] = entry                 # bad: the flush missed CPU2
    v = no_stale_translation_after_return(m, events)
    assert v is not None and v.prop == "no-stale-translation-after-return"
    assert v.facts["cpu"] == 2 and v.facts["va"] == 0 and v.facts["pfn"] == entry.pfn
    # without the return event there is nothing to check at this step
    assert no_stale_translation_after_return(m, []) is None


def test_stale_after_return_excuses_later_revocation():
    r = new_run()
    m = r.m
    entry = m.cpus[0].tlb[tlb_key(MM, 0)]
    events = _madvise_returned(r)
    m.cpus[2].tlb[tlb_key(MM, 0)] = entry
    assert no_stale_translation_after_return(m, events) is not None
    # another thread revoked va 0 after this call last looked at it: its flush is owed there
    m.revoked_at[tlb_key(MM, 0)] = m.clock + 100
    assert no_stale_translation_after_return(m, events) is None


def test_stale_after_return_fires_on_writable_entry_over_readonly_pte():
    r = new_run()
    m = r.m
    folio = cached(r, 1)
    run_op(r, 1, "madvise_dontneed", 1, 1)
    events = list(m.events)
    assert [e[0] for e in events] == ["unmap_returned"]
    fault_in(r, 2, 1, False)                               # read-only, clean PTE again
    table, slot = pte_slot(r, 1)
    assert table.ptes[slot].pfn == folio.pfn and not table.ptes[slot].write
    key = tlb_key(MM, 1)
    m.cpus[1].tlb[key] = TlbEntry(folio.pfn, folio.uid, False, False)
    assert no_stale_translation_after_return(m, events) is None    # read-only entry: allowed
    m.cpus[1].tlb[key] = TlbEntry(folio.pfn, folio.uid, True, False)
    v = no_stale_translation_after_return(m, events)
    assert v is not None and v.facts["cpu"] == 1 and v.facts["writable"]


# ======================================================================================
# no-stale-translation (quiescent)
# ======================================================================================
def test_stale_quiescent_good():
    r = new_run()
    assert no_stale_translation_quiescent(r.m) is None
    run_op(r, 0, "writeback", FILE)
    fault_in(r, 1, 0, False)
    assert no_stale_translation_quiescent(r.m) is None


@pytest.mark.parametrize("how", ["pte_none", "other_pfn", "write_over_ro", "dirty_over_clean"])
def test_stale_quiescent_fires(how):
    r = new_run()
    m = r.m
    key = tlb_key(MM, 0)
    if how == "pte_none":
        entry = m.cpus[0].tlb[key]
        run_op(r, 1, "madvise_dontneed", 0, 1)
        m.cpus[0].tlb[key] = entry
    elif how == "other_pfn":
        f1 = cached(r, 1)
        m.cpus[0].tlb[key] = TlbEntry(f1.pfn, f1.uid, False, False)
    elif how == "write_over_ro":
        run_op(r, 1, "writeback", FILE)
        f0 = cached(r, 0)
        m.cpus[2].tlb[key] = TlbEntry(f0.pfn, f0.uid, True, False)
    else:
        table, slot = pte_slot(r, 0)
        table.ptes[slot] = table.ptes[slot]._replace(dirty=False)
        assert m.cpus[0].tlb[key].dirty and m.cpus[0].tlb[key].write
    v = no_stale_translation_quiescent(m)
    assert v is not None and v.prop == "no-stale-translation-after-return"
    assert v.facts["va"] == 0


# ======================================================================================
# soft-dirty-accurate
# ======================================================================================
def _clear_refs_after_store(r: Run):
    """CPU0 stores to va 4 (cached writable and dirty), then clear_refs runs on CPU1 to
    completion; returns CPU0's old entry and the events of clear_refs' returning step."""
    fault_in(r, 0, 4, True)
    entry = r.m.cpus[0].tlb[tlb_key(MM, 4)]
    run_op(r, 1, "clear_refs")
    events = list(r.m.events)
    assert [e[0] for e in events] == ["softdirty_cleared"]
    return entry, events


def test_soft_dirty_good_after_real_clear_refs():
    r = new_run()
    _, events = _clear_refs_after_store(r)
    table, slot = pte_slot(r, 4)
    pte = table.ptes[slot]
    assert not pte.write and not pte.soft_dirty and pte.dirty      # wrprotected, D kept
    assert tlb_key(MM, 4) not in r.m.cpus[0].tlb                    # flush_tlb_mm reached CPU0
    assert soft_dirty_accurate(r.m, events) is None
    fault_in(r, 0, 4, True)                    # the next store faults and sets soft-dirty
    assert table.ptes[slot].soft_dirty and table.ptes[slot].write


def test_soft_dirty_fires_on_surviving_writable_dirty_entry():
    r = new_run()
    entry, events = _clear_refs_after_store(r)
    r.m.cpus[2].tlb[tlb_key(MM, 4)] = entry    # bad: the W+D entry outlived the call
    v = soft_dirty_accurate(r.m, events)
    assert v is not None and v.prop == "soft-dirty-accurate" and v.facts["cpu"] == 2
    assert soft_dirty_accurate(r.m, []) is None    # checked only when the call returns


def test_soft_dirty_writable_clean_entry_is_harmless():
    r = new_run()
    entry, events = _clear_refs_after_store(r)
    r.m.cpus[2].tlb[tlb_key(MM, 4)] = entry._replace(dirty=False)  # a store re-walks, faults
    assert soft_dirty_accurate(r.m, events) is None


def test_soft_dirty_excuses_later_revocation():
    r = new_run()
    entry, events = _clear_refs_after_store(r)
    r.m.cpus[2].tlb[tlb_key(MM, 4)] = entry
    r.m.revoked_at[tlb_key(MM, 4)] = r.m.clock + 100   # someone changed the PTE afterwards
    assert soft_dirty_accurate(r.m, events) is None


# ======================================================================================
# accounting (step)
# ======================================================================================
def test_accounting_good():
    r = new_run()
    assert accounting(r.m, []) is None
    fault_in(r, 0, 4, False)                              # special PTE: the zero page
    assert accounting(r.m, []) is None
    assert accounting(r.m, [("free", 7, 9, 0, False)]) is None    # a plain free is fine


def test_accounting_fires_on_pte_mapping_freed_frame():
    r = new_run()
    m = r.m
    fault_in(r, 0, 4, True)
    table, slot = pte_slot(r, 4)
    pte = table.ptes[slot]
    run_op(r, 1, "madvise_dontneed", 4, 1)
    assert m.frames[pte.pfn] is None and accounting(m, []) is None
    table.ptes[slot] = pte                                # bad: PTE points at a free frame
    v = accounting(m, [])
    assert v is not None and v.prop == "accounting"
    assert v.facts == {"mm": MM, "va": 4, "pfn": pte.pfn}


def test_accounting_fires_on_pte_mapping_table_frame():
    r = new_run()
    m = r.m
    table, slot = pte_slot(r, 0)
    table.ptes[slot] = table.ptes[slot]._replace(pfn=table.pfn)  # maps a page-table page
    assert accounting(m, []) is not None


def test_accounting_fires_on_free_of_mapped_or_cached_folio():
    r = new_run()
    assert accounting(r.m, [("free", 1, 1, 1, True)]).facts["mapcount"] == 1
    v = accounting(r.m, [("free", 1, 1, 0, True)])
    assert v is not None and "page cache" in v.why


def test_accounting_fires_on_pmd_to_freed_table():
    r = new_run()
    table = r.m.mms[MM].pmd[0]
    table.freed = True
    v = accounting(r.m, [])
    assert v is not None and v.facts == {"mm": MM, "table": table.tid}


def test_accounting_fires_on_cache_holding_freed_folio():
    r = new_run()
    run_op(r, 0, "munmap", 0, 4)                          # unmapped, still cached
    assert accounting(r.m, []) is None
    cached(r, 1).freed = True
    v = accounting(r.m, [])
    assert v is not None and v.facts["index"] == 1


# ======================================================================================
# accounting (quiescent)
# ======================================================================================
def test_accounting_quiescent_good():
    r = new_run()
    assert accounting_quiescent(r.m) is None
    fault_in(r, 0, 5, True)
    run_op(r, 1, "munmap", 0, 1)
    assert accounting_quiescent(r.m) is None


@pytest.mark.parametrize("how", ["mapcount_high", "mapcount_low", "refcount_leak",
                                 "refcount_short", "pincount", "table_unreachable",
                                 "extra_pte"])
def test_accounting_quiescent_fires(how):
    r = new_run()
    m = r.m
    f0 = cached(r, 0)
    if how == "mapcount_high":
        f0.mapcount += 1
    elif how == "mapcount_low":
        f0.mapcount -= 1
    elif how == "refcount_leak":
        f0.refcount += 1
    elif how == "refcount_short":
        f0.refcount -= 1
    elif how == "pincount":
        m.pins[1] = Pin(1, f0, MM, 0, FOLL_PIN)           # a pin without its reference
    elif how == "table_unreachable":
        m.mms[MM].pmd[0] = None
    else:
        fault_in(r, 0, 2, False)                          # a second PTE to f0, no rmap
        table, slot = pte_slot(r, 2)
        table.ptes[slot] = table.ptes[slot]._replace(pfn=f0.pfn)
    v = accounting_quiescent(m)
    assert v is not None and v.prop == "accounting"


def test_accounting_quiescent_pin_with_reference_is_fine():
    r = new_run()
    f0 = cached(r, 0)
    r.m.pins[1] = Pin(1, f0, MM, 0, FOLL_PIN)
    f0.refcount += GUP_PIN_COUNTING_BIAS
    assert accounting_quiescent(r.m) is None


def test_a_forced_write_into_the_page_cache_through_a_private_mapping_is_flagged():
    """no-write-to-readonly-file's event half (no_write_through_private_mapping): a
    "gup_store" (proc_mem_write's copy_to_user_page) into a page-cache folio through a
    MAP_PRIVATE file VMA, whatever the file's open mode; the same store into an anon folio
    (the COW copy mainline makes), or through a shared VMA, is not."""
    from properties.gup import no_write_through_private_mapping
    w = default_world()
    w["vmas"][0] = dict(w["vmas"][0], shared=False)
    w["prefault"] = []                            # (a write prefault would COW the page)
    r = Run(MAINLINE, w)
    fault_in(r, 0, 0, False)                      # a read fault maps the page-cache folio
    pfn = r.m.mms[MM].pmd[0].ptes[0].pfn
    assert r.m.frames[pfn].mapping == 1
    v = no_write_through_private_mapping(r.m, [("gup_store", MM, 0, pfn, 9, 1)])
    assert v is not None and v.prop == "no-write-to-readonly-file" and v.facts["pfn"] == pfn
    assert no_write_through_private_mapping(r.m, []) is None
    anon = r.m.alloc_folio()
    assert no_write_through_private_mapping(r.m, [("gup_store", MM, 0, anon.pfn, 9, 1)]) is None
    shared = Run(MAINLINE, default_world())
    fault_in(shared, 0, 0, False)
    spfn = shared.m.mms[MM].pmd[0].ptes[0].pfn
    assert no_write_through_private_mapping(shared.m, [("gup_store", MM, 0, spfn, 9, 1)]) is None


# ======================================================================================
# coverage: every exported property has a bad-state test above
# ======================================================================================
def test_every_property_is_covered():
    tested = {no_use_after_free_via_tlb, dirty_data_preserved, no_stale_translation_after_return,
              soft_dirty_accurate, accounting, dirty_data_preserved_quiescent,
              no_stale_translation_quiescent, accounting_quiescent,
              no_lost_write_after_madv_free_quiescent,
              no_store_leak_into_unwritten_anon_quiescent}
    # the COW/GUP properties and no-freed-page-table-walk: bad states in tests/test_gup_properties.py
    from properties.gup import (cow_isolation, gup_pin_coherent, gup_pin_coherent_quiescent,
                                no_write_through_private_mapping, no_write_to_readonly_file)
    from properties.pgtable import no_freed_page_table_walk
    tested |= {cow_isolation, gup_pin_coherent, gup_pin_coherent_quiescent,
               no_write_to_readonly_file, no_write_through_private_mapping,
               no_freed_page_table_walk}
    from properties.vma import pte_within_vma_protection_quiescent
    tested |= {pte_within_vma_protection_quiescent}
    assert set(properties.STEP_PROPERTIES) | set(properties.QUIESCENT_PROPERTIES) == tested
    names = {v.prop for v in _one_violation_each()}
    assert names == set(properties.PROPERTY_NAMES)


def _one_violation_each():
    out = []
    r = new_run()
    out.append(dirty_data_preserved_quiescent(r.m))
    out.append(accounting(r.m, [("free", 1, 1, 1, True)]))
    out.append(dirty_data_preserved(r.m, [("store_lost", 0, 0, 1, 5, "x")]))
    r.m.cpus[1].tlb[tlb_key(MM, 1)] = TlbEntry(r.m.free_pfns[-1], 77, True, True)
    out.append(no_use_after_free_via_tlb(r.m, []))
    out.append(no_stale_translation_quiescent(r.m))
    r2 = new_run()
    entry, events = _clear_refs_after_store(r2)
    r2.m.cpus[2].tlb[tlb_key(MM, 4)] = entry
    out.append(soft_dirty_accurate(r2.m, events))
    r3 = new_run()
    fault_in(r3, 0, 4, True)
    _anon_folio(r3).data = 0  # the store never reached the page
    out.append(no_lost_write_after_madv_free_quiescent(r3.m))
    r4 = new_run()
    fault_in(r4, 0, 4, True)
    _vma_at(r4, 4).writable = False   # as if VM_WRITE were cleared and the PTE kept
    from properties.vma import pte_within_vma_protection_quiescent
    out.append(pte_within_vma_protection_quiescent(r4.m))
    from .test_gup_properties import one_violation_each as gup_violations
    out.extend(gup_violations())
    assert all(v is not None for v in out)
    return out


# ======================================================================================
# no-lost-write-after-madv-free and the swap half of accounting
# ======================================================================================
def _anon_folio(r: Run):
    table, slot = pte_slot(r, 4)
    return r.m.frames[table.ptes[slot].pfn]


def test_a_store_leaking_into_an_unwritten_anon_page_is_flagged():
    """No store reached va 5: it must read 0. KSM merging a page a CPU still writes through
    a stale TLB entry (b3a81d0841a9 reverted) makes va 5 map the page va 4's store went to;
    here va 5's PTE is pointed at va 4's folio by hand."""
    r = new_run()
    fault_in(r, 0, 4, True)
    fault_in(r, 0, 5, False)                     # a read: the zero page, reads 0
    assert no_store_leak_into_unwritten_anon_quiescent(r.m) is None
    t5, s5 = pte_slot(r, 5)
    t5.ptes[s5] = t5.ptes[s5]._replace(pfn=_anon_folio(r).pfn, special=False)
    v = no_store_leak_into_unwritten_anon_quiescent(r.m)
    assert v.prop == "no-lost-write-after-madv-free" and v.facts["va"] == 5
    assert v.facts["reads"] == _anon_folio(r).data and v.facts["want"] == 0
    # a page the world's prefault wrote is not checked (its version is not noted)
    r.m.oracle.setup_written[(MM << 32) | 5] = True
    assert no_store_leak_into_unwritten_anon_quiescent(r.m) is None


def test_no_lost_write_good_and_bad_states():
    r = new_run()
    fault_in(r, 0, 4, True)                      # v3 stored to the anon page
    assert no_lost_write_after_madv_free_quiescent(r.m) is None
    folio = _anon_folio(r)
    want = folio.data
    folio.data = 0                               # as if the folio had been discarded
    v = no_lost_write_after_madv_free_quiescent(r.m)
    assert v is not None and v.prop == "no-lost-write-after-madv-free"
    assert v.facts["reads"] == 0 and v.facts["want"] == want
    # after MADV_FREE returns, reading 0 is allowed: the page may have been freed
    folio.data = want
    run_op(r, 1, "madvise_free", 4, 1)
    folio.data = 0
    assert no_lost_write_after_madv_free_quiescent(r.m) is None
    folio.data = 12345                           # but not some other data
    assert no_lost_write_after_madv_free_quiescent(r.m) is not None


def test_accounting_quiescent_swap_map_must_count_swap_ptes():
    from mmfuzz.model import SwapPte
    r = new_run()
    fault_in(r, 0, 4, True)
    folio = _anon_folio(r)
    table, slot = pte_slot(r, 4)
    table.ptes[slot] = SwapPte(1, exclusive=True)  # a swap PTE whose slot swap_map ignores
    folio.mapcount = 0
    folio.refcount = 0
    r.m.free_folio(folio)
    v = accounting_quiescent(r.m)
    assert v is not None and "swap slot 1" in v.why
    r.m.swap.swap_map[1] = 1
    r.m.swap.data[1] = folio.data
    assert accounting_quiescent(r.m) is None


# ======================================================================================
# the catalogued bug: zap-rmap-before-flush
# ======================================================================================
BUG_ACTS = ([["start", 1, "madvise_dontneed", 0, 1]] + [["step", 1]] * 6
            + [["start", 2, "writeback", 1]] + [["step", 2]] * 12 + [["access", 0, 0, 1]])


def test_bug_registry():
    assert resolve_kernel("bug:zap-rmap-before-flush") is BUGS[0].kernel
    assert BUGS[0].prop == "dirty-data-preserved"


def test_zap_rmap_before_flush_loses_dirty_data():
    run, out = execute(BUGGY, default_world(), BUG_ACTS, strict=True)
    assert out.violation is not None
    assert out.violation.prop == "dirty-data-preserved"
    assert out.phase == "step" and out.step == len(BUG_ACTS) - 1
    # the store went through CPU0's stale W+D entry after writeback cleaned the folio
    assert out.violation.facts["index"] == 0 and out.violation.facts["disk"] == 1
    folio = run.m.files[FILE].cache[0]
    assert not folio.dirty and folio.mapcount == 0
    assert run.m.stats.get("bug_path_hits") == 1


def test_mainline_clean_on_bug_schedule():
    run, out = execute(MAINLINE, default_world(), BUG_ACTS)
    assert out.violation is None
    assert run.violation is None
    # the store still reached disk after quiescence
    m = run.m
    assert m.files[FILE].disk[0] == m.expected[(FILE, 0)] >= 3


def test_buggy_kernel_clean_on_serial_schedule():
    """The bug needs the race: run serially, the buggy kernel loses nothing."""
    run = Run(BUGGY, default_world())
    run_op(run, 1, "madvise_dontneed", 0, 1)
    run_op(run, 2, "writeback", 1)
    fault_in(run, 0, 0, True)
    assert run.quiesce() is None


# ======================================================================================
# pte-within-vma-protection
# ======================================================================================
def _vma_at(r: Run, vpn: int):
    return r.m.mms[MM].find_vma(vpn)


def test_pte_within_vma_protection_good_and_bad_states():
    from properties.vma import pte_within_vma_protection_quiescent as check
    r = new_run()
    fault_in(r, 0, 4, True)                      # a writable anon PTE in a VM_WRITE VMA
    assert check(r.m) is None
    run_op(r, 1, "mprotect", 4, 2, 1)            # mprotect(PROT_READ) write-protects it
    assert check(r.m) is None
    r = new_run()
    fault_in(r, 0, 4, True)
    _vma_at(r, 4).writable = False               # VM_WRITE cleared, the PTE left writable
    v = check(r.m)
    assert v is not None and v.prop == "pte-within-vma-protection" and v.facts["va"] == 4
    r = new_run()
    fault_in(r, 0, 5, True)
    r.m.mms[MM].vmas.remove(_vma_at(r, 5))       # a writable PTE no VMA covers
    v = check(r.m)
    assert v is not None and v.facts["vma"] is None
