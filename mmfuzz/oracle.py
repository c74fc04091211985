"""The checker's notes: ground truth the properties need that no kernel structure holds.

TLA+ calls these auxiliary variables, Jepsen keeps a history beside the system. Kernel
functions never write here: the run feeds the oracle the facts each step emitted
(``observe``) and the syscall boundaries it saw (``task_started``, ``task_returned``), and
the properties read it. Everything is keyed by ints and filled in program order.

What it records:
- which process wrote each version that landed in an anonymous folio (a store through a
  mapping, a device store through a pin, a FOLL_FORCE write by the kernel on the process's
  behalf), and when: versions stored into page-cache folios are public (any process that maps
  the file may see them) and are not recorded;
- the fork tree: child mm -> (parent mm, clock when fork returned);
- every discard of a user range (munmap, MADV_DONTNEED, exit, mremap) with its start and end,
  the folios hole punching took out of a file, and
  when the GUP call that took each pin (or that writes through its own reference, as
  /proc/pid/mem does) started: a pin whose range was discarded while it existed no longer
  has to follow that address, and a store through it may land in a page no longer mapped;
- what each anonymous page must read (no-lost-write-after-madv-free): the last store to it
  (through a mapping or a pin), or, once madvise(MADV_DONTNEED / MADV_FREE) returned on it,
  0 or one of the versions stored to it. A store of the value the page already holds
  (hw.STORE_SAME) is a store of that value here: the page must keep it from then on.
"""

from __future__ import annotations

#: operations that discard the contents of user ranges: name -> how to read the ranges
#: ((start, end), ...) from the task's arguments (None: the whole address space). mremap
#: with MREMAP_FIXED unmaps its destination, and its source no longer maps the pages
DISCARDING_OPS = {
    "munmap": lambda args: ((args[0], args[0] + args[1]),),
    "madvise_dontneed": lambda args: ((args[0], args[0] + args[1]),),
    "exit": lambda args: None,
    "mremap": lambda args: ((args[0], args[0] + args[1]), (args[2], args[2] + args[1])),
}

#: operations that take a GUP reference and hand it over as a pin (t.result = pin id)
GUP_OPS = ("pin_user_pages", "vmsplice")

#: operations that take a GUP reference and store through it before they return ("gup_store"
#: events carry the task id): mm/memory.c __access_remote_vm for write(/proc/pid/mem)
GUP_WRITER_OPS = ("proc_mem_write",)


class Oracle:
    __slots__ = ("writer", "parent", "discards", "gup_started", "pin_since", "anon_expected",
                 "setup_written", "softdirty_skipped", "truncated")

    def __init__(self):
        self.writer: dict[int, tuple[int, int]] = {}   # version -> (mm_id, clock)
        self.parent: dict[int, tuple[int, int]] = {}   # child mm -> (parent mm, fork clock)
        self.discards: dict[int, list] = {}   # task id -> [mm, range or None, start, end]
        self.gup_started: dict[int, int] = {}  # task id of a running GUP call -> start clock
        self.pin_since: dict[int, int] = {}    # pin id -> start clock of the call that took it
        # (mm << 32 | vpn) -> (mapid of the VMA, version the page must read or None after
        # madvise returned, the versions stored to it: what it may read besides 0 then)
        self.anon_expected: dict[int, tuple] = {}
        # (mm << 32 | vpn) of the anon pages the world's prefault wrote (no notes are taken
        # while the world is set up, so their versions are not known)
        self.setup_written: dict[int, bool] = {}
        # (mm << 32 | vpn) -> the PTE clear_refs(SOFT_DIRTY) last left as it was because the
        # page may be pinned (fs/proc/task_mmu.c pte_is_pinned): its writes are not tracked
        self.softdirty_skipped: dict[int, object] = {}
        # uids of the folios hole punching took out of the page cache: a pin on one no
        # longer refers to the file page it was taken on (the user discarded the range)
        self.truncated: dict[int, bool] = {}

    # ------------------------------------------------------------------ notes -------
    def setup_done(self, m) -> None:
        """The world is set up (its prefault ran without notes): remember which anonymous
        pages hold data already, so that only the others must read 0 until a store."""
        for mm_id in sorted(m.mms):
            mm = m.mms[mm_id]
            for vma in mm.vmas:
                if vma.file is None:
                    for vpn in range(vma.start, vma.end):
                        if m.anon_content(mm, vpn) != 0:
                            self.setup_written[(mm_id << 32) | vpn] = True

    def observe(self, m, events) -> None:
        """Take notes from the facts the last step emitted."""
        for ev in events:
            kind = ev[0]
            if kind == "truncated":
                self.truncated[ev[1]] = True
            elif kind == "softdirty_skipped":
                _, mm_id, vpn, pte = ev
                self.softdirty_skipped[mm_id << 32 | vpn] = pte
            elif kind == "store":
                _, cpu, vpn, pfn, version = ev
                self._stored(m, m.cpus[cpu].mm_id, pfn, version)
                self.anon_stored(m, m.cpus[cpu].mm_id, vpn, pfn, version)
            elif kind == "store_same":
                # a store of the value the page holds: the page must keep it, but the version
                # is not new (its writer stays the process that stored it first)
                _, cpu, vpn, pfn, data = ev
                self.anon_stored(m, m.cpus[cpu].mm_id, vpn, pfn, data)
            elif kind == "pin_store":
                _, mm_id, vpn, pfn, version = ev
                self._stored(m, mm_id, pfn, version)
                detached = any(
                    p.mm_id == mm_id and p.vpn == vpn and p.folio is not None
                    and p.folio.pfn == pfn and self.pin_detached(m, p) for p in m.pins.values())
                self.anon_stored(m, mm_id, vpn, pfn, version, detached)
            elif kind == "gup_store":
                # a store through the reference the writing call took itself: the page it
                # holds may have been zapped since (get_user_pages "does not guarantee that
                # the page exists in the user mappings when __get_user_pages returns")
                _, mm_id, vpn, pfn, version, tid = ev
                self._stored(m, mm_id, pfn, version)
                detached = self.discarded_since(mm_id, vpn, self.gup_started.get(tid, 0))
                self.anon_stored(m, mm_id, vpn, pfn, version, detached)

    def _stored(self, m, mm_id: int, pfn: int, version: int) -> None:
        frame = m.frames[pfn]
        if getattr(frame, "anon", False):
            self.writer[version] = (mm_id, m.clock)

    def task_started(self, m, t) -> None:
        """A syscall began: note when a GUP operation started, and every discard of a range."""
        if t.name in GUP_OPS or t.name in GUP_WRITER_OPS:
            self.gup_started[t.tid] = m.clock
        how = DISCARDING_OPS.get(t.name)
        if how is not None and t.mm is not None:
            self.discards[t.tid] = [t.mm.mm_id, how(t.args), m.clock, None]

    def task_returned(self, m, t) -> None:
        """A syscall returned: a fork that made a child separates the two address spaces; a
        GUP operation that took a reference dates the pin from its own start (the reference
        is taken before the pin is handed over); a discard ends."""
        if t.name == "fork" and isinstance(t.result, int) and t.mm is not None:
            self.forked(t.mm.mm_id, t.result, m.clock)
        started = self.gup_started.pop(t.tid, None)
        if started is not None and t.name in GUP_OPS and isinstance(t.result, int):
            self.pin_since[t.result] = started
        if t.tid in self.discards:
            self.discards[t.tid][3] = m.clock
        if t.name in ("madvise_dontneed", "madvise_free") and t.mm is not None:
            start, npages = t.args
            self.anon_freed(m, t.mm, start, start + npages, t.name == "madvise_free")

    def anon_stored(self, m, mm_id: int, vpn: int, pfn: int, version: int,
                    detached: bool = False) -> None:
        """A store (by a CPU or through a pin) reached an anon folio meant for ``vpn`` of an
        anonymous VMA; through a GUP reference the user detached (it discarded the range
        while the pin was held, or while the call that stores through its own reference ran)
        the page may read either the store or what it read before."""
        frame = m.frames[pfn]
        mm = m.mms.get(mm_id)
        if not getattr(frame, "anon", False) or mm is None:
            return
        vma = mm.find_vma(vpn)
        if vma is not None and vma.file is None:  # private file COW pages are not tracked
            key = (mm_id << 32) | vpn
            prev = self.anon_expected.get(key)
            seen = prev[2] if prev is not None and prev[0] == vma.mapid else ()
            if detached:  # the page may or may not still be the pinned one: either is fine
                want = None if prev is None or prev[0] != vma.mapid else prev[1]
                self.anon_expected[key] = (vma.mapid, None, seen + (version,) +
                                           (() if want is None else (want,)))
            else:
                self.anon_expected[key] = (vma.mapid, version, seen + (version,))

    def anon_freed(self, m, mm, start: int, end: int, lazy: bool) -> None:
        """madvise(MADV_DONTNEED or MADV_FREE) returned: until its next store, each anon page
        the oracle knows reads 0 or some version stored to it before the return (after
        DONTNEED only a store concurrent with the call survives, one that faulted a new page
        in; after FREE the data is gone if reclaim discarded the page; a store concurrent
        with the call may have landed through a stale TLB entry in a page already dropped, so
        the last store is not necessarily the one that survives). What the page tables show
        at the return is not used: reclaim may hold a PTE cleared in the middle of
        try_to_unmap_one then. A private file mapping's COW page that DONTNEED zapped reads
        the file again: no longer checked."""
        for vpn in range(start, end):
            vma = mm.find_vma(vpn)
            key = (mm.mm_id << 32) | vpn
            prev = self.anon_expected.get(key)
            if vma is None or prev is None or prev[0] != vma.mapid:
                continue
            if vma.file is not None:
                if not lazy:
                    del self.anon_expected[key]
                continue
            self.anon_expected[key] = (vma.mapid, None, prev[2])

    def forked(self, parent_mm: int, child_mm: int, clock: int) -> None:
        """fork() returned: from now on neither side may see the other's stores."""
        self.parent[child_mm] = (parent_mm, clock)

    # ---------------------------------------------------------------- queries -------
    def may_observe(self, reader_mm: int, version: int) -> bool:
        """May process ``reader_mm`` see ``version`` (in its memory or through a reference it
        took)? Yes for public versions and its own stores; for an ancestor's store only if it
        was made before the fork that separated their lines returned."""
        w = self.writer.get(version)
        if w is None:
            return True
        writer_mm, when = w
        if writer_mm == reader_mm:
            return True
        cur = reader_mm
        while cur in self.parent:
            up, fork_clock = self.parent[cur]
            if up == writer_mm:
                return when < fork_clock
            cur = up
        return False

    def writer_of(self, version: int):
        return self.writer.get(version)

    def pin_detached(self, m, pin) -> bool:
        """Did the user discard the mapping the pin was taken at while the pin existed (from
        the start of the GUP call that took it)? Or did hole punching take its page out of
        the file?"""
        if pin.folio is not None and self.truncated and pin.folio.uid in self.truncated:
            return True
        return self.discarded_since(pin.mm_id, pin.vpn, self.pin_since.get(pin.pin_id, 0))

    def discarded_since(self, mm_id: int, vpn: int, since: int) -> bool:
        """Did a discard of ``vpn`` in ``mm_id`` run (in part) at or after clock ``since``:
        may a GUP reference taken from then on hold a page the page tables no longer map?"""
        for d_mm, ranges, _start, end in self.discards.values():
            if (d_mm == mm_id and (ranges is None or any(a <= vpn < b for a, b in ranges))
                    and (end is None or end >= since)):
                return True
        return False
