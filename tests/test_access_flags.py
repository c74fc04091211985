"""A read fault's ptep_set_access_flags never writes the PTE on x86.

The fuzzer flagged mainline with `no-stale-translation-after-return` (tests/data/
madvfree-read-fault-access-flags.json, 14 actions): CPU1's MADV_FREE makes the anon PTE at
va 3 writable, old and clean and flushes; CPU2 is in a load fault on va 3 and reads that
PTE (pte_same holds under the PTL); CPU0, already flushed, stores to va 3: its walk refills
a writable entry and the hardware sets D in the PTE; then CPU2's fault ends with
ptep_set_access_flags. The model wrote back the entry the fault had read (young, clean), so
madvise returned while CPU0 cached D for a clean PTE: its later stores never set D again,
and reclaim would discard them as lazyfree (the MADV_FREE lost write).

A defect of the model, not of mainline. arch/x86/mm/pgtable.c: "On x86, the accessed and
dirty bits are tracked by hardware. However, do_wp_page calls this function to also make the
pte writeable at the same time the dirty bit is set. In that case we do actually need to
write the PTE." and the body is `if (changed && dirty) set_pte(ptep, entry);`: a read fault
(dirty = 0) never writes, and a write fault's entry already carries D and A, so no A/D bit
the hardware set under the fault's PTL is lost. The class: any kernel write of a live
present PTE computed from a value read in an earlier step loses the A/D bits the hardware
set in between; every other PTE writer in the model either writes in the step it reads, or
clears the PTE first (the get-and-clear of ptep_modify_prot_start / ptep_clear_flush), so
no walk can set D in between. The property is unchanged: a D cached for a clean PTE is a
translation the page tables no longer allow. The old behaviour (the generic
ptep_set_access_flags of mm/pgtable-generic.c, meant for software-managed A/D bits) is kept
as tests.variants:AccessFlagsGeneric, which the same schedule trips.
"""

import json
import os

import pytest

from mmfuzz.exhaust import exhaust
from mmfuzz.kernel import Mainline
from mmfuzz.run import Run, execute
from tests.variants import AccessFlagsGeneric

DATA = os.path.join(os.path.dirname(__file__), "data")
SCHEDULE = "madvfree-read-fault-access-flags.json"


def _load():
    with open(os.path.join(DATA, SCHEDULE), encoding="utf-8") as fh:
        return json.load(fh)


def test_fuzzer_schedule_is_clean_on_mainline_and_trips_generic_access_flags():
    d = _load()
    _, out = execute(Mainline, d["world"], d["schedule"], strict=True)
    assert out.violation is None, out.violation.why
    _, out = execute(AccessFlagsGeneric, d["world"], d["schedule"], strict=True)
    assert out.violation is not None
    assert out.violation.prop == "no-stale-translation-after-return"
    assert out.violation.facts["cpu"] == 0 and out.violation.facts["dirty"]


def test_read_fault_keeps_the_dirty_bit_the_hardware_set_meanwhile():
    """After the schedule, the PTE CPU0 stored through is dirty and CPU0's entry matches."""
    d = _load()
    run = Run(Mainline, d["world"])
    for action in d["schedule"]:
        assert run.apply(action) is not None, action
    table = run.m.mms[1].pmd[1]
    pte = table.ptes[3 % run.m.ptrs_per_pte]
    assert pte.present and pte.write and pte.dirty and pte.young
    assert run.m.stats.get("hw_dirty_set", 0) >= 1


def _world():
    return {"ncpus": 2, "cpu_mm": [1, 1], "ptrs_per_pte": 2, "npmds": 2, "nframes": 64,
            "files": [], "vmas": [{"mm": 1, "start": 2, "end": 4, "file": None,
                                   "shared": False, "writable": True}],
            "gather": {"local_max": 8, "batch_max": 510, "batch_count_max": 19},
            "prefault": [[0, 3, 1]]}


def test_ptep_set_access_flags_writes_only_for_a_write_fault():
    run = Run(Mainline, _world())
    table = run.m.mms[1].pmd[1]
    slot = 3 % run.m.ptrs_per_pte
    clean = table.ptes[slot]._replace(dirty=False, young=False)
    table.ptes[slot] = clean
    entry = clean._replace(young=True)
    assert run.kernel.ptep_set_access_flags(table, slot, entry, False) is True
    assert table.ptes[slot] == clean            # a read fault: the hardware sets A itself
    dirty = clean._replace(young=True, dirty=True, soft_dirty=True)
    assert run.kernel.ptep_set_access_flags(table, slot, dirty, True) is True
    assert table.ptes[slot] == dirty
    assert run.kernel.ptep_set_access_flags(table, slot, dirty, True) is False


LOAD, STORE = 0, 1
MADV = ["start", 1, "madvise_free", 3, 1]
# Every interleaving of MADV_FREE on CPU1 with accesses to va 3 on CPUs 0 and 2: the fuzzer's
# scenario, CPU0 loading first, and CPU2's load fault followed by its own store. A store
# fault (CPU2 storing) is clean on both: its entry carries D, so nothing the hardware set is lost.
SCENARIOS = [
    ({0: [["access", 0, 3, STORE]], 2: [["access", 2, 3, LOAD]]}, True),
    ({0: [["access", 0, 3, LOAD], ["access", 0, 3, STORE]], 2: [["access", 2, 3, LOAD]]}, True),
    ({0: [["access", 0, 3, STORE]], 2: [["access", 2, 3, LOAD], ["access", 2, 3, STORE]]}, True),
    ({0: [["access", 0, 3, STORE]], 2: [["access", 2, 3, STORE]]}, False),
]


@pytest.mark.parametrize("programs,generic_trips", SCENARIOS)
def test_every_interleaving_is_clean_on_mainline(programs, generic_trips):
    world = _load()["world"]
    programs = {**programs, 1: [MADV]}
    res = exhaust(Mainline, world, programs)
    assert not res.truncated and res.violation is None, res.violation
    res = exhaust(AccessFlagsGeneric, world, programs)
    assert not res.truncated
    if generic_trips:
        assert res.violation is not None
        assert res.violation.prop == "no-stale-translation-after-return"
    else:
        assert res.violation is None, res.violation
