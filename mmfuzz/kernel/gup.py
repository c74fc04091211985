"""get_user_pages, slow and fast: mm/gup.c (v6.12 structure), mm/internal.h gup_must_unshare,
include/linux/mm.h folio_maybe_dma_pinned, and the users of the references GUP hands out.

GUP slow walks under mmap_lock (read) and the PTL: follow_page_pte takes the page if the PTE
allows the access, else faultin_page runs the fault handler (FAULT_FLAG_WRITE, or
FAULT_FLAG_UNSHARE when a R/O pin finds a possibly shared anonymous page) and the walk
retries. GUP-fast walks with IRQs off and no lock: read the PMD, read the PTE, take the
reference, re-read PMD and PTE and back off if either changed ("GUP-fast: (1) take the
reference, then (2) check the entry did not change; any racing page-table op must: (1) clear
the entry, then (2) check whether the page is pinned", 70cbc3cc78a9); a FOLL_PIN caller also
checks mm->write_protect_seq around the walk, which fork() holds while it write-protects.
What GUP-fast could not take, the slow path takes.

The references are held in ``Machine.pins`` until released: a device (io_uring fixed buffer,
O_DIRECT) reads and writes the page at any time through a FOLL_PIN reference; a pipe holds a
vmsplice FOLL_GET reference and reads it later; /proc/PID/mem writes with FOLL_FORCE.

Left out: huge pages (PMD/PUD leaves, hugetlb), large folios (pins counted in _pincount),
devmap/P2PDMA, VM_FAULT_RETRY (the fault handler never drops mmap_lock here), FOLL_NOWAIT,
FOLL_DUMP, MMF_HAS_PINNED (an optimisation: without pins no refcount reaches the bias, so
folio_maybe_dma_pinned gives the same answer), FOLL_LONGTERM migration out of
ZONE_MOVABLE/CMA, secretmem, soft-dirty and uffd-wp in can_follow_write_pte, the NUMA
hinting (PROT_NONE) checks.
"""

from __future__ import annotations

from ..model import Folio, Pin, Pte, PteTable, Vma
from ..ops import Choice, VmaPage, operation
from .base import KernelBase, Last, Task

# include/linux/mm_types.h enum (values are ours; only the bits matter)
FOLL_WRITE = 1 << 0
FOLL_GET = 1 << 1
FOLL_FORCE = 1 << 3
FOLL_LONGTERM = 1 << 8
# mm/internal.h internal flags
FOLL_TOUCH = 1 << 16
FOLL_PIN = 1 << 18

#: include/linux/mm.h: a FOLL_PIN on an order-0 folio adds this much to its refcount
GUP_PIN_COUNTING_BIAS = 1 << 10

#: pin ids the fuzzer names (ids count up from 1 in each run; a missing one is a no-op)
PIN_IDS = (1, 2)

#: what faultin_page asks of handle_mm_fault
FAULT_FLAG_WRITE = "write"
FAULT_FLAG_UNSHARE = "unshare"
FAULT_FLAG_READ = "read"


def foll_str(flags: int) -> str:
    names = [("FOLL_PIN", FOLL_PIN), ("FOLL_GET", FOLL_GET), ("FOLL_WRITE", FOLL_WRITE),
             ("FOLL_FORCE", FOLL_FORCE), ("FOLL_LONGTERM", FOLL_LONGTERM)]
    return "|".join(n for n, b in names if flags & b) or "0"


def folio_maybe_dma_pinned(folio: Folio) -> bool:
    """include/linux/mm.h folio_maybe_dma_pinned, order-0: "return ((unsigned
    int)folio_ref_count(folio)) >= GUP_PIN_COUNTING_BIAS" (false positives allowed)."""
    return folio.refcount >= GUP_PIN_COUNTING_BIAS


def is_cow_mapping(vma: Vma) -> bool:
    """include/linux/mm.h is_cow_mapping: (VM_SHARED | VM_MAYWRITE) == VM_MAYWRITE. Every
    private mapping here has VM_MAYWRITE (a MAP_PRIVATE mapping may always be COWed)."""
    return not vma.shared


class Gup(KernelBase):
    # ------------------------------------------------------------------ helpers -------
    def gup_must_unshare(self, vma: Vma | None, flags: int, folio: Folio | None) -> bool:
        """mm/internal.h gup_must_unshare: only a R/O pin ((flags & (FOLL_WRITE | FOLL_PIN))
        == FOLL_PIN) must unshare. A non-anon page (the zero page, a page-cache page) only for
        FOLL_LONGTERM in a COW mapping ("We only care about R/O long-term pining: R/O
        short-term pinning does not have the semantics to observe successive changes through
        the process page tables"), and without the VMA (GUP-fast) "We really need the VMA";
        an anon page if it is not PageAnonExclusive."""
        if (flags & (FOLL_WRITE | FOLL_PIN)) != FOLL_PIN:
            return False
        if folio is None or not folio.anon:
            if not flags & FOLL_LONGTERM:
                return False
            if vma is None:
                return True
            return is_cow_mapping(vma)
        return not folio.anon_exclusive

    def try_grab_folio_now(self, folio: Folio | None, flags: int) -> None:
        """mm/gup.c try_grab_folio (PTL held, so the folio is stable): FOLL_GET adds one
        reference; FOLL_PIN adds GUP_PIN_COUNTING_BIAS, and nothing on the zero page ("Don't
        take a pin on the zero page - it's not going anywhere")."""
        if folio is None:
            return  # the zero page: no struct folio refcount is modelled for it
        folio.refcount += GUP_PIN_COUNTING_BIAS if flags & FOLL_PIN else 1

    def gup_put_folio_now(self, folio: Folio | None, flags: int) -> None:
        """mm/gup.c gup_put_folio: drop what try_grab took (refs *= GUP_PIN_COUNTING_BIAS for
        FOLL_PIN on a small folio); the last reference frees the folio."""
        if folio is None:
            return
        refs = GUP_PIN_COUNTING_BIAS if flags & FOLL_PIN else 1
        assert folio.refcount >= refs, f"refcount underflow on pfn {folio.pfn}"
        folio.refcount -= refs - 1
        self.folio_put_now(folio)

    def can_follow_write_pte(self, pte: Pte, folio: Folio | None, vma: Vma, flags: int) -> bool:
        """mm/gup.c can_follow_write_pte: a writable PTE; or FOLL_FORCE in a private, VM_MAYWRITE,
        !VM_WRITE mapping whose page is an exclusive anon page ("we broke COW and could map
        the page writable if we have an exclusive anonymous page")."""
        if pte.write:
            return True
        if not flags & FOLL_FORCE:
            return False
        if vma.shared:            # "FOLL_FORCE has no effect on shared mappings"
            return False
        if vma.writable:          # "already writable ones that just need to take a write fault"
            return False
        return folio is not None and folio.anon and folio.anon_exclusive

    def check_vma_flags(self, vma: Vma, flags: int) -> str | None:
        """mm/gup.c check_vma_flags: a write needs VM_WRITE, or FOLL_FORCE in a COW mapping;
        a FOLL_LONGTERM R/W pin of a file mapping that needs dirty tracking (shared,
        writable, ->page_mkwrite) is refused (writable_file_mapping_allowed). Returns an
        errno name or None."""
        if flags & FOLL_WRITE:
            if (vma.file is not None and (flags & (FOLL_PIN | FOLL_LONGTERM))
                    == (FOLL_PIN | FOLL_LONGTERM) and vma.shared and vma.writable):
                return "EFAULT"
            if not vma.writable:
                if not flags & FOLL_FORCE:
                    return "EFAULT"
                if not is_cow_mapping(vma):
                    return "EFAULT"
        return None

    # ------------------------------------------------------------- GUP slow -----------
    def follow_page_pte(self, t: Task, vma: Vma, vpn: int, flags: int):
        """mm/gup.c follow_page_pte: under the PTL, a none PTE -> NULL (fault it in); FOLL_WRITE
        that can_follow_write_pte refuses -> NULL; vm_normal_page (the zero page is taken as
        is); a R/O PTE that gup_must_unshare -> -EMLINK (unshare fault); else try_grab_folio
        and, with FOLL_TOUCH, a write marks the folio dirty. Returns ("page", folio or None
        for the zero page) or ("fault", FAULT_FLAG_*)."""
        m = self.m
        fault = FAULT_FLAG_WRITE if flags & FOLL_WRITE else FAULT_FLAG_READ
        table = yield from self.pte_offset_map_lock(t, t.mm, vpn, "follow_page_pte")
        if table is None:  # no_page_table
            return "fault", fault
        pte = table.ptes[vpn % m.ptrs_per_pte]
        if pte is None or not pte.present:  # !pte_present: no_page (a swap PTE faults in)
            yield from self.spin_unlock(t, table.ptl, "follow_page_pte: no page, pte_unmap_unlock")
            return "fault", fault
        folio = None if pte.special else m.frames[pte.pfn]
        if flags & FOLL_WRITE and not self.can_follow_write_pte(pte, folio, vma, flags):
            yield from self.spin_unlock(t, table.ptl,
                                        "follow_page_pte: !can_follow_write_pte, pte_unmap_unlock")
            return "fault", FAULT_FLAG_WRITE
        if not pte.write and self.gup_must_unshare(vma, flags, folio):
            yield from self.spin_unlock(t, table.ptl, "follow_page_pte: gup_must_unshare -> "
                                        "-EMLINK, pte_unmap_unlock")
            return "fault", FAULT_FLAG_UNSHARE
        self.try_grab_folio_now(folio, flags)
        note = ""
        if flags & FOLL_TOUCH and flags & FOLL_WRITE and folio is not None \
                and not pte.dirty and not folio.dirty:
            self.folio_mark_dirty_now(folio)
            note = ", folio_mark_dirty"
        what = "zero page" if folio is None else f"pfn {folio.pfn}"
        yield f"follow_page_pte: try_grab_folio({what}, {foll_str(flags)}){note}"
        yield from self.spin_unlock(t, table.ptl, "follow_page_pte: pte_unmap_unlock")
        return "page", folio

    def faultin_page(self, t: Task, vma: Vma, vpn: int, flags: int, fault: str):
        """mm/gup.c faultin_page: handle_mm_fault with FAULT_FLAG_WRITE for FOLL_WRITE, or
        FAULT_FLAG_UNSHARE ("FAULT_FLAG_WRITE and FAULT_FLAG_UNSHARE are incompatible"), with
        mmap_lock held (never the VMA lock, so no VM_FAULT_RETRY here). Returns (errno name
        or None, the gup flags for the next lookup): since 19be0eaffa3a ("mm: remove
        gup_flags FOLL_WRITE games from __get_user_pages()") the flags come back unchanged."""
        yield f"faultin_page: handle_mm_fault va {vpn:#x} ({fault})"
        ret = yield from self.handle_mm_fault(t, vma, vpn, write=fault == FAULT_FLAG_WRITE,
                                              unshare=fault == FAULT_FLAG_UNSHARE)
        return ("EFAULT" if ret == "SIGSEGV" else None), flags

    def _get_user_pages(self, t: Task, vpn: int, flags: int):
        """mm/gup.c __get_user_pages (one leading underscore here: Python mangles two) for one
        page (mmap_lock held): find the VMA,
        check_vma_flags, then follow_page_mask / faultin_page until the page is taken.
        Returns (folio or None for the zero page, None) or (None, errno)."""
        mm = t.mm
        vma = mm.find_vma(vpn)
        err = "EFAULT" if vma is None else self.check_vma_flags(vma, flags)
        if err is not None:
            yield f"__get_user_pages: va {vpn:#x}: {err}"
            return None, err
        while True:
            kind, what = yield from self.follow_page_pte(t, vma, vpn, flags)
            if kind == "page":
                return what, None
            err, flags = yield from self.faultin_page(t, vma, vpn, flags, what)
            if err is not None:
                return None, err
            # handle_mm_fault may have unmapped and remapped anything: find the VMA again
            if mm.find_vma(vpn) is not vma:
                yield f"__get_user_pages: va {vpn:#x}: VMA gone, EFAULT"
                return None, "EFAULT"

    def _gup_longterm_locked(self, t: Task, vpn: int, flags: int):
        """mm/gup.c __gup_longterm_locked (see _get_user_pages for the name) ->
        __get_user_pages_locked with *locked == 0:
        mmap_read_lock, __get_user_pages, mmap_read_unlock (check_and_migrate_movable_pages
        for FOLL_LONGTERM is left out: every frame here is long-term pinnable)."""
        mm = t.mm
        yield from self.down_read(t, mm.mmap_lock,
                                  f"__get_user_pages_locked: mmap_read_lock (va {vpn:#x})")
        folio, err = yield from self._get_user_pages(t, vpn, flags)
        yield from self.up_read(t, mm.mmap_lock, "__get_user_pages_locked: mmap_read_unlock")
        return folio, err

    # ------------------------------------------------------------- GUP-fast -----------
    def gup_fast(self, t: Task, vpn: int, flags: int):
        """mm/gup.c gup_fast: for FOLL_PIN, seq = raw_read_seqcount(&mm->write_protect_seq)
        and give up if odd (fork is write-protecting); local_irq_save ("With interrupts
        disabled, we block page table pages from being freed from under us ... we also want
        to block IPIs that come from callers of tlb_remove_table_sync_one()"),
        gup_fast_pgd_range, local_irq_restore; for FOLL_PIN, read_seqcount_retry: "When
        pinning pages for DMA there could be a concurrent write protect from fork() via
        copy_page_range(), in this case always fail GUP-fast" (unpin what was pinned).
        Returns the folio taken (None is the zero page, never taken here) or False."""
        mm = t.mm
        seq = 0
        checks_fork = self.gup_fast_checks_write_protect_seq(flags)
        if checks_fork:
            seq = mm.write_protect_seq
            yield f"gup_fast: raw_read_seqcount(mm{mm.mm_id}->write_protect_seq) = {seq}"
            if seq & 1:
                return False
        self.local_irq_save(t)
        yield "gup_fast: local_irq_save"
        got = yield from self.gup_fast_pgd_range(t, vpn, flags)
        freed = self.local_irq_restore(t)
        yield "gup_fast: local_irq_restore" + freed
        if got is False:
            return False
        if checks_fork and mm.write_protect_seq != seq:
            self.gup_put_folio_now(got, flags)
            yield (f"gup_fast: read_seqcount_retry(write_protect_seq) = {mm.write_protect_seq}: "
                   f"fork raced, gup_fast_unpin_user_pages(pfn {got.pfn})")
            return False
        return got

    def gup_fast_checks_write_protect_seq(self, flags: int) -> bool:
        """mm/gup.c gup_fast's "if (gup_flags & FOLL_PIN)" around its raw_read_seqcount and
        read_seqcount_retry of mm->write_protect_seq (57efa1fe5957): only a pin is kept from
        racing with fork's write-protect; a FOLL_GET reference may be taken on a page fork
        shares."""
        return bool(flags & FOLL_PIN)

    def gup_fast_pgd_range(self, t: Task, vpn: int, flags: int):
        """mm/gup.c gup_fast_pgd_range -> p4d -> pud -> gup_fast_pmd_range (the upper levels
        are always present here)."""
        return (yield from self.gup_fast_pmd_range(t, vpn, flags))

    def gup_fast_pmd_range(self, t: Task, vpn: int, flags: int):
        """mm/gup.c gup_fast_pmd_range: pmdp_get_lockless; a none PMD stops the walk (return
        0); a table goes to gup_fast_pte_range with the PMD value read."""
        m = self.m
        pmd_index = vpn // m.ptrs_per_pte
        table = t.mm.pmd[pmd_index]
        yield (f"gup_fast_pmd_range: pmdp_get_lockless va {vpn:#x} = "
               f"{'none' if table is None else f'table {table.tid}'}")
        if table is None:
            return False
        return (yield from self.gup_fast_pte_range(t, table, pmd_index, vpn, flags))

    def gup_fast_pte_range(self, t: Task, table: PteTable, pmd_index: int, vpn: int,
                           flags: int):
        """mm/gup.c gup_fast_pte_range: ptep_get_lockless from the table the PMD pointed at
        (which may have been unhooked, or freed if nothing holds it off); give up on a none,
        not-permitted (pte_access_permitted: W for FOLL_WRITE) or special (zero page) PTE;
        try_grab_folio_fast; then "pmd_val(pmd) != pmd_val(*pmdp) || pte_val(pte) !=
        pte_val(ptep_get(ptep))" -> gup_put_folio and give up; gup_fast_folio_allowed; a R/O
        PTE whose page gup_must_unshare(NULL, ...) -> give up."""
        m = self.m
        slot = vpn % m.ptrs_per_pte
        if table.freed:
            m.events.append(("walk_freed_table", t.cpu, table.tid, "gup_fast_pte_range"))
            yield f"gup_fast_pte_range: ptep_get_lockless va {vpn:#x} in FREED table {table.tid}"
            return False
        pte = table.ptes[slot]
        yield f"gup_fast_pte_range: ptep_get_lockless va {vpn:#x} = {_fmt(pte)}"
        if pte is None or not pte.present or (flags & FOLL_WRITE and not pte.write) or pte.special:
            return False
        frame = m.frames[pte.pfn]
        folio = yield from self.try_grab_folio_fast(t, frame, pte.pfn, flags)
        if folio is None:
            return False
        if t.mm.pmd[pmd_index] is not table or table.ptes[slot] != pte:
            self.gup_put_folio_now(folio, flags)
            yield f"gup_fast_pte_range: PMD or PTE changed, gup_put_folio(pfn {folio.pfn})"
            return False
        if not self.gup_fast_folio_allowed(folio, flags):
            self.gup_put_folio_now(folio, flags)
            yield f"gup_fast_pte_range: !gup_fast_folio_allowed, gup_put_folio(pfn {folio.pfn})"
            return False
        if not pte.write and self.gup_must_unshare(None, flags, folio):
            self.gup_put_folio_now(folio, flags)
            yield f"gup_fast_pte_range: gup_must_unshare, gup_put_folio(pfn {folio.pfn})"
            return False
        yield f"gup_fast_pte_range: PMD and PTE unchanged, pfn {folio.pfn} taken"
        return folio

    def try_grab_folio_fast(self, t: Task, frame, pfn: int, flags: int):
        """mm/gup.c try_grab_folio_fast -> try_get_folio: folio_ref_try_add_rcu fails on a
        freed frame (refcount 0); FOLL_PIN adds GUP_PIN_COUNTING_BIAS in all, then
        smp_mb__after_atomic ("Adjust the pincount before re-checking the PTE for changes").
        Returns the folio or None."""
        if not isinstance(frame, Folio) or frame.refcount == 0:
            yield f"try_grab_folio_fast: pfn {pfn} is free, folio_ref_try_add_rcu fails"
            return None
        self.try_grab_folio_now(frame, flags)
        yield (f"try_grab_folio_fast(pfn {pfn}, {foll_str(flags)}) -> refcount {frame.refcount}")
        return frame

    def gup_fast_folio_allowed(self, folio: Folio, flags: int) -> bool:
        """mm/gup.c gup_fast_folio_allowed: only FOLL_PIN | FOLL_LONGTERM | FOLL_WRITE is
        restricted ("A long term pin is the most egregious case"): a truncated folio (no
        mapping) or a file folio that is not shmem goes to the slow path; anon is fine."""
        restricted = FOLL_PIN | FOLL_LONGTERM | FOLL_WRITE
        if (flags & restricted) != restricted:
            return True
        return folio.anon

    def gup_fast_fallback(self, t: Task, vpn: int, flags: int):
        """mm/gup.c gup_fast_fallback: gup_fast, and what it could not take the slow path
        (__gup_longterm_locked with FOLL_TOUCH | FOLL_UNLOCKABLE) takes. Returns (folio or
        None for the zero page, errno or None)."""
        got = yield from self.gup_fast(t, vpn, flags)
        if got is not False:
            return got, None
        return (yield from self._gup_longterm_locked(t, vpn, flags | FOLL_TOUCH))

    # --------------------------------------------------- the references' users --------
    def _hold(self, t: Task, folio: Folio | None, vpn: int, flags: int, label: str):
        """The caller keeps the reference (its page array): record it in Machine.pins."""
        m = self.m
        pin = Pin(m.next_pin, folio, t.mm.mm_id, vpn, flags)
        m.next_pin += 1
        m.pins[pin.pin_id] = pin
        t.result = pin.pin_id
        # checker's note: the holder may read the page from now on (cow-isolation)
        m.events.append(("gup_take", pin.mm_id, vpn, m.zero_pfn if folio is None else folio.pfn,
                         pin.pin_id))
        what = "zero page" if folio is None else f"pfn {folio.pfn}"
        yield Last(f"{label}: pin {pin.pin_id} = {what} ({foll_str(flags)})")

    # State (mmfuzz.ops.STATE), from the kernel source:
    # mm/gup.c gup_fast: read_seqcount of write_protect_seq, lockless PMD/PTE reads re-checked
    # after try_grab_folio_fast (pgtable, pte.map); gup_must_unshare and can_follow_write_pte
    # (pte_write, PageAnonExclusive); try_grab_folio adds GUP_PIN_COUNTING_BIAS (gup.pin,
    # refcount); faultin_page's write or unshare fault (mm/memory.c wp_page_copy / wp_page_reuse:
    # a new or reused exclusive anon page, PTE writable and dirty); follow_page_pte FOLL_TOUCH:
    # "(flags & FOLL_WRITE) && !pte_dirty(pte) && !folio_test_dirty(folio)" -> folio_mark_dirty,
    # folio_mark_accessed
    @operation("pin_user_pages", VmaPage(), Choice("write", (1, 0), "FOLL_WRITE"),
               Choice("fast", (1, 0), "pin_user_pages_fast, else pin_user_pages"),
               doc="a long-term FOLL_PIN of one page (gup_test PIN_LONGTERM_TEST_START), held "
                   "until unpin",
               writes=("pte.map:anon", "pte.write:anon", "pte.dirty:anon",
                       "folio.mapcount:anon", "folio.refcount", "gup.pin", "PG_anon_exclusive",
                       "folio.dirty:anon", "folio.dirty:file", "folio.lru"),
               reads=("pgtable", "pte.map:anon", "pte.map:file", "pte.write:anon",
                      "pte.write:file", "pte.dirty:anon", "pte.dirty:file",
                      "mm.write_protect_seq", "PG_anon_exclusive", "folio.dirty:anon",
                      "folio.dirty:file"))
    def pin_longterm_test_start(self, t: Task, vpn: int, write: int, fast: int):
        """mm/gup_test.c pin_longterm_test_start, as selftests/mm/cow.c drives it ("R/O GUP
        pin", "R/O GUP-fast pin"; io_uring buffer registration pins the same way):
        gup_flags = FOLL_LONGTERM [| FOLL_WRITE]; with the fast flag pin_user_pages_fast,
        else mmap_read_lock + pin_user_pages. The pin is kept until unpin."""
        if fast:
            yield from self.pin_user_pages_fast(t, vpn, write)
        else:
            yield from self.pin_user_pages(t, vpn, write)

    def pin_user_pages_fast(self, t: Task, vpn: int, write: int):
        """io_uring_register(IORING_REGISTER_BUFFERS) -> io_pin_pages -> mm/gup.c
        pin_user_pages_fast(FOLL_WRITE | FOLL_LONGTERM) (R/O without write): a long-term
        FOLL_PIN a device reads and writes until it is unpinned. GUP-fast, then the slow
        path."""
        flags = FOLL_PIN | FOLL_LONGTERM | (FOLL_WRITE if write else 0)
        folio, err = yield from self.gup_fast_fallback(t, vpn, flags)
        if err is not None:
            t.result = err
            yield Last(f"pin_user_pages_fast: va {vpn:#x}: -{err}")
            return
        yield from self._hold(t, folio, vpn, flags, "pin_user_pages_fast")

    def pin_user_pages(self, t: Task, vpn: int, write: int):
        """mm/gup.c pin_user_pages (FOLL_PIN | FOLL_LONGTERM [| FOLL_WRITE]) as gup_test's
        PIN_LONGTERM_TEST_START without the fast flag uses it (selftests cow.c "R/O GUP
        pin"): the slow path only, under mmap_read_lock."""
        flags = FOLL_PIN | FOLL_LONGTERM | (FOLL_WRITE if write else 0)
        folio, err = yield from self._gup_longterm_locked(t, vpn, flags)
        if err is not None:
            t.result = err
            yield Last(f"pin_user_pages: va {vpn:#x}: -{err}")
            return
        yield from self._hold(t, folio, vpn, flags, "pin_user_pages")

    # State (mmfuzz.ops.STATE), from the kernel source:
    # fs/splice.c iter_to_pipe -> iov_iter_get_pages2 -> get_user_pages_fast(FOLL_GET): gup_fast's
    # lockless PMD/PTE reads re-checked after the reference is taken (pgtable, pte.map); FOLL_GET
    # asks nothing of write_protect_seq or PageAnonExclusive (gup_must_unshare is for FOLL_PIN);
    # the pipe keeps the page (gup.pin, refcount); the slow path's FOLL_TOUCH:
    # folio_mark_accessed. Its read fault is a user load's
    @operation("vmsplice", VmaPage(),
               doc="vmsplice() of one page into a pipe: a R/O FOLL_GET reference, read later",
               writes=("folio.refcount", "gup.pin", "folio.lru"),
               reads=("pgtable", "pte.map:anon", "pte.map:file"))
    def vmsplice(self, t: Task, vpn: int):
        """fs/splice.c vmsplice_to_pipe -> iter_to_pipe -> iov_iter_get_pages2 ->
        get_user_pages_fast(FOLL_GET, R/O): the pipe buffer holds a plain reference to the
        page, and a reader of the pipe reads the page later (selftests cow.c vmsplice
        cases, CVE-2020-29374)."""
        flags = FOLL_GET
        folio, err = yield from self.gup_fast_fallback(t, vpn, flags)
        if err is not None:
            t.result = err
            yield Last(f"vmsplice: va {vpn:#x}: -{err}")
            return
        yield from self._hold(t, folio, vpn, flags, "vmsplice")

    # State (mmfuzz.ops.STATE), from the kernel source:
    # the holder of a GUP reference reads the page (a device's DMA, a pipe read's
    # copy_page_to_iter)
    @operation("pin_read", Choice("pin", PIN_IDS, "a held GUP reference, by id"),
               context="kthread",
               doc="a device or pipe reader reads the page through a held GUP reference",
               writes=(),
               reads=("gup.pin", "folio.data"))
    def pin_read(self, t: Task, pin_id: int):
        """The holder reads the page through its reference: a device's DMA from a pinned
        buffer, a read() of the pipe a vmsplice filled (copy_page_to_iter)."""
        m = self.m
        pin = m.pins.get(pin_id)
        if pin is None:
            yield Last(f"pin_read: no pin {pin_id}")
            return
        data = 0 if pin.folio is None else pin.folio.data
        pfn = m.zero_pfn if pin.folio is None else pin.folio.pfn
        m.events.append(("pin_load", pin.mm_id, pin.vpn, pfn, data, pin_id))
        yield Last(f"pin_read: pin {pin_id} (mm{pin.mm_id} va {pin.vpn:#x}) -> pfn {pfn} v{data}")

    # State (mmfuzz.ops.STATE), from the kernel source:
    # a device writes the page through a FOLL_PIN | FOLL_WRITE reference (DMA)
    @operation("pin_write", Choice("pin", PIN_IDS, "a held GUP reference, by id"),
               context="kthread", doc="a device writes the page through a held R/W pin (DMA)",
               writes=("folio.data",),
               reads=("gup.pin",))
    def pin_write(self, t: Task, pin_id: int):
        """A device writes the page through a FOLL_PIN | FOLL_WRITE reference (DMA into an
        io_uring fixed buffer, an O_DIRECT read completing). Only R/W pins may be written."""
        m = self.m
        pin = m.pins.get(pin_id)
        if pin is None or not pin.flags & FOLL_WRITE or pin.folio is None:
            yield Last(f"pin_write: no writable pin {pin_id}")
            return
        version = m.next_version
        m.next_version += 1
        pin.folio.data = version
        m.events.append(("pin_store", pin.mm_id, pin.vpn, pin.folio.pfn, version))
        yield Last(f"pin_write: pin {pin_id} (mm{pin.mm_id} va {pin.vpn:#x}) -> pfn "
                   f"{pin.folio.pfn} v{version}")

    # State (mmfuzz.ops.STATE), from the kernel source:
    # mm/gup.c unpin_user_pages_dirty_lock: folio_test_dirty -> folio_lock + folio_mark_dirty,
    # gup_put_folio (the bias off the refcount; put_page for a pipe's FOLL_GET page)
    @operation("unpin", Choice("pin", PIN_IDS, "a held GUP reference, by id"),
               context="kthread",
               doc="release a held GUP reference (unpin_user_page, or put_page for FOLL_GET)",
               writes=("folio.refcount", "gup.pin", "folio.dirty:anon", "folio.dirty:file"),
               reads=("gup.pin", "folio.dirty:anon", "folio.dirty:file"))
    def unpin(self, t: Task, pin_id: int):
        """Release a held reference: a R/W pin as unpin_user_pages_dirty_lock(make_dirty=true)
        does when a DMA into it completed (folio_lock, folio_mark_dirty, folio_unlock, then
        gup_put_folio); a R/O pin as unpin_user_page; a FOLL_GET reference as put_page (a
        pipe buffer's release)."""
        m = self.m
        pin = m.pins.pop(pin_id, None)
        if pin is None:
            yield Last(f"unpin: no pin {pin_id}")
            return
        folio = pin.folio
        yield f"unpin: pin {pin_id} taken off its holder's page array"
        if folio is not None and pin.flags & FOLL_WRITE and not folio.dirty:
            yield from self.folio_lock(t, folio,
                                       f"unpin_user_pages_dirty_lock: folio_lock(pfn {folio.pfn})")
            self.folio_mark_dirty_now(folio)
            self.folio_unlock_now(t, folio)
            yield f"unpin_user_pages_dirty_lock: folio_mark_dirty + folio_unlock(pfn {folio.pfn})"
        self.gup_put_folio_now(folio, pin.flags)
        what = "zero page" if folio is None else (
            f"pfn {folio.pfn} -> {'freed' if folio.freed else f'refcount {folio.refcount}'}")
        name = "unpin_user_page" if pin.flags & FOLL_PIN else "put_page"
        yield Last(f"{name}: {what}")

    # State (mmfuzz.ops.STATE), from the kernel source:
    # mm/memory.c __access_remote_vm -> get_user_page_vma_remote(FOLL_FORCE | FOLL_WRITE): mm/gup.c
    # check_vma_flags (vm_flags), can_follow_write_pte (pte_write, PageAnonExclusive,
    # pte_soft_dirty), faultin_page's write fault breaking COW (wp_page_copy: a new exclusive anon
    # folio replaces the mapping, the old one's rmap removed; the PTE dirty); follow_page_pte's
    # FOLL_TOUCH (pte_dirty, folio_test_dirty -> folio_mark_dirty; folio_mark_accessed);
    # copy_to_user_page, set_page_dirty_lock, put_page
    @operation("proc_mem_write", VmaPage(private=True),
               doc="write(/proc/self/mem): a FOLL_FORCE write to a private (maybe R/O) page",
               writes=("pte.map:anon", "pte.dirty:anon", "folio.mapcount:anon",
                       "folio.mapcount:file", "folio.refcount", "PG_anon_exclusive",
                       "folio.dirty:anon", "folio.lru", "folio.data"),
               reads=("vma", "pte.write:anon", "pte.dirty:anon", "pte.soft_dirty",
                      "PG_anon_exclusive", "folio.dirty:anon"))
    def proc_mem_write(self, t: Task, vpn: int):
        """fs/proc/base.c mem_rw -> mm/memory.c access_remote_vm -> __access_remote_vm on the
        task's own mm (a debugger poking a breakpoint into a read-only private mapping):
        mmap_read_lock, get_user_page_vma_remote(FOLL_FORCE | FOLL_WRITE | FOLL_GET |
        FOLL_TOUCH), copy_to_user_page, set_page_dirty_lock, put_page, mmap_read_unlock. A
        write to a R/O private page breaks COW first (can_follow_write_pte), never writing
        the page cache. Left out: writes to shared mappings (GUP writers' page-cache dirtying
        protocol is not modelled), so the op refuses them."""
        m = self.m
        mm = t.mm
        flags = FOLL_FORCE | FOLL_WRITE | FOLL_GET | FOLL_TOUCH
        yield from self.down_read(t, mm.mmap_lock,
                                  f"__access_remote_vm: mmap_read_lock (va {vpn:#x})")
        vma = mm.find_vma(vpn)
        if vma is not None and vma.shared:
            t.result = "EINVAL"
            yield from self.up_read(t, mm.mmap_lock, "proc_mem_write: shared mapping not "
                                    "modelled, mmap_read_unlock", last=True)
            return
        folio, err = yield from self._get_user_pages(t, vpn, flags)
        if err is not None or folio is None:
            t.result = err or "EFAULT"
            yield from self.up_read(t, mm.mmap_lock,
                                    f"__access_remote_vm: -{t.result}, mmap_read_unlock", last=True)
            return
        version = m.next_version
        m.next_version += 1
        folio.data = version
        m.events.append(("gup_store", mm.mm_id, vpn, folio.pfn, version, t.tid))
        yield f"__access_remote_vm: copy_to_user_page pfn {folio.pfn} v{version}"
        yield from self.folio_lock(t, folio, f"set_page_dirty_lock: folio_lock(pfn {folio.pfn})")
        self.folio_mark_dirty_now(folio)
        self.folio_unlock_now(t, folio)
        yield f"set_page_dirty_lock: folio_mark_dirty + folio_unlock(pfn {folio.pfn})"
        self.gup_put_folio_now(folio, flags)
        yield f"__access_remote_vm: put_page(pfn {folio.pfn})"
        yield from self.up_read(t, mm.mmap_lock, "__access_remote_vm: mmap_read_unlock", last=True)


def _fmt(pte) -> str:
    if pte is None:
        return "none"
    if not pte.present:
        return f"swap slot {pte.offset}"
    return f"pfn {pte.pfn} {'W' if pte.write else '-'}{'D' if pte.dirty else '-'}" + \
        (" zero" if pte.special else "")
