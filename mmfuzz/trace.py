"""Rendering a run as CPU columns, like the race diagrams posted to linux-mm."""

from __future__ import annotations

import re
import textwrap

from .run import Run

COL_WIDTH = 46


def _cpu_header(run: Run, cpu: int) -> str:
    ops = []
    for s in run.trace:
        if s.cpu == cpu and s.op and s.op not in ops and s.action[0] in ("start", "access"):
            ops.append(s.op)
    mm = run.m.cpus[cpu].mm_id
    what = ", ".join(ops) if ops else "user"
    return f"CPU{cpu} (mm{mm}: {what})"


def segments(actions: list) -> int:
    """Stretches of one CPU running without another CPU acting in between: the rows of a
    linux-mm race diagram, where one row holds what one CPU does until the next switch
    ("lock PTL; ptep_get_and_clear"). A shrunk schedule is compared with a published diagram
    in this unit; its length in actions is finer (every lock, PTE write and flush)."""
    n = 0
    last = None
    for a in actions:
        if a[1] != last:
            n += 1
            last = a[1]
    return n


def initial_state(world: dict) -> list[str]:
    lines = []
    for cpu, vpn, write in world["prefault"]:
        lines.append(f"CPU{cpu} {'stored to' if write else 'loaded'} va {vpn:#x}")
    if world.get("tlb_flush", "ipi") == "hypercall":
        lines.append("paravirt guest: TLB flushes by hypercall (no IPIs)")
    return lines


def render(run: Run, title: str, upto: int | None = None, mark: int | None = None,
           mark_text: str = "<-- violation", racing: frozenset = frozenset()) -> str:
    """The trace of ``run`` (steps 0..upto) as one column per CPU; the step numbers in
    ``racing`` get a ``*``."""
    ncpus = len(run.m.cpus)
    steps = run.trace if upto is None else run.trace[: upto + 1]
    out = [title]
    init = initial_state(run.world)
    if init:
        out.append(" before: " + "; ".join(init))
    header = " step  " + "".join(_cpu_header(run, c)[:COL_WIDTH - 1].ljust(COL_WIDTH)
                                 for c in range(ncpus))
    out.append(header.rstrip())
    for s in steps:
        wrapped = textwrap.wrap(s.text, COL_WIDTH - 2) or [""]
        for j, piece in enumerate(wrapped):
            cols = [""] * ncpus
            cols[s.cpu] = piece if j == 0 else "  " + piece
            if mark is not None and s.index == mark and j == len(wrapped) - 1:
                cols[s.cpu] += f"  {mark_text}"
            num = f"{s.index + 1:5}" if j == 0 else "     "
            star = "*" if j == 0 and s.index in racing else " "
            out.append((f"{num}{star} " + "".join(c.ljust(COL_WIDTH) for c in cols)).rstrip())
    return "\n".join(out)


# --------------------------------------------------------------------- mmfuzz show -------
def _flags(write: bool, dirty: bool) -> str:
    return ("W" if write else "-") + ("D" if dirty else "-")


def address_space(run: Run) -> list[str]:
    """The state a schedule starts from, one fact a line: each process's VMAs with the PTEs
    inside them, each CPU's TLB entries, the page cache and the disk."""
    m = run.m
    out = []
    for mm_id, mm in m.mms.items():
        cpus = ",".join(f"CPU{c}" for c in mm.cpumask)
        out.append(f"mm{mm_id} ({cpus}):")
        for vma in mm.vmas:
            rw = "rw" if vma.writable else "r-"
            extra = f" pgoff {vma.pgoff}" if vma.file is not None and vma.pgoff else ""
            out.append(f"  {vma.describe()} {rw}{extra}")
            for vpn in range(vma.start, vma.end):
                table, slot = m.pte_lookup(mm, vpn)
                pte = table.ptes[slot] if table is not None else None
                if pte is None:
                    continue
                what = "zero page" if pte.special else f"pfn {pte.pfn}"
                out.append(f"    PTE va {vpn:#x} -> {what} {_flags(pte.write, pte.dirty)}"
                           f"{'A' if pte.young else '-'}")
    for c in m.cpus:
        entries = [f"va {key & 0xffffffff:#x} -> pfn {e.pfn} {_flags(e.write, e.dirty)}"
                   for key, e in sorted(c.tlb.items())]
        out.append(f"CPU{c.cpu_id} TLB: {'; '.join(entries) if entries else 'empty'}")
    for fid, f in m.files.items():
        cached = []
        for index in sorted(f.cache):
            fo = f.cache[index]
            cached.append(f"[{index}] pfn {fo.pfn} v{fo.data} {'dirty' if fo.dirty else 'clean'}"
                          f" mapcount {fo.mapcount}")
        out.append(f"file{fid}: page cache {', '.join(cached) if cached else 'empty'}; disk "
                   + " ".join(f"v{x}" for x in f.disk))
    return out


def racing_steps(run: Run, facts: dict, upto: int | None) -> tuple[frozenset, str]:
    """The steps up to ``upto`` that touch the violated page (its pfn, or a va that maps it),
    if they come from at least two CPUs; and a phrase naming the page."""
    pfns = [facts["pfn"]] if type(facts.get("pfn")) is int else []
    vas = [facts["va"]] if type(facts.get("va")) is int else []
    if type(facts.get("file")) is int and type(facts.get("index")) is int:
        for mm in run.m.mms.values():
            for v in run.world["vmas"]:
                if (v["mm"] == mm.mm_id and v.get("file") == facts["file"]
                        and v.get("pgoff", 0) <= facts["index"] < v.get("pgoff", 0) + v["end"] - v["start"]):
                    va = v["start"] + facts["index"] - v.get("pgoff", 0)
                    if va not in vas:
                        vas.append(va)
    pats = [re.compile(rf"\bpfn {p}\b") for p in pfns] + [re.compile(rf"\bva {va:#x}\b")
                                                         for va in vas]
    steps = run.trace if upto is None else run.trace[: upto + 1]
    hits = [s for s in steps if any(p.search(s.text) for p in pats)]
    if len({s.cpu for s in hits}) < 2:
        return frozenset(), ""
    page = " / ".join([f"pfn {p}" for p in pfns] + [f"va {va:#x}" for va in vas])
    return frozenset(s.index for s in hits), page


def show(run: Run, out, cx, initial: Run, path: str | None = None) -> str:
    """`mmfuzz show`: the file's why, the address space at the start, the CPU columns with the
    racing steps marked, the violation in one sentence with its facts, the replay command."""
    path = path or cx.path
    v = out.violation
    lines = [f"{path}", f" why (from the file): {cx.why}", f" expect: {cx.expect} on {cx.kernel}",
             " address space at the start (after prefault):"]
    lines += ["   " + x for x in address_space(initial)]
    if v is None:
        lines.append(render(run, f"PASS   kernel={cx.kernel}   (no property violated)"))
        lines.append(f" no violation: the schedule runs clean on {cx.kernel}")
    else:
        racing, page = racing_steps(run, v.facts, out.step)
        seed = cx.found.get("seed")
        title = f"VIOLATION {v.prop}   kernel={cx.kernel}" + (f"   seed={seed}" if seed is not None
                                                               else "")
        lines.append(render(run, title, upto=out.step, mark=out.step, racing=racing))
        if racing:
            cpus = sorted({run.trace[i].cpu for i in racing})
            lines.append(f" * = a step that touches {page}, on CPUs "
                         + ", ".join(str(c) for c in cpus))
        where = (f"at step {out.step + 1} (CPU{run.trace[out.step].cpu})" if out.step is not None
                 else "at quiescence (after every operation finished, a full sync and dropping "
                      "the clean cache)")
        facts = ", ".join(f"{k}={v.facts[k]}" for k in sorted(v.facts))
        lines.append(f" violated {v.prop} {where}: {v.why} ({facts})")
    lines.append(f" replay: mmfuzz replay {path}")
    return "\n".join(lines)
