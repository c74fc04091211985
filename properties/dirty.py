"""dirty-data-preserved.

mm/memory.c (5df397dec7c4, zap): "while the TLB entry exists, we could end up with ... one CPU
could come in and clean it, never seeing our mapping of the page ... another CPU could continue
to use the stale and dirty TLB entry and continue to write to said page ... End result: possibly
lost dirty data." mm/page-writeback.c folio_clear_dirty_for_io relies on every writer being
visible as PG_dirty or as a dirty PTE.
"""

from __future__ import annotations

from ._core import Violation, mapped_ptes

NAME = "dirty-data-preserved"


def dirty_data_preserved(m, events) -> Violation | None:
    """Every store that reached a page-cache folio is either on disk, or the folio says it is
    dirty (PG_dirty, or a dirty PTE maps it), or a started writeback has yet to read it. A
    store into a file folio that has left the page cache, or a folio dropped with newer data
    than the disk, is lost."""
    for ev in events:
        if ev[0] == "store_lost":
            _, cpu, vpn, pfn, version, why = ev
            return Violation(NAME, f"store v{version} by CPU{cpu} to va {vpn:#x} landed in pfn "
                             f"{pfn}: {why}", {"cpu": cpu, "va": vpn, "pfn": pfn,
                                               "version": version})
    expected = m.expected   # checked after every step: locals, no lookup in an empty dict
    for f in m.files.values():
        cache = f.cache
        disk = f.disk
        for index in range(f.npages):
            folio = cache.get(index)
            on_disk = disk[index]
            if folio is None:
                if not expected:
                    continue
                want = expected.get((f.file_id, index))
                if want is not None and want != on_disk:
                    return Violation(NAME, f"file{f.file_id}[{index}] left the page cache holding "
                                     f"v{want}, but the disk has v{on_disk}",
                                     {"file": f.file_id, "index": index, "lost": want,
                                      "disk": on_disk})
                continue
            if not folio.uptodate or folio.data == on_disk or folio.dirty or folio.wb_pending:
                continue
            if any(pte.dirty for _, _, pte in mapped_ptes(m, folio)):
                continue
            return Violation(NAME, f"file{f.file_id}[{index}] (pfn {folio.pfn}) holds v{folio.data} "
                             f"newer than the disk's v{on_disk}, but the folio is clean and no "
                             "dirty PTE maps it: the store will never be written back",
                             {"file": f.file_id, "index": index, "pfn": folio.pfn,
                              "data": folio.data, "disk": on_disk})
    return None


def dirty_data_preserved_quiescent(m) -> Violation | None:
    """After drain, sync and dropping the clean cache: the disk holds the last store to every
    file page."""
    for (file_id, index), want in m.expected.items():
        on_disk = m.files[file_id].disk[index]
        if on_disk != want:
            return Violation(NAME, f"after sync, file{file_id}[{index}] on disk is v{on_disk}, "
                             f"but the last store was v{want}",
                             {"file": file_id, "index": index, "lost": want, "disk": on_disk})
    return None
