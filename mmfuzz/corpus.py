"""Counterexamples as versioned JSON: load, validate, save atomically, replay, check.

The format is documented for people in docs/corpus-format.md (format_version 2; version 1 files
still load): a file names the kernel, the world (every field a race diagram does not mention
has a default), the whole schedule of actions (an ``until`` action runs a CPU to the next step
whose label names a kernel function, so nobody counts yields), the expected verdict
(``"violation:PROPERTY"`` or ``"pass"``), one sentence of why, and how it was found. A file is
plain data: loading it never imports anything, builds nothing before every field is checked
against documented limits, and a bad file is a CorpusError whose message names the problem and
the fix (the CLI: one line, exit 2).

API for tools and the pytest plugin: ``load(path)`` -> Counterexample, ``check(cx, kernel)`` ->
Verdict, ``replay(cx, kernel)`` -> (run, outcome, skipped), ``save(cx, directory)`` -> path,
``files(root)`` -> the corpus files under root.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import platform
import re
import tempfile
from dataclasses import dataclass, field

from properties import PROPERTY_NAMES

from . import __version__
from .hw import STORE_SAME
from .kernels import KernelNameError, resolve_kernel
from .model import OutOfFrames
from .run import (LIMITS, Divergence, ModelError, ModelFailure, Outcome, Run,
                  _divergence_message, execute, validate_action, validate_world)
from .trace import render

#: the newest format this mmfuzz reads and writes; FORMAT_VERSION_MIN the oldest it reads.
#: Version 2 added one access kind: ["access", cpu, vpn, 2], a store of the value the page
#: already holds (mmfuzz.hw.STORE_SAME). A file is written with the lowest version that can
#: hold its schedule (format_version_for), so a file without that access stays readable by
#: an mmfuzz that reads only version 1.
FORMAT_VERSION = 2
FORMAT_VERSION_MIN = 1
KIND = "mmfuzz-counterexample"

#: a corpus file may be no larger (a hand-written one is a few kB)
FILE_BYTES_MAX = 1 << 20
#: nesting of JSON arrays and objects (the format itself needs 4)
JSON_DEPTH_MAX = 32
#: digits in one JSON integer
INT_DIGITS_MAX = 20
#: characters of `why` and of `kernel`
WHY_CHARS_MAX = 2000
KERNEL_CHARS_MAX = 200
#: "step" actions all the "until" actions of one schedule may expand to, together
UNTIL_STEPS_MAX = 20_000

#: the top-level fields of a file, in the order they are written
FIELDS = ("format_version", "kind", "kernel", "flush_model", "world", "calls", "schedule",
          "expect", "violation", "why", "found")
REQUIRED = ("format_version", "kind", "kernel", "schedule", "why")

#: what a world field is when a file leaves it out (docs/corpus-format.md "The world")
WORLD_DEFAULTS = {
    "ncpus": "len(cpu_mm), else 3",
    "cpu_mm": "[1, 1, ...]: every CPU runs a thread of process (mm) 1",
    "ptrs_per_pte": 2,
    "npmds": "just enough PMD entries for the highest VMA end",
    "nframes": 64,
    "files": "one file per id the VMAs name, as long as they map it",
    "vmas": "file 1 shared at 0x0-0x3, anonymous at 0x4-0x5 (both in mm 1, writable)",
    "gather": {"local_max": 8, "batch_max": 510, "batch_count_max": 19},
    "prefault": [],
}
#: the flush models a file may name: x86 with world.tlb_flush "ipi" or "hypercall"
FLUSH_MODELS = ("x86-ipi", "x86-hypercall")


def flush_model_of(world: dict) -> str:
    """The file's flush_model for ``world``: x86 with its tlb_flush ("ipi" when absent)."""
    return f"x86-{world.get('tlb_flush', 'ipi')}"


VMA_DEFAULTS = {"mm": 1, "file": None, "pgoff": 0, "shared": False, "writable": True}
DEFAULT_VMAS = [
    {"mm": 1, "start": 0, "end": 4, "file": 1, "pgoff": 0, "shared": True, "writable": True},
    {"mm": 1, "start": 4, "end": 6, "file": None, "pgoff": 0, "shared": False, "writable": True},
]

_RECORD_FIX = "restore it with git, or re-record it with `mmfuzz hunt`/`mmfuzz fuzz --save`"
_EDIT_FIX = "see docs/corpus-format.md"


class CorpusError(ValueError):
    """A counterexample file that cannot be used; the message names the problem and the fix."""


@dataclass
class Counterexample:
    """One corpus file in memory. ``prop`` is the property the schedule must violate on
    ``kernel`` ("" for a pass file); ``facts``, ``step`` and ``phase`` are what the recorder saw
    (informational: replay recomputes them); ``schedule`` is as written (it may hold ``until``
    actions)."""

    kernel: str
    world: dict
    schedule: list
    prop: str
    why: str
    facts: dict = field(default_factory=dict)
    step: int | None = None
    phase: str = "step"
    found: dict = field(default_factory=dict)
    path: str = ""

    @property
    def expect(self) -> str:
        return f"violation:{self.prop}" if self.prop else "pass"

    def signature(self) -> dict:
        """What makes two failures the same for deduplication: the verdict plus the sorted
        names of the operations the schedule starts."""
        ops = sorted({a[2] for a in self.schedule if a[0] == "start"})
        return {"expect": self.expect, "ops": ops}

    def to_json(self) -> dict:
        calls = [a[2:] for a in self.schedule if a[0] == "start"]
        d = {
            "format_version": format_version_for(self.schedule),
            "kind": KIND,
            "kernel": self.kernel,
            "flush_model": flush_model_of(self.world),
            "world": self.world,
            "calls": calls,
            "schedule": self.schedule,
            "expect": self.expect,
        }
        if self.prop:
            d["violation"] = {"property": self.prop, "why": self.why, "facts": self.facts,
                              "step": self.step, "phase": self.phase}
        d["why"] = self.why
        d["found"] = self.found
        return d


@dataclass
class Verdict:
    """The answer of ``check``: did the file's schedule show what it must on ``kernel``?"""

    ok: bool
    kernel: str
    expected: str          # "violation:PROPERTY" or "pass"
    got: str               # the same form
    message: str           # one line for a person
    run: Run | None = None
    outcome: Outcome | None = None
    skipped: int = 0


def format_version_for(schedule: list) -> int:
    """The lowest format_version that can hold ``schedule``: 2 if it has a store-same access
    (["access", cpu, vpn, 2]), else 1."""
    if any(a[0] == "access" and len(a) == 4 and a[3] == STORE_SAME for a in schedule):
        return 2
    return 1


def found_info(seed, engine: str, **extra) -> dict:
    info = {"seed": seed, "engine": engine, "mmfuzz_version": __version__,
            "python": platform.python_version()}
    info.update(extra)
    return info


def _fail(path: str, problem: str, fix: str = _RECORD_FIX) -> CorpusError:
    return CorpusError(f"{path}: {problem}; {fix}")


# ------------------------------------------------------------------------- reading -------
def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number (write an integer)")


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > INT_DIGITS_MAX:
        raise ValueError(f"the integer {text[:12]}... has more than {INT_DIGITS_MAX} digits")
    return int(text)


def _parse_float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"the number {text[:20]} is out of range")
    return v


def _no_duplicates(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise ValueError(f"the field {k[:40]!r} appears twice in one object")
        d[k] = v
    return d


def _depth(value) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (list, dict)):
            deepest = max(deepest, d)
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def read_json(path: str):
    """The parsed JSON of ``path``, or CorpusError: unreadable, too large, not UTF-8, not JSON,
    NaN/Infinity, an integer of absurd length, a duplicated field, nesting deeper than
    JSON_DEPTH_MAX. Reads at most FILE_BYTES_MAX + 1 bytes."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(FILE_BYTES_MAX + 1)
    except IsADirectoryError:
        raise _fail(path, "is a directory, not a corpus file", "name a .json file") from None
    except OSError as e:
        raise _fail(path, f"cannot read ({e.strerror})", "check the path") from None
    if len(raw) > FILE_BYTES_MAX:
        raise _fail(path, f"is larger than {FILE_BYTES_MAX} bytes, the limit for a corpus file",
                    "a counterexample is a few kB: this is not one")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _fail(path, f"is not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start})",
                    "save it as UTF-8") from None
    try:
        d = json.loads(text, parse_constant=_reject_constant, parse_int=_parse_int,
                       parse_float=_parse_float, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as e:
        raise _fail(path, f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); the "
                    "file is truncated or corrupt", _RECORD_FIX) from None
    except RecursionError:
        raise _fail(path, f"nests JSON deeper than {JSON_DEPTH_MAX} levels", _EDIT_FIX) from None
    except ValueError as e:
        raise _fail(path, f"not valid JSON for mmfuzz: {e}", _EDIT_FIX) from None
    if _depth(d) > JSON_DEPTH_MAX:
        raise _fail(path, f"nests JSON deeper than {JSON_DEPTH_MAX} levels", _EDIT_FIX)
    return d


def world_with_defaults(world: dict) -> dict:
    """A complete world from a file's possibly partial one: every missing field gets its
    documented default (WORLD_DEFAULTS, VMA_DEFAULTS). Fields of the wrong type are left as
    they are, for validate_world to name."""
    w = dict(world)
    if "cpu_mm" in w:
        w.setdefault("ncpus", len(w["cpu_mm"]) if type(w["cpu_mm"]) is list else 3)
    else:
        w.setdefault("ncpus", 3)
        if type(w["ncpus"]) is int and 1 <= w["ncpus"] <= LIMITS["ncpus"][1]:
            w["cpu_mm"] = [1] * w["ncpus"]
        else:
            w["cpu_mm"] = [1]
    w.setdefault("ptrs_per_pte", 2)
    w.setdefault("nframes", 64)
    if "vmas" not in w:
        w["vmas"] = [dict(v) for v in DEFAULT_VMAS]
    elif type(w["vmas"]) is list:
        w["vmas"] = [dict(VMA_DEFAULTS, **v) if type(v) is dict else v for v in w["vmas"]]
    vmas = w["vmas"]
    well_formed = (type(vmas) is list and all(
        type(v) is dict and type(v.get("start")) is int and type(v.get("end")) is int
        and type(v.get("pgoff")) is int and (v.get("file") is None or type(v["file"]) is int)
        for v in vmas))
    if "npmds" not in w:
        ptrs = w["ptrs_per_pte"]
        top = max((v["end"] for v in vmas), default=1) if well_formed else 1
        w["npmds"] = max(1, -(-top // ptrs)) if type(ptrs) is int and ptrs > 0 else 1
    if "files" not in w:
        sizes: dict[int, int] = {}
        if well_formed:
            for v in vmas:
                if v["file"] is not None:
                    need = v["pgoff"] + v["end"] - v["start"]
                    sizes[v["file"]] = max(sizes.get(v["file"], 0), need)
        w["files"] = [{"id": fid, "npages": n} for fid, n in sorted(sizes.items())]
    if "gather" not in w:
        w["gather"] = dict(WORLD_DEFAULTS["gather"])
    elif type(w["gather"]) is dict:
        w["gather"] = dict(WORLD_DEFAULTS["gather"], **w["gather"])
    w.setdefault("prefault", [])
    return {k: w[k] for k in ("ncpus", "cpu_mm", "ptrs_per_pte", "npmds", "nframes", "files",
                              "vmas", "gather", "prefault")} | {
        k: v for k, v in w.items() if k not in WORLD_DEFAULTS}


def parse_expect(text, where: str = "expect") -> str:
    """The property an ``expect`` string names ("" for "pass"), or ValueError."""
    if text == "pass":
        return ""
    if type(text) is str and text.startswith("violation:"):
        prop = text[len("violation:"):]
        if prop in PROPERTY_NAMES:
            return prop
        raise ValueError(f"{where} names an unknown property {prop[:60]!r} (known: "
                         f"{', '.join(PROPERTY_NAMES)})")
    raise ValueError(f"{where} must be \"pass\" or \"violation:PROPERTY\", not "
                     f"{json.dumps(text)[:60]}")


def load(path: str) -> Counterexample:
    """Read and check one corpus file; CorpusError names the first problem and the fix. Nothing
    is imported and no machine is built."""
    d = read_json(path)
    if type(d) is not dict or d.get("kind") != KIND:
        raise _fail(path, "not an mmfuzz counterexample (no \"kind\": \"mmfuzz-counterexample\")",
                    "name a file that `mmfuzz fuzz --save` wrote or docs/corpus-format.md "
                    "describes")
    ver = d.get("format_version")
    if type(ver) is not int:
        raise _fail(path, "has no integer format_version", f"add \"format_version\": "
                    f"{FORMAT_VERSION}")
    if ver < FORMAT_VERSION_MIN:
        raise _fail(path, f"format_version {ver} is older than the {FORMAT_VERSION_MIN} this "
                    "mmfuzz reads", "re-record it with `mmfuzz hunt` or `mmfuzz fuzz --save`")
    if ver > FORMAT_VERSION:
        raise _fail(path, f"format_version {ver} is newer than this mmfuzz ({__version__}) reads",
                    f"upgrade mmfuzz (this one reads format_version {FORMAT_VERSION})")
    for key in d:
        if key not in FIELDS:
            raise _fail(path, f"has an unknown field {key[:40]!r} (format_version {ver} has: "
                        f"{', '.join(FIELDS)})", _EDIT_FIX)
    for key in REQUIRED:
        if key not in d:
            raise _fail(path, f"lacks the field {key!r}", _EDIT_FIX)
    kernel = d["kernel"]
    if type(kernel) is not str or not 0 < len(kernel) <= KERNEL_CHARS_MAX:
        raise _fail(path, "field 'kernel' must be a kernel name such as \"mainline\" or "
                    "\"bug:SLUG\"", "`mmfuzz bugs` lists the bug kernels")
    flush_model = d.get("flush_model", "x86-ipi")
    if flush_model not in FLUSH_MODELS:
        raise _fail(path, f"flush_model {str(flush_model)[:40]!r} is not modelled",
                    "use \"x86-ipi\" or \"x86-hypercall\" (world.tlb_flush says which) "
                    "or leave it out")
    why = d["why"]
    if type(why) is not str or not why.strip() or len(why) > WHY_CHARS_MAX:
        raise _fail(path, f"field 'why' must be one sentence (1-{WHY_CHARS_MAX} characters) "
                    "saying what the schedule shows", _EDIT_FIX)
    found = d.get("found", {})
    if type(found) is not dict:
        raise _fail(path, "field 'found' must be an object (seed, engine, ... or \"by\": "
                    "\"hand\")", _EDIT_FIX)
    world = d.get("world", {})
    if type(world) is not dict:
        raise _fail(path, "field 'world' must be an object (leave it out for the default world)",
                    _EDIT_FIX)
    world = world_with_defaults(world)
    try:
        validate_world(world)
    except ValueError as e:
        raise _fail(path, f"bad world: {e}", _EDIT_FIX + " (\"Limits\")") from None
    if "flush_model" in d and flush_model != flush_model_of(world):
        raise _fail(path, f"flush_model {flush_model!r} disagrees with world.tlb_flush "
                    f"{world.get('tlb_flush', 'ipi')!r}", "make them agree (x86-ipi with "
                    "\"ipi\" or none, x86-hypercall with \"hypercall\"), or leave flush_model out")
    schedule = d["schedule"]
    if type(schedule) is not list:
        raise _fail(path, "field 'schedule' must be a list of actions", _EDIT_FIX)
    if len(schedule) > LIMITS["actions"][1]:
        raise _fail(path, f"the schedule has {len(schedule)} actions, more than the "
                    f"{LIMITS['actions'][1]} allowed", "shrink it (a counterexample is short)")
    for i, a in enumerate(schedule):
        try:
            validate_action(world, a, f"schedule[{i}]")
        except ValueError as e:
            raise _fail(path, str(e), _EDIT_FIX + " (\"Actions\"; `mmfuzz ops` lists the "
                        "operations)") from None
        if ver < 2 and a[0] == "access" and a[3] == STORE_SAME:
            raise _fail(path, f"schedule[{i}] {json.dumps(a)}: access kind (write) 2, a "
                        "store of the value the page holds, is format_version 2; format_version"
                        f" {ver} has 0 (load) and 1 (store)", "write \"format_version\": 2, or "
                        "make it a store (1)")
    if "calls" in d and type(d["calls"]) is not list:
        raise _fail(path, "field 'calls' must be a list (or left out: it is derived from the "
                    "schedule)", _EDIT_FIX)
    v = d.get("violation")
    facts, step, phase = {}, None, "step"
    if v is not None:
        if type(v) is not dict or type(v.get("property")) is not str:
            raise _fail(path, "field 'violation' must be an object with a \"property\" (or "
                        "leave it out and write \"expect\")", _EDIT_FIX)
        facts = v.get("facts", {})
        step = v.get("step")
        phase = v.get("phase", "step")
        if (type(facts) is not dict or not (step is None or type(step) is int)
                or phase not in ("step", "quiescence")):
            raise _fail(path, "violation.facts must be an object, violation.step an integer or "
                        "null, violation.phase \"step\" or \"quiescence\"", _EDIT_FIX)
    try:
        if "expect" in d:
            prop = parse_expect(d["expect"])
        elif v is not None:
            prop = parse_expect(f"violation:{v['property']}", "violation.property")
        else:
            raise ValueError("says nothing about the verdict: add \"expect\": "
                             "\"violation:PROPERTY\" or \"expect\": \"pass\"")
    except ValueError as e:
        raise _fail(path, str(e), _EDIT_FIX) from None
    if v is not None and v["property"] != prop:
        raise _fail(path, f"expect {d['expect']!r} contradicts violation.property "
                    f"{v['property'][:60]!r}", "make them agree, or drop the violation block")
    return Counterexample(kernel, world, schedule, prop, why, facts, step, phase, found, path)


def files(root: str) -> list[str]:
    """Every corpus file under ``root`` (violations/ and passes/), sorted."""
    return sorted(glob.glob(os.path.join(root, "**", "*.json"), recursive=True))


# ------------------------------------------------------------------------- kernels -------
def is_file_kernel(name: str) -> bool:
    """The kernel names a corpus file may resolve by itself: mainline and bug:SLUG. Any other
    name (package.module:Class) would be an import, and a file is data."""
    return name == "mainline" or name.startswith("bug:")


def kernel_for(cx: Counterexample, kernel: str | None = None) -> tuple[str, type]:
    """(name, class) of the kernel to replay ``cx`` on: ``kernel`` if the user named one (it may
    be imported: the user asked for it), else the file's own, which must be mainline or
    bug:SLUG."""
    where = cx.path or "counterexample"
    if kernel is not None:
        try:
            return kernel, resolve_kernel(kernel)
        except KernelNameError as e:
            raise CorpusError(f"--kernel: {e}") from None
    name = cx.kernel
    if not is_file_kernel(name):
        raise CorpusError(f"{where}: names kernel {name[:80]!r}, which a corpus file cannot "
                          "load (a file is data and never causes an import); if you trust it, "
                          f"name it yourself: mmfuzz replay {where} --kernel {name[:80]}")
    try:
        return name, resolve_kernel(name)
    except KernelNameError as e:
        raise CorpusError(f"{where}: {e}") from None


# -------------------------------------------------------------------------- replay -------
def expand(kernel_cls, world: dict, schedule: list, strict: bool,
           where: str = "") -> tuple[list, int]:
    """The schedule as plain actions: each ``["until", cpu, label]`` becomes the ``["step",
    cpu]`` actions that run CPU ``cpu`` up to and including its next step whose label contains
    ``label``. Returns (actions, skipped). Stops at the first violation (as execute does).

    strict (the file's own kernel): an action that is not enabled, or an ``until`` whose CPU
    has no operation, whose operation returns or blocks before a matching step, is a
    CorpusError. Otherwise such actions are skipped and counted (an ``until`` then keeps the
    steps it did run)."""
    run = Run(kernel_cls, world)
    out: list = []
    skipped = 0
    expanded = 0
    for i, a in enumerate(schedule):
        if run.violation is not None:
            break
        if a[0] != "until":
            if run.apply(a) is None:
                if strict:
                    raise CorpusError(f"{where}schedule[{i}]: " + _divergence_message(run, i, a)
                                      + f"; the schedule does not fit kernel {kernel_cls.name}")
                skipped += 1
            else:
                out.append(list(a))
            continue
        cpu, label = a[1], a[2]
        problem = None
        last = None
        while problem is None:
            task = run.m.cpus[cpu].task
            if task is None:
                problem = (f"CPU{cpu} runs no operation (start one first)" if last is None else
                           f"CPU{cpu}'s {name} returned (last step {last!r}) before a step whose "
                           f"label contains {label!r}")
                break
            name = task.name
            step = run.apply(["step", cpu])
            if step is None:
                what = task.wait.what if task.wait is not None else "not runnable"
                problem = (f"CPU{cpu}'s {name} is blocked ({what}) before a step whose label "
                           f"contains {label!r}; another CPU must act first (its \"step\"s, or an "
                           "\"ipi\" to a CPU the flush waits for)")
                break
            out.append(["step", cpu])
            expanded += 1
            last = step.text
            if label in step.text or run.violation is not None:
                break
            if expanded > UNTIL_STEPS_MAX:
                raise CorpusError(f"{where}schedule[{i}]: the until actions ran more than "
                                  f"{UNTIL_STEPS_MAX} steps; name a label that comes sooner")
        if problem is not None:
            if strict:
                raise CorpusError(f"{where}schedule[{i}] {json.dumps(a)}: {problem}; `mmfuzz "
                                  "show` prints the step labels (see docs/corpus-format.md "
                                  "\"until\")")
            skipped += 1
    return out, skipped


def replay(cx: Counterexample, kernel: str | None = None) -> tuple[Run, Outcome, int]:
    """Re-run a counterexample. On its own kernel the schedule must fit exactly (a divergence
    raises CorpusError); on another kernel (``kernel``), actions that kernel does not enable
    are skipped and counted. Returns (run, outcome, skipped). A world too small for the
    schedule (out of page frames) is a CorpusError: bad input of the file, not a model
    failure."""
    name, kcls = kernel_for(cx, kernel)
    strict = name == cx.kernel
    where = f"{cx.path}: " if cx.path else ""
    try:
        try:
            actions, skipped = expand(kcls, cx.world, cx.schedule, strict, where)
            run, out = execute(kcls, cx.world, actions, strict=True)
        except ModelFailure as mf:   # Run.apply wraps every exception of the model
            if mf.type != "OutOfFrames":
                raise
            raise OutOfFrames(mf.info["message"]) from None
    except Divergence as e:
        raise CorpusError(f"{where}the schedule no longer fits kernel {name}: {e}; the model "
                          "changed since it was recorded: re-record it with `mmfuzz hunt`") from None
    except OutOfFrames:
        raise CorpusError(f"{where}the world is too small for the schedule: it ran out of page "
                          f"frames (world.nframes = {cx.world['nframes']}); raise world.nframes "
                          f"(at most {LIMITS['nframes'][1]})") from None
    run.skipped = skipped
    return run, out, skipped


def verdict_of(out: Outcome) -> str:
    return f"violation:{out.violation.prop}" if out.violation is not None else "pass"


def check(cx: Counterexample, kernel: str | None = None) -> Verdict:
    """Replay ``cx`` and compare with what it must show: on its own kernel, its ``expect``; on
    another kernel (a violation file replayed on mainline, where the fix is in), "pass". Bad
    input raises CorpusError; a model failure raises ModelError."""
    name, _ = kernel_for(cx, kernel)
    run, out, skipped = replay(cx, kernel)
    expected = cx.expect if name == cx.kernel else "pass"
    got = verdict_of(out)
    ok = got == expected
    where = cx.path or "counterexample"
    note = f" ({skipped} actions not enabled on {name}, skipped)" if skipped else ""
    if ok:
        msg = (f"{where}: reproduced ({out.violation.prop}) on {name}{note}" if out.violation
               else f"{where}: clean on {name}{note}")
    else:
        msg = f"{where}: expected {expected} on {name}, got {got}{note}"
    return Verdict(ok, name, expected, got, msg, run, out, skipped)


def pass_from(cx: Counterexample, kernel: str = "mainline") -> Counterexample:
    """A pass file from a violation file: the schedule as ``kernel`` (where the fix is in)
    actually ran it, the actions it did not enable left out, so it replays strictly there and
    must stay clean: a mainline schedule that once was a bug."""
    run, out, _ = replay(cx, kernel)
    if out.violation is not None:
        raise CorpusError(f"{cx.path}: violates {out.violation.prop} on {kernel}; a pass file "
                          "must run clean")
    actions = [list(a) for a in run.actions[: run.schedule_len]]
    why = (f"the schedule of {os.path.basename(cx.path) or 'a ' + cx.kernel + ' counterexample'}"
           f" as {kernel} runs it: clean, because the fix {cx.kernel} reverts is in")
    return Counterexample(kernel, cx.world, actions, "", why,
                          found={"by": "pass_from", "from": cx.path, "kernel": cx.kernel})


# -------------------------------------------------------------------------- saving -------
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def content_name(cx: Counterexample) -> str:
    """The file name: the verdict plus a hash of kernel, world and schedule."""
    key = json.dumps({"k": cx.kernel, "w": cx.world, "s": cx.schedule}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    stem = _slug(cx.prop) if cx.prop else _slug(cx.kernel.replace("bug:", ""))
    return f"{stem}-{digest}.json"


def target_dir(cx: Counterexample, directory: str) -> str:
    """directory/violations/SLUG/ for a violation (SLUG: the bug's slug, or the kernel name),
    directory/passes/ for a pass file."""
    if not cx.prop:
        return os.path.join(directory, "passes")
    return os.path.join(directory, "violations", _slug(cx.kernel.replace("bug:", "")))


def find_duplicate(cx: Counterexample, directory: str) -> str | None:
    """A file already saved under ``directory`` for the same kernel with the same signature
    (verdict plus the operations involved), or None. Unreadable files are ignored."""
    sub = target_dir(cx, directory)
    sig = cx.signature()
    for path in sorted(glob.glob(os.path.join(sub, "*.json"))):
        try:
            other = load(path)
        except CorpusError:
            continue
        if other.kernel == cx.kernel and other.signature() == sig:
            return path
    return None


def _fingerprint(run: Run, out: Outcome) -> tuple:
    v = out.violation
    return ([(s.cpu, s.text, s.action) for s in run.trace],
            None if v is None else (v.prop, v.why, json.dumps(v.facts, sort_keys=True)),
            out.step, out.phase)


def determinism_check(cx: Counterexample, kernel_cls=None) -> tuple[Run, Outcome]:
    """Replay ``cx`` twice on its own kernel: both must give the same trace and verdict, and the
    verdict must be the one ``cx`` expects; otherwise the model misbehaved (ModelError, never a
    find). ``kernel_cls``: the class, when the caller already has it (a user's variant)."""
    kcls = kernel_cls or kernel_for(cx)[1]
    runs = []
    for _ in range(2):
        actions, _ = expand(kcls, cx.world, cx.schedule, strict=True)
        runs.append(execute(kcls, cx.world, actions, strict=True))
    (r1, o1), (r2, o2) = runs
    f1, f2 = _fingerprint(r1, o1), _fingerprint(r2, o2)
    if f1 != f2:
        at = next((i for i, (a, b) in enumerate(zip(f1[0], f2[0])) if a != b),
                  min(len(f1[0]), len(f2[0])))
        raise ModelError(f"the model is not deterministic: two replays of the same schedule on "
                         f"{cx.kernel} differ (first at step {at + 1}, or in the verdict)")
    if verdict_of(o1) != cx.expect:
        raise ModelError(f"the failure does not reproduce: its schedule replays to "
                         f"{verdict_of(o1)} on {cx.kernel}, not {cx.expect}")
    return r1, o1


def _write_atomic(directory: str, target: str, content: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save(cx: Counterexample, directory: str, rendered: str | None = None,
         kernel_cls=None) -> str:
    """Save ``cx`` under ``directory`` (violations/SLUG/ or passes/) and return its path.

    First the loader's checks and the determinism check (two replays, same trace and verdict;
    either failing is a ModelError: the engine or the model misbehaved). Then
    deduplication: if a file of the same kernel and signature is already there, nothing is
    written and that file's path is returned. Otherwise the JSON (named by a hash of its
    content) and its rendered trace beside it (.txt) are each written to a temporary file and
    renamed into place, the trace first: a reader never sees half a file."""
    try:   # what is saved must load again: the loader's full check, before anything else
        validate_world(cx.world)
        for i, a in enumerate(cx.schedule):
            validate_action(cx.world, a, f"schedule[{i}]")
    except ValueError as e:
        raise ModelError(f"refusing to save a counterexample no mmfuzz could load: {e}") from None
    run, out = determinism_check(cx, kernel_cls)
    dup = find_duplicate(cx, directory)
    if dup is not None:
        return dup
    sub = target_dir(cx, directory)
    os.makedirs(sub, exist_ok=True)
    path = os.path.join(sub, content_name(cx))
    if rendered is None:
        rendered = render_cx(run, out, cx) if out.violation else render(
            run, f"PASS   kernel={cx.kernel}")
    body = json.dumps(cx.to_json(), indent=1) + "\n"
    _write_atomic(sub, path[:-5] + ".txt", rendered + "\n")
    _write_atomic(sub, path, body)
    return path


# ----------------------------------------------------------------------- rendering -------
def title_for(prop: str, kernel: str, seed) -> str:
    return f"VIOLATION {prop}   kernel={kernel}" + (f"   seed={seed}" if seed is not None else "")


def render_cx(run: Run, out: Outcome, cx: Counterexample, path: str | None = None) -> str:
    """The full report: the columns up to the violating step, why, facts, how to replay."""
    v = out.violation
    text = render(run, title_for(v.prop, cx.kernel, cx.found.get("seed")), upto=out.step,
                  mark=out.step)
    tail = [f" {v.why}"]
    if out.phase == "quiescence":
        tail.insert(0, " (found at quiescence: after every operation finished, a full sync and "
                       "dropping the clean cache)")
    tail.append(" facts: " + json.dumps(v.facts, sort_keys=True))
    if path:
        tail.append(f" replay: mmfuzz replay {path}")
    return text + "\n" + "\n".join(tail)


# ------------------------------------------------------------------ model failures ------
FAILURE_KIND = "mmfuzz-model-failure"


def save_failure(failure: dict, kernel: str, directory: str, found: dict) -> str:
    """Save a model failure (a ModelFailure's info: not a counterexample, never a find) as
    versioned JSON under ``directory``/failures/, named by kernel, exception type and a hash of
    the content; ``mmfuzz replay`` re-runs it to the same exception. Returns the path."""
    data = {"format_version": format_version_for(failure["schedule"]), "kind": FAILURE_KIND,
            "kernel": kernel,
            "world": failure["world"], "schedule": failure["schedule"],
            "failure": {k: failure.get(k) for k in ("type", "message", "where", "phase",
                                                    "action", "traceback")},
            "found": found}
    key = json.dumps({"k": kernel, "w": failure["world"], "s": failure["schedule"]},
                     sort_keys=True)
    sub = os.path.join(directory, "failures")
    os.makedirs(sub, exist_ok=True)
    path = os.path.join(sub, f"{_slug(kernel.replace('bug:', ''))}-{_slug(failure['type'])}-"
                             f"{hashlib.sha256(key.encode()).hexdigest()[:12]}.json")
    fd, tmp = tempfile.mkstemp(dir=sub, prefix=".tmp-", suffix=".part")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def load_failure(path: str) -> dict | None:
    """A saved model failure as a dict, or None if ``path`` holds something else (load()
    then reads it, or names its problem)."""
    try:
        d = read_json(path)
    except CorpusError:
        return None   # load() reads it again and names the problem
    if not isinstance(d, dict) or d.get("kind") != FAILURE_KIND:
        return None
    ver = d.get("format_version")
    if type(ver) is not int or not FORMAT_VERSION_MIN <= ver <= FORMAT_VERSION:
        raise _fail(path, f"model-failure format_version {ver!r} is not one of the "
                    f"{FORMAT_VERSION_MIN}-{FORMAT_VERSION} this mmfuzz reads")
    for key, typ in (("kernel", str), ("world", dict), ("schedule", list), ("failure", dict)):
        if not isinstance(d.get(key), typ):
            raise _fail(path, f"field {key!r} is missing or not a {typ.__name__}")
    try:
        validate_world(d["world"])
    except (ValueError, KeyError, TypeError) as e:
        raise _fail(path, f"bad world: {e}") from None
    return d
