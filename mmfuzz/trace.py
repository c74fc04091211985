"""Rendering a run as CPU columns, like the race diagrams posted to linux-mm."""

from __future__ import annotations

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
    return lines


def render(run: Run, title: str, upto: int | None = None, mark: int | None = None,
           mark_text: str = "<-- violation") -> str:
    """The trace of ``run`` (steps 0..upto) as one column per CPU."""
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
            out.append((f"{num}  " + "".join(c.ljust(COL_WIDTH) for c in cols)).rstrip())
    return "\n".join(out)
