"""clear_soft_dirty keeps a dirty bit the hardware set while it ran (fs/proc/task_mmu.c: the
PTE it writes back is pte_clear_soft_dirty(pte_wrprotect(old_pte)), old_pte being what
ptep_modify_prot_start returned, not the value read before pte_is_pinned)."""

from mmfuzz.kernel import Mainline
from mmfuzz.kernels import resolve_kernel
from mmfuzz.run import Run, default_world


def _until(r, cpu, text):
    """Step ``cpu`` (taking IPIs as they come) until its last step's label contains text."""
    for _ in range(500):
        if r.ipi_cpus():
            r.apply(["ipi", r.ipi_cpus()[0]])
            continue
        step = r.apply(["step", cpu])
        if step is not None and step.cpu == cpu and text in step.text:
            return step
    raise AssertionError(f"CPU{cpu} never reached {text!r}")


def _drain_cpu(r, cpu):
    while r.m.cpus[cpu].task is not None or r.ipi_cpus():
        if r.ipi_cpus():
            r.apply(["ipi", r.ipi_cpus()[0]])
        else:
            r.apply(["step", cpu])


def _store_during_clear_soft_dirty(kernel):
    """An anonymous page made writable and clean by MADV_FREE (its flush done); clear_refs
    (soft-dirty) reads its PTE and tests pte_is_pinned; CPU1 stores to it then (the walk of
    the writable, clean PTE sets D); clear_refs goes on to ptep_modify_prot_start/commit."""
    r = Run(kernel, default_world())
    r.apply(["access", 1, 4, 1])          # a store faults in an anonymous page: W, D
    _drain_cpu(r, 1)
    r.apply(["start", 0, "madvise_free", 4, 1])
    _drain_cpu(r, 0)                      # pte_mkclean keeps W; the flush reaches CPU1
    table, slot = r.m.pte_lookup(r.m.mms[1], 4)
    assert table.ptes[slot].write and not table.ptes[slot].dirty
    assert not any(k & 0xffffffff == 4 for k in r.m.cpus[1].tlb)
    r.apply(["start", 0, "clear_refs"])
    _until(r, 0, "pte_is_pinned va 0x4")
    store = r.apply(["access", 1, 4, 1])
    assert store is not None and table.ptes[slot].dirty, store.text
    _until(r, 0, "ptep_modify_prot_commit va 0x4")
    return r, table.ptes[slot]


def test_a_dirty_bit_set_during_clear_soft_dirty_survives_it():
    r, pte = _store_during_clear_soft_dirty(Mainline)
    assert pte.dirty and not pte.write and not pte.soft_dirty
    _drain_cpu(r, 0)
    assert r.violation is None and r.quiesce() is None


def test_the_same_store_under_the_ksm_variant_loses_nothing_either():
    """The schedule that first showed the stale value: under bug:ksm-madvfree-clearrefs
    (whose clear_refs is the older one) the same store keeps its D bit too."""
    r, pte = _store_during_clear_soft_dirty(resolve_kernel("bug:ksm-madvfree-clearrefs"))
    assert pte.dirty and not pte.write
