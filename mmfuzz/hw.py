"""The x86 hardware the kernel relies on: TLB fill, A/D bit updates, faults, IPI delivery.

Rules (arch/x86/include/asm/tlbflush.h, mm/rmap.c try_to_unmap_one comment, SDM):
- only present PTEs are cached; a CPU may keep an entry until it is flushed or evicted;
- a load may use any cached entry;
- a store through an entry cached writable and dirty never touches the PTE;
- a store through an entry cached writable but clean re-walks and atomically sets D in the
  live PTE, and faults if the PTE is now none or read-only ("a clear->dirty transition on a
  cached TLB entry is written through and traps if the PTE is unmapped");
- a store without write permission faults, and the faulting translation is dropped, so
  permission upgrades need no flush.

The store sets A and D whatever value it writes (Intel SDM vol. 3A, 4.8 "Accessed and Dirty
Flags": the dirty flag is set on a write to the page, not on a change of its contents), so
a user store of the value the page already holds (STORE_SAME: a program writing back what
it read, memset of a zeroed page) walks, faults and dirties exactly as any store; only the
contents and the oracle's notes differ.
"""

from __future__ import annotations

from .model import Folio, Machine, TlbEntry, tlb_key
from .kernel.tlbflush import flush_cpu_tlb

#: the access kinds of an ["access", cpu, vpn, kind] action (run.py): a load, a store of a
#: new version, a store of the value the page already holds
LOAD, STORE, STORE_SAME = 0, 1, 2
ACCESS_KINDS = {LOAD: "load", STORE: "store", STORE_SAME: "store-same"}


def page_walk(m: Machine, cpu, vpn: int, write: bool):
    """Hardware page walk with the A/D update as one locked access. Returns the new entry, or
    None for a page fault."""
    mm = m.mms[cpu.mm_id]
    pmd_index, slot = divmod(vpn, m.ptrs_per_pte)
    if pmd_index >= len(mm.pmd):
        return None
    table = mm.pmd[pmd_index]
    if table is None:
        return None
    if table.freed:
        m.events.append(("walk_freed_table", cpu.cpu_id, table.tid, "hardware walk"))
        return None
    pte = table.ptes[slot]
    if pte is None or not pte.present or (write and not pte.write):
        return None
    new = pte._replace(young=True, dirty=pte.dirty or write)
    if new != pte:
        table.ptes[slot] = new
        if write and not pte.dirty:
            # checker's note: a store through a writable, clean PTE set D in hardware
            m.stats["hw_dirty_set"] = m.stats.get("hw_dirty_set", 0) + 1
    frame = m.frames[pte.pfn]
    uid = frame.uid if isinstance(frame, Folio) else 0
    return TlbEntry(pte.pfn, uid, new.write, new.dirty)


def user_access(m: Machine, cpu_id: int, vpn: int, write) -> tuple[str, str]:
    """One user load or store by the thread running on ``cpu_id``; ``write`` is an access
    kind (LOAD, STORE, STORE_SAME; a bool is LOAD or STORE). Returns (outcome, label) where
    outcome is "done" or "fault"."""
    cpu = m.cpus[cpu_id]
    key = tlb_key(cpu.mm_id, vpn)
    entry = cpu.tlb.get(key)
    how = "TLB hit"
    wclean = False
    if entry is not None and write and not (entry.write and entry.dirty):
        # W=1,D=0: the CPU re-walks to set D; W=0: permission fault drops the entry.
        del cpu.tlb[key]
        how = "TLB re-walk"
        wclean = entry.write
        entry = None
    if entry is None:
        entry = page_walk(m, cpu, vpn, write != 0)
        if entry is None:
            return "fault", f"{ACCESS_KINDS[write]} va {vpn:#x}: page fault"
        cpu.tlb[key] = entry
        if how == "TLB hit":
            how = "TLB fill"
        elif wclean:
            # checker's note: a store through a writable-clean TLB entry re-walked and set D
            m.stats["wclean_tlb_store"] = m.stats.get("wclean_tlb_store", 0) + 1
    flags = ("W" if entry.write else "-") + ("D" if entry.dirty else "-")
    frame = m.frames[entry.pfn]
    if not write:
        data = frame.data if isinstance(frame, Folio) else 0
        m.events.append(("load", cpu_id, vpn, entry.pfn, data))
        return "done", f"load va {vpn:#x} -> pfn {entry.pfn} v{data} [{how} {flags}]"
    if write == STORE_SAME:
        # the frame keeps its contents (the value written is the one it holds) and no new
        # version exists; the facts are a store's, with that value: the oracle notes that the
        # page must keep it ("store_same": the version's writer stays the process that first
        # stored it), and a store into a file folio no longer in the page cache, or into a
        # freed frame, is reported as such (the stale writable translation exists whatever
        # the value)
        value = frame.data if isinstance(frame, Folio) else 0
        kind = "store_same"
        label = f"store-same v{value} va {vpn:#x} -> pfn {entry.pfn} [{how} {flags}]"
    else:
        value = m.next_version
        m.next_version += 1
        kind = "store"
        label = f"store v{value} va {vpn:#x} -> pfn {entry.pfn} [{how} {flags}]"
        if isinstance(frame, Folio):
            # a frame freed or reused since the fill: the store corrupts whatever is there now
            frame.data = value
    events = m.events
    if isinstance(frame, Folio) and frame.uid == entry.uid:
        if m.in_page_cache(frame):
            m.expected[(frame.mapping, frame.index)] = value
        elif not frame.anon:
            events.append(("store_lost", cpu_id, vpn, entry.pfn, value,
                           "file folio no longer in the page cache"))
    else:
        events.append(("store_to_freed", cpu_id, vpn, entry.pfn, value))
    events.append((kind, cpu_id, vpn, entry.pfn, value))
    return "done", label


def deliver_ipi(m: Machine, cpu_id: int) -> str:
    """kernel/smp.c generic_smp_call_function_single_interrupt -> arch/x86/mm/tlb.c
    flush_tlb_func: the target CPU (IRQs on) runs its oldest queued flush request; the
    initiator's wait ends once every target has."""
    cpu = m.cpus[cpu_id]
    req = cpu.ipi_queue.pop(0)
    flush_cpu_tlb(cpu, req.mm_id, req.start, req.end, req.full)
    what = "all" if req.full else f"[{req.start:#x}-{req.end:#x})"
    return f"IPI: flush_tlb_func mm{req.mm_id} {what}"


def evict(m: Machine, cpu_id: int, key: int) -> str:
    cpu = m.cpus[cpu_id]
    del cpu.tlb[key]
    return f"TLB evicts va {key & 0xffffffff:#x}"
