"""Bad input from a corpus file, everywhere a file can give it: each case exits 2 with one line
naming the problem (and the fix), no traceback, in bounded time and memory, and nothing in the
file or in corpus/ changes. The table starts from the hand-written zap-rmap-before-flush file
(docs/corpus-format.md) and breaks one thing per case."""

import copy
import hashlib
import json
import os
import subprocess
import sys

import pytest

from mmfuzz.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOOD = os.path.join(ROOT, "corpus", "violations", "zap-rmap-before-flush",
                    "handwritten-dirty-data-preserved.json")
BASE = json.load(open(GOOD, encoding="utf-8"))


def corpus_digest() -> str:
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(os.path.join(ROOT, "corpus"))):
        dirnames.sort()
        for name in sorted(filenames):
            p = os.path.join(dirpath, name)
            h.update(p.encode())
            h.update(open(p, "rb").read())
    return h.hexdigest()


def doc(**changes) -> bytes:
    """BASE with top-level fields replaced (None deletes one)."""
    d = copy.deepcopy(BASE)
    for k, v in changes.items():
        if v is None:
            d.pop(k, None)
        else:
            d[k] = v
    return json.dumps(d).encode()


def world(**changes) -> bytes:
    w = dict(BASE["world"], **changes)
    return doc(world=w)


def sched(*actions) -> bytes:
    return doc(schedule=[list(a) if isinstance(a, (list, tuple)) else a for a in actions])


def text_replace(old: str, new: str) -> bytes:
    t = json.dumps(BASE)
    assert old in t
    return t.replace(old, new, 1).encode()


START = ["start", 1, "madvise_dontneed", 0, 1]

#: (id, file bytes, a fragment the error line must contain)
CASES = [
    # encoding and JSON syntax
    ("non-utf8-bytes", b"\xff\xfe" + doc(), "not UTF-8"),
    ("latin1-why", doc().replace(b"zap_pte_range removes", b"zap_pte_range caf\xe9 removes"),
     "not UTF-8"),
    ("empty-file", b"", "not valid JSON"),
    ("truncated", doc()[:200], "not valid JSON"),
    ("deep-nesting", b"[" * 200_000 + b"]" * 200_000, "deeper than"),
    ("deep-nesting-in-found", doc(found=json.loads("[" * 40 + "]" * 40)), "deeper than"),
    ("nan", text_replace('"prefault": [[0, 0, 1]]', '"ncpus": NaN, "prefault": [[0, 0, 1]]'),
     "NaN"),
    ("infinity", text_replace('"prefault": [[0, 0, 1]]', '"nframes": Infinity, "prefault": [[0, 0, 1]]'),
     "Infinity"),
    ("minus-infinity", text_replace('[0, 0, 1]]', '[0, 0, -Infinity]]'), "Infinity"),
    ("float-overflow", text_replace('"prefault": [[0, 0, 1]]', '"nframes": 1e400, "prefault": [[0, 0, 1]]'),
     "out of range"),
    ("huge-int-literal", text_replace('"prefault": [[0, 0, 1]]', '"nframes": ' + "9" * 5000
                                      + ', "prefault": [[0, 0, 1]]'), "digits"),
    ("duplicate-key", text_replace('"kind"', '"kernel": "mainline", "kind"'), "appears twice"),
    ("top-level-list", b"[1, 2, 3]", "not an mmfuzz counterexample"),
    ("foreign-json", b'{"name": "left-pad", "version": "1.3.0"}', "not an mmfuzz counterexample"),
    ("oversized-file", doc(found={"pad": "x" * (1 << 20)}), "larger than"),
    # versions and fields
    ("newer-version", doc(format_version=3), "upgrade mmfuzz"),
    ("older-version", doc(format_version=0), "re-record"),
    ("version-string", doc(format_version="1"), "integer format_version"),
    ("version-bool", doc(format_version=True), "integer format_version"),
    ("unknown-field", doc(expected="pass"), "unknown field 'expected'"),
    ("no-why", doc(why=None), "lacks the field 'why'"),
    ("empty-why", doc(why="  "), "'why'"),
    ("no-schedule", doc(schedule=None), "lacks the field 'schedule'"),
    ("schedule-not-list", doc(schedule={"0": START}), "must be a list"),
    ("expect-unknown-property", doc(expect="violation:made-up"), "unknown property"),
    ("expect-garbage", doc(expect="fail"), "\"pass\" or \"violation:PROPERTY\""),
    ("no-verdict", doc(expect=None), "says nothing about the verdict"),
    ("expect-contradicts-violation",
     doc(violation={"property": "accounting", "why": "x", "facts": {}, "step": 1, "phase": "step"}),
     "contradicts"),
    ("violation-step-string",
     doc(expect=None, violation={"property": "dirty-data-preserved", "step": "15"}),
     "violation.step"),
    ("flush-model", doc(flush_model="arm64-tlbi"), "not modelled"),
    ("flush-model-disagrees", doc(flush_model="x86-hypercall"), "disagrees with world.tlb_flush"),
    ("tlb-flush-mode", world(tlb_flush="broadcast"), "is not one of ipi, hypercall"),
    ("found-not-object", doc(found="by hand"), "'found'"),
    # kernels (no import: see also test_file_never_imports)
    ("kernel-module", doc(kernel="this:X"), "never causes an import"),
    ("kernel-unknown-bug", doc(kernel="bug:nope"), "unknown bug"),
    ("kernel-not-string", doc(kernel=7), "'kernel'"),
    # world sizes: negative, zero, huge, wrong type
    ("ncpus-negative", world(ncpus=-1), "world.ncpus"),
    ("ncpus-zero", world(ncpus=0), "world.ncpus"),
    ("ncpus-huge", world(ncpus=10**9), "world.ncpus"),
    ("ncpus-bool", world(ncpus=True, cpu_mm=[1]), "not a boolean"),
    ("ncpus-float", world(ncpus=3.0), "must be an integer"),
    ("cpu-mm-mismatch", world(ncpus=2, cpu_mm=[1, 1, 1]), "cpu_mm"),
    ("nframes-zero", world(nframes=0), "world.nframes"),
    ("nframes-huge", world(nframes=10**10), "world.nframes"),
    ("npmds-huge", world(npmds=10**8), "world.npmds"),
    ("ptrs-per-pte-huge", world(ptrs_per_pte=10**9), "world.ptrs_per_pte"),
    ("page-table-too-big", world(ptrs_per_pte=512, npmds=64), "pages"),
    ("file-npages-huge", world(files=[{"id": 1, "npages": 10**9}]), "npages"),
    ("gather-local-max-1", world(gather={"local_max": 1}), "local_max"),
    ("gather-unknown", world(gather={"locl_max": 8}), "unknown field"),
    ("world-unknown-field", world(nfames=64), "unknown field"),
    ("too-many-vmas", world(vmas=[{"start": i, "end": i + 1} for i in range(17)]), "at most 16"),
    ("vma-overlap", world(vmas=[{"start": 0, "end": 2, "file": 1, "shared": True},
                                {"start": 1, "end": 2}]), "overlaps"),
    ("vma-past-file", world(vmas=[{"start": 0, "end": 2, "file": 1, "shared": True}],
                            files=[{"id": 1, "npages": 1}]), "which has 1 pages"),
    ("vma-unknown-mm", world(vmas=[{"mm": 2, "start": 0, "end": 1, "file": 1}]), "no CPU runs"),
    ("vma-shared-int", world(vmas=[{"start": 0, "end": 1, "file": 1, "shared": 1}]), "true or false"),
    ("vma-end-before-start", world(vmas=[{"start": 1, "end": 1, "file": 1}]), "end"),
    ("prefault-outside-vma", world(prefault=[[0, 1, 1]]), "in no VMA"),
    ("prefault-bool", world(prefault=[[0, 0, True]]), "not a boolean"),
    ("world-too-small", world(nframes=2), "too small"),
    # actions: kinds, arity, types, ranges
    ("unknown-action-kind", sched(START, ["sleep", 1]), "unknown action kind"),
    ("action-not-list", sched(START, "step 1"), "must be a list"),
    ("action-empty", sched(START, []), "must be a list"),
    ("step-extra-arg", sched(START, ["step", 1, 2]), "arguments"),
    ("cpu-out-of-range", sched(START, ["step", 5]), "out of range 0..2"),
    ("cpu-bool", sched(START, ["step", True]), "not a boolean"),
    ("cpu-string", sched(["start", "1", "madvise_dontneed", 0, 1]), "must be an integer"),
    ("access-write-bool", sched(["access", 0, 0, True]), "not a boolean"),
    # a store of the same value (2) is format_version 2; an access kind past it is unknown
    ("access-write-2", sched(["access", 0, 0, 2]), "is format_version 2"),
    ("access-write-3", doc(format_version=2, schedule=[["access", 0, 0, 3]]),
     "write (the access kind"),
    ("unknown-op", sched(["start", 1, "vfork"]), "unknown operation"),
    ("op-arg-count", sched(["start", 1, "madvise_dontneed", 0]), "takes 2 argument"),
    ("op-arg-huge", sched(["start", 1, "madvise_dontneed", 0, 10**12]), "must lie inside"),
    ("op-arg-negative", sched(["start", 1, "madvise_dontneed", -5, 1]), "range -5+1"),
    ("op-arg-string", sched(["start", 1, "madvise_dontneed", 0, "2"]), "must be integers"),
    ("op-arg-float", sched(["start", 1, "madvise_dontneed", 0, 1.5]), "must be integers"),
    ("op-unknown-file", sched(["start", 2, "writeback", 9]), "file"),
    ("too-many-actions", sched(*([["ipi", 0]] * 10_001)), "more than the 10000"),
    ("until-empty-label", sched(START, ["until", 1, ""]), "non-empty string"),
    ("until-int-label", sched(START, ["until", 1, 7]), "non-empty string"),
    ("until-idle-cpu", sched(["until", 1, "zap_pte_range"]), "runs no operation"),
    ("until-never-matches", sched(["start", 2, "drop_cache", 1, 0], ["until", 2, "no_such_function"]),
     "returned"),
    ("until-blocked", sched(["start", 1, "munmap", 0, 1], ["step", 1],
                            ["start", 2, "madvise_dontneed", 0, 1],
                            ["until", 2, "zap_pte_range"]), "blocked"),
    ("step-not-enabled", sched(["step", 1]), "not enabled"),
]


@pytest.fixture(scope="module")
def digest_before():
    return corpus_digest()


@pytest.mark.parametrize("name,data,needle", CASES, ids=[c[0] for c in CASES])
def test_bad_file_is_one_line_exit_2(name, data, needle, tmp_path, capsys, digest_before):
    path = tmp_path / f"{name}.json"
    path.write_bytes(data)
    status = main(["replay", str(path)])
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert status == 2, (status, out, err)
    assert len(lines) == 1 and lines[0].startswith("mmfuzz: error: "), err
    assert "Traceback" not in err and out == ""
    assert needle in lines[0], lines[0]
    assert path.read_bytes() == data
    assert corpus_digest() == digest_before


def test_at_least_30_cases_and_one_per_class():
    assert len(CASES) >= 30
    for needle in ("not UTF-8", "deeper than", "NaN", "world.ncpus", "npages", "too small",
                   "unknown action kind", "not a boolean", "never causes an import"):
        assert any(needle in c[2] for c in CASES), needle


@pytest.mark.parametrize("cmd", ["show", "exhaust"])
@pytest.mark.parametrize("name", ["non-utf8-bytes", "ncpus-huge", "op-arg-huge", "kernel-module",
                                  "world-too-small"])
def test_show_and_exhaust_reject_the_same(cmd, name, tmp_path, capsys):
    data = next(c[1] for c in CASES if c[0] == name)
    path = tmp_path / "bad.json"
    path.write_bytes(data)
    assert main([cmd, str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("mmfuzz: error: ")


def test_every_file_checked_before_any_runs(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_bytes(world(ncpus=0))
    assert main(["replay", GOOD, str(bad)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "world.ncpus" in err


@pytest.mark.parametrize("name", ["ncpus-huge", "nframes-huge", "npmds-huge", "op-arg-huge",
                                  "deep-nesting", "oversized-file"])
def test_bounded_memory_and_time(name, tmp_path):
    """In a child with 1 GB of address space and 60 s: the cases that once grew to 7.5 GB or
    never returned."""
    data = next(c[1] for c in CASES if c[0] == name)
    path = tmp_path / "bad.json"
    path.write_bytes(data)
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)); "
            "from mmfuzz.cli import main; sys.exit(main(['replay', sys.argv[1]]))")
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                       timeout=60, env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


PROBE = '''
import os
open(os.environ["MMFUZZ_PROBE_MARK"], "w").write("imported")
from mmfuzz.kernel import Mainline
class Probe(Mainline):
    """A user's variant: identical to mainline."""
'''


def test_file_never_imports(tmp_path, capsys, monkeypatch):
    """A file naming package.module:Class exits 2 and imports nothing; the same kernel named
    with --kernel is imported (the user asked) and replays."""
    mark = tmp_path / "mark"
    (tmp_path / "mmfuzz_probe_variant.py").write_text(PROBE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("MMFUZZ_PROBE_MARK", str(mark))
    path = tmp_path / "cx.json"
    path.write_bytes(doc(kernel="mmfuzz_probe_variant:Probe", expect="pass",
                         schedule=[["start", 2, "drop_cache", 1, 0], ["until", 2, "folio_unlock"]]))
    before = set(sys.modules)
    for cmd in (["replay", str(path)], ["show", str(path)], ["exhaust", str(path)]):
        assert main(cmd) == 2
        err = capsys.readouterr().err
        assert "--kernel mmfuzz_probe_variant:Probe" in err, err
    assert "mmfuzz_probe_variant" not in sys.modules and not mark.exists()
    # nothing but mmfuzz's own lazily imported modules (the exhaust command imports
    # mmfuzz.exhaust; in a fresh pytest-xdist worker nothing had imported it before)
    assert {m for m in set(sys.modules) - before if m.split(".")[0] != "mmfuzz"} == set()
    path2 = tmp_path / "this.json"
    path2.write_bytes(doc(kernel="this:X"))
    assert main(["replay", str(path2)]) == 2
    out, err = capsys.readouterr()
    assert "Beautiful is better" not in out + err and "this" not in set(sys.modules) - before
    # named by the user: imported, and the schedule runs (clean: Probe is mainline)
    assert main(["replay", str(path), "--kernel", "mmfuzz_probe_variant:Probe"]) == 0
    assert mark.exists() and "mmfuzz_probe_variant" in sys.modules
    sys.modules.pop("mmfuzz_probe_variant")


@pytest.mark.parametrize("args,needle", [
    (["replay", GOOD, "--kernel", "bug:nope"], "unknown bug"),
    (["replay", GOOD, "--kernel", "no_such_module_xyz:K"], "cannot import module"),
    (["replay", GOOD, "--kernel", "tests.variants:NotThere"], "not a subclass"),
    (["replay", ROOT], "is a directory"),
    (["show", "/nonexistent/cx.json"], "cannot read"),
    (["exhaust", GOOD, "--kernel", "linux-2.4"], "unknown kernel"),
    (["ops", "--yaml"], "unrecognized arguments"),
])
def test_bad_options_are_one_line_exit_2(args, needle, capsys, digest_before):
    assert main(args) == 2
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], err
    assert corpus_digest() == digest_before
