"""Counterexamples as versioned JSON: load, validate, save atomically, replay.

A file names the kernel, the world, the operations started and the whole schedule of actions,
the violated property with its facts, one sentence of why, and how it was found. It is plain
data: a human can write one by hand from a linux-mm race diagram, and replay needs no
Hypothesis search.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import tempfile
from dataclasses import dataclass

from . import __version__
from .kernels import KernelNameError, resolve_kernel
from .run import Divergence, Outcome, Run, execute, validate_world
from .trace import render

FORMAT_VERSION = 1
KIND = "mmfuzz-counterexample"


class CorpusError(ValueError):
    """A counterexample file that cannot be used; the message names the problem and the fix."""


@dataclass
class Counterexample:
    kernel: str
    world: dict
    schedule: list
    prop: str
    why: str
    facts: dict
    step: int | None
    phase: str
    found: dict

    def to_json(self) -> dict:
        calls = [a[2:] for a in self.schedule if a[0] == "start"]
        return {
            "format_version": FORMAT_VERSION,
            "kind": KIND,
            "kernel": self.kernel,
            "flush_model": "x86-ipi",
            "world": self.world,
            "calls": calls,
            "schedule": self.schedule,
            "violation": {"property": self.prop, "why": self.why, "facts": self.facts,
                          "step": self.step, "phase": self.phase},
            "why": self.why,
            "found": self.found,
        }


def found_info(seed, engine: str, **extra) -> dict:
    info = {"seed": seed, "engine": engine, "mmfuzz_version": __version__,
            "python": platform.python_version()}
    info.update(extra)
    return info


def _fail(path: str, problem: str, fix: str = "restore it with git, or re-record it with "
          "`mmfuzz hunt`/`mmfuzz fuzz --save`") -> CorpusError:
    return CorpusError(f"{path}: {problem}; {fix}")


def load(path: str) -> Counterexample:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as e:
        raise _fail(path, f"cannot read ({e.strerror})", "check the path") from None
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise _fail(path, f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); the "
                    "file is truncated or corrupt") from None
    if not isinstance(d, dict) or d.get("kind") != KIND:
        raise _fail(path, "not an mmfuzz counterexample (no \"kind\": \"mmfuzz-counterexample\")")
    ver = d.get("format_version")
    if not isinstance(ver, int):
        raise _fail(path, "has no integer format_version")
    if ver < FORMAT_VERSION:
        raise _fail(path, f"format_version {ver} is older than the {FORMAT_VERSION} this mmfuzz "
                    "reads", "re-record it with `mmfuzz hunt` or `mmfuzz fuzz --save`")
    if ver > FORMAT_VERSION:
        raise _fail(path, f"format_version {ver} is newer than this mmfuzz ({__version__}) reads",
                    "upgrade mmfuzz")
    for key, typ in (("kernel", str), ("world", dict), ("schedule", list), ("violation", dict)):
        if not isinstance(d.get(key), typ):
            raise _fail(path, f"field {key!r} is missing or not a {typ.__name__}")
    try:
        validate_world(d["world"])
    except (ValueError, KeyError, TypeError) as e:
        raise _fail(path, f"bad world: {e}") from None
    for i, a in enumerate(d["schedule"]):
        if (not isinstance(a, list) or not a or a[0] not in ("start", "step", "access", "ipi", "evict")
                or not all(isinstance(x, (int, str)) for x in a)):
            raise _fail(path, f"schedule entry {i} ({a!r}) is not an action")
    v = d["violation"]
    if not isinstance(v.get("property"), str):
        raise _fail(path, "violation.property is missing")
    return Counterexample(d["kernel"], d["world"], d["schedule"], v["property"],
                          v.get("why", d.get("why", "")), v.get("facts", {}), v.get("step"),
                          v.get("phase", "step"), d.get("found", {}))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def save(cx: Counterexample, directory: str, rendered: str) -> str:
    """Write ``cx`` (and its rendered trace beside it, .txt) under ``directory``/KERNEL/, named
    by a hash of its content, atomically. An existing file of that name holds the same content,
    so nothing is ever lost by saving."""
    data = cx.to_json()
    body = json.dumps(data, indent=1, sort_keys=False) + "\n"
    key = json.dumps({"k": cx.kernel, "w": cx.world, "s": cx.schedule}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    sub = os.path.join(directory, _slug(cx.kernel.replace("bug:", "")))
    os.makedirs(sub, exist_ok=True)
    path = os.path.join(sub, f"{_slug(cx.prop)}-{digest}.json")
    for target, content in ((path, body), (path[:-5] + ".txt", rendered + "\n")):
        fd, tmp = tempfile.mkstemp(dir=sub, prefix=".tmp-", suffix=".part")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(content)
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    return path


def replay(cx: Counterexample, kernel: str | None = None) -> tuple[Run, Outcome, int]:
    """Re-run a counterexample. On its own kernel the schedule must fit exactly (a divergence
    raises CorpusError); on another kernel (``kernel``), actions that kernel does not enable
    are skipped and counted. Returns (run, outcome, skipped)."""
    name = kernel or cx.kernel
    try:
        kcls = resolve_kernel(name)
    except KernelNameError as e:
        raise CorpusError(str(e)) from None
    strict = name == cx.kernel
    try:
        run, out = execute(kcls, cx.world, cx.schedule, strict=strict)
    except Divergence as e:
        raise CorpusError(f"the schedule no longer fits kernel {name}: {e}; the model changed "
                          "since it was recorded: re-record it with `mmfuzz hunt`") from None
    return run, out, run.skipped


def title_for(prop: str, kernel: str, seed) -> str:
    return f"VIOLATION {prop}   kernel={kernel}   seed={seed}"


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
    data = {"format_version": FORMAT_VERSION, "kind": FAILURE_KIND, "kernel": kernel,
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
        with open(path, encoding="utf-8") as fh:
            d = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(d, dict) or d.get("kind") != FAILURE_KIND:
        return None
    if d.get("format_version") != FORMAT_VERSION:
        raise _fail(path, f"model-failure format_version {d.get('format_version')!r} is not "
                    f"the {FORMAT_VERSION} this mmfuzz reads")
    for key, typ in (("kernel", str), ("world", dict), ("schedule", list), ("failure", dict)):
        if not isinstance(d.get(key), typ):
            raise _fail(path, f"field {key!r} is missing or not a {typ.__name__}")
    try:
        validate_world(d["world"])
    except (ValueError, KeyError, TypeError) as e:
        raise _fail(path, f"bad world: {e}") from None
    return d
