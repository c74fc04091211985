"""`mmfuzz show` rendering, compared exactly with golden files under tests/golden/.

Regenerate after an intended change of the rendering or of the model's step labels with
    MMFUZZ_REGEN_GOLDEN=1 PYTHONPATH=$PWD python -m pytest tests/test_show.py -n 0
then read the diff (git diff tests/golden/) before committing it."""

import os

import pytest

from mmfuzz.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, "tests", "golden")
REGEN = os.environ.get("MMFUZZ_REGEN_GOLDEN") == "1"

#: (golden file, corpus file as given on the command line, expected exit status)
CASES = [
    ("show-zap-handwritten.txt",
     "corpus/violations/zap-rmap-before-flush/handwritten-dirty-data-preserved.json", 1),
    ("show-madv-parallel-flush-miss.txt",
     "corpus/violations/madv-parallel-flush-miss/no-stale-translation-after-return-152b5aeb2fce.json", 1),
    ("show-clear-refs-softdirty.txt",
     "corpus/violations/clear-refs-softdirty-no-flush/soft-dirty-accurate-28d355d89b64.json", 1),
]


@pytest.mark.parametrize("golden,path,status", CASES, ids=[c[0] for c in CASES])
def test_show_matches_golden(golden, path, status, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["show", path]) == status
    out = capsys.readouterr().out
    gpath = os.path.join(GOLDEN, golden)
    if REGEN:
        with open(gpath, "w", encoding="utf-8") as fh:
            fh.write(out)
    with open(gpath, encoding="utf-8") as fh:
        assert out == fh.read(), f"{golden} differs; see this file's docstring to regenerate"


def test_show_has_every_part(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    main(["show", CASES[0][1]])
    out = capsys.readouterr().out
    assert " why (from the file): zap_pte_range removes the rmap" in out
    assert "address space at the start (after prefault):" in out
    assert "vma1[0x0-0x1) file1 shared rw" in out and "PTE va 0x0 -> pfn 1 WDA" in out
    assert "CPU0 TLB: va 0x0 -> pfn 1 WD" in out and "CPU1 TLB: empty" in out
    assert "  <-- violation" in out
    assert " * = a step that touches pfn 1 / va 0x0, on CPUs 0, 1, 2" in out
    starred = [ln for ln in out.splitlines() if ln[:5].strip().isdigit() and ln[5:6] == "*"]
    assert any("page_remove_rmap [before flush]" in ln for ln in starred)
    assert any("folio_mkclean" in ln for ln in starred)
    assert not any("writeback_iter" in ln for ln in starred)   # names no page: not marked
    assert (" violated dirty-data-preserved at step 16 (CPU0): file1[0] (pfn 1) holds v2"
            in out and "(data=2, disk=1, file=1, index=0, pfn=1)" in out)
    assert out.rstrip().endswith("replay: mmfuzz replay " + CASES[0][1])


def test_show_of_a_pass_file(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    passes = sorted(os.listdir(os.path.join(ROOT, "corpus", "passes")))
    path = os.path.join("corpus", "passes", [p for p in passes if p.endswith(".json")][0])
    assert main(["show", path]) == 0
    out = capsys.readouterr().out
    assert "PASS   kernel=mainline" in out and "no violation" in out
