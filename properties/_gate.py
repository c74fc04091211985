"""Which state step properties a step without events can have changed the verdict of.

Run.apply checks the step properties only while none has been violated, so at each check
every state step property (STATE_STEP_PROPERTIES) returned None at the previous one. After
a step without events, a property whose inputs are as they were then returns None again:
Run.apply need not call it. ``StepGate`` keeps a copy of the inputs (the *parts* below) as
they were at the previous check, compares them after every step, and names the properties
that read a part that changed. A property not listed in properties.STATE_READS reads
everything and runs after every step. The verdicts, and the step that reports the first
one, are those of the plain definition (tests/test_speed.py compares them on random runs).

The parts (a property may read only what its parts cover, besides the constants of a run:
``m.files`` itself, a file's npages, ``m.readonly_files``, the world's geometry, a folio's
uid and pfn):
- PGTABLE: ``m.mms`` (which mms, by identity), each mm's PMD (which PTE tables) and each live
  table's PTEs (by value: a Pte is an immutable tuple).
- CACHE: each file's page cache (index -> folio, by identity).
- FOLIOS: each file's disk, and the uptodate, dirty and wb_pending of each folio the page
  caches hold whose data differs from its disk page: a property reads these only of such
  a folio, and what it reads of its data is only that it differs. A folio's data changes
  only by a store (hw.user_access, a GUP store: each emits an event), by a read from the
  disk (filemap_fault: data = disk, which can only end a difference) or in a folio new to
  the place that holds it (a COW, KSM or swap-in copy: a change of the cache, if any).
- PINS: ``m.pins`` (a Pin's fields never change after gup made it).
- SWAPCACHE: ``m.swap.cache`` (offset -> folio, by identity).
- ORACLE: the oracle's notes Oracle.task_started and task_returned write (discards, GUP
  start clocks, pin dates): Run.apply says whether the step started or ended a task (the
  notes Oracle.observe takes come with events, after which every property runs).
What every step without events leaves alone needs no part either:
- a frame is freed (``m.frames[pfn]`` cleared, ``Folio.freed``, ``PteTable.freed`` set) only
  by Machine.free_folio and free_pte_table, which emit an event; a frame allocated (None ->
  a new Folio or PteTable) breaks nothing that held at the previous check: a PTE or a TLB
  entry naming a free frame was a violation then (a TLB entry filled while its frame held
  no folio has uid 0 and is never judged);
- a TLB entry is filled only by hw.user_access, which emits a load or store event; an entry
  dropped (a flush, an eviction) cannot make a translation stale;
- ``m.expected`` is written only by hw.user_access's store into a page-cache folio, which
  emits its store event, and by hole punching (mmfuzz/kernel/truncate.py), whose steps that
  write it emit "truncated" and "punched".

A property may also name a guard (properties.STATE_GUARDS): a Machine attribute such that
the property returns None whenever it is empty (gup-pin-coherent judges only pins). It then
runs only while the attribute is not empty (the step on which it becomes so changes a part
the property reads: an induction over the steps, each one's verdict None).

A check made from anywhere but Run.apply (the exhaustive search replays its paths without
checks) changes the state behind the gate's back: Run.apply tells the gate how many actions
the run holds, and when that is not one more than at the gate's previous check, every
property runs and every part is copied anew.
"""

from __future__ import annotations

from operator import attrgetter

PGTABLE = 1
CACHE = 2
FOLIOS = 4
PINS = 8
SWAPCACHE = 16
ORACLE = 32
ALL = 63

_FOLIO_STATE = attrgetter("uptodate", "dirty", "wb_pending")


class StepGate:
    """The parts as they were at the previous check of one Run (kept on the Run, never on
    the Machine: the exhaustive search's state key is the Machine's object graph). The live
    containers are listed beside their copies, so that one comparison of two lists says
    whether anything in them changed: the model never replaces a PMD list, a table's PTE
    list, a page cache, a disk or the mms, pins and swap-cache dicts, so the containers
    listed stay the live ones until the mms or a PMD change (then they are listed anew)."""

    __slots__ = ("props", "reads", "guards", "by_mask", "next", "pg", "pg_copies", "rest",
                 "rest_copies", "ncaches", "folios", "folio_states")

    def __init__(self, props: tuple, reads: dict, guards: dict, by_mask: dict):
        self.props = props                # STATE_STEP_PROPERTIES, in their order
        self.reads = reads                # property -> mask of the parts it reads
        # (property, its guard's bit, the attribute): the bits above the parts'
        self.guards = tuple((p, (ALL + 1) << i, attr) for i, (p, attr) in enumerate(guards.items()))
        self.by_mask = by_mask            # mask with guard bits -> properties (shared)
        self.next = -1                    # len(run.actions) expected at the next check

    def _copy_pgtable(self, m) -> None:
        """PGTABLE: the mms, their PMDs and the PTE lists of the live tables."""
        pg = [m.mms]
        ptes = []
        for mm in m.mms.values():
            pmd = mm.pmd
            pg.append(pmd)
            for t in pmd:
                if t is not None:
                    ptes.append(t.ptes)
        pg += ptes
        self.pg = pg
        self.pg_copies = [c.copy() for c in pg]

    def _copy_rest(self, m) -> None:
        """The page caches (CACHE), the disks (FOLIOS), the pins (PINS) and the swap cache
        (SWAPCACHE), with the cached folios whose data differs from the disk (FOLIOS)."""
        files = m.files.values()
        rest = [f.cache for f in files]
        self.ncaches = len(rest)
        rest += [f.disk for f in files]
        rest.append(m.pins)
        rest.append(m.swap.cache)
        self.rest = rest
        self.rest_copies = [c.copy() for c in rest]
        folios = []
        for f in files:
            disk = f.disk
            for index, folio in f.cache.items():
                if folio.data != disk[index]:
                    folios.append(folio)
        self.folios = folios
        self.folio_states = list(map(_FOLIO_STATE, folios))

    def copy_all(self, m, actions: int) -> None:
        """Copy every part from the state now."""
        self.next = actions + 1
        self._copy_pgtable(m)
        self._copy_rest(m)

    def after_events(self, m, actions: int) -> None:
        """After a step with events, when every property runs: copy the parts that
        changed, and find the folios whose data differs from the disk anew (a store)."""
        if actions != self.next:
            self.copy_all(m, actions)
            return
        self.next = actions + 1
        if self.pg != self.pg_copies:
            self._copy_pgtable(m)
        self._copy_rest(m)

    def no_kernel_code(self, m, actions: int, started: bool) -> tuple:
        """After an action without events that ran no kernel code (an IPI, an eviction, a
        start, an access that faulted: an operation's method is a generator function, whose
        code runs only when it is stepped; the hardware's own PTE update comes with the
        access's event): no part changed, and a task began if ``started``."""
        if actions != self.next:
            self.copy_all(m, actions)
            return self.props
        self.next = actions + 1
        return self._select(m, ORACLE) if started else ()

    def changed(self, m, actions: int, task_boundary: bool) -> tuple:
        """After a step without events (``actions``: the run's actions now; ``task_boundary``:
        it may have started or ended a task): the state properties whose parts changed, in
        order, those parts copied anew; every one of them when the state changed behind the
        gate's back."""
        if actions != self.next:
            self.copy_all(m, actions)
            return self.props
        self.next = actions + 1
        mask = ORACLE if task_boundary else 0
        if self.pg != self.pg_copies:
            mask |= PGTABLE
            self._copy_pgtable(m)
        rest, copies = self.rest, self.rest_copies
        if rest != copies:
            nc = self.ncaches
            if rest[:nc] != copies[:nc]:
                mask |= CACHE | FOLIOS
            if rest[nc:-2] != copies[nc:-2]:
                mask |= FOLIOS
            if rest[-2] != copies[-2]:
                mask |= PINS
            if rest[-1] != copies[-1]:
                mask |= SWAPCACHE
            self._copy_rest(m)
        elif self.folios:
            folios = self.folios
            if (_FOLIO_STATE(folios[0]) != self.folio_states[0] if len(folios) == 1
                    else list(map(_FOLIO_STATE, folios)) != self.folio_states):
                mask |= FOLIOS
                self._copy_rest(m)
        return self._select(m, mask) if mask else ()

    def _select(self, m, mask: int) -> tuple:
        """The properties that read a part of ``mask`` and whose guard holds, in order."""
        for _, bit, attr in self.guards:
            if getattr(m, attr):
                mask |= bit
        got = self.by_mask.get(mask)
        if got is None:
            reads = self.reads
            off = [p for p, bit, _ in self.guards if not mask & bit]
            got = self.by_mask[mask] = tuple(p for p in self.props
                                             if reads.get(p, ALL) & mask and p not in off)
        return got
