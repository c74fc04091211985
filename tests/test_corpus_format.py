"""The documented corpus format (docs/corpus-format.md): the hand-written example, world
defaults, expect, until, kernel names, saving (atomic, content-named, deduplicated, replayed
twice first), the violations/ + passes/ layout, and what replay and show print."""

import json
import os
import re

import pytest

from mmfuzz import corpus
from mmfuzz.cli import main
from mmfuzz.corpus import (Counterexample, CorpusError, check, expand, load, pass_from, replay,
                           save, world_with_defaults)
from mmfuzz.kernel import Mainline
from mmfuzz.kernels import resolve_kernel
from mmfuzz.run import ModelError, default_world, execute, validate_world

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "corpus-format.md")
HAND = os.path.join(ROOT, "corpus", "violations", "zap-rmap-before-flush",
                    "handwritten-dirty-data-preserved.json")
RECORDED = os.path.join(ROOT, "corpus", "violations", "zap-rmap-before-flush",
                        "dirty-data-preserved-7054216c6e8c.json")


def write(tmp_path, d, name="cx.json"):
    p = tmp_path / name
    p.write_text(json.dumps(d))
    return str(p)


def hand_doc():
    return json.load(open(HAND))


def test_doc_example_is_the_corpus_file():
    text = open(DOC).read()
    section = text[text.index("## Worked example"):]
    block = re.search(r"```json\n(.*?)```", section, re.S).group(1)
    assert json.loads(block) == hand_doc()


def test_handwritten_zap_violates_on_its_kernel_and_is_clean_on_mainline():
    cx = load(HAND)
    v = check(cx)
    assert v.ok and v.got == "violation:dirty-data-preserved", v.message
    assert v.skipped == 0
    texts = [s.text for s in v.run.trace]
    removal = next(i for i, t in enumerate(texts) if "page_remove_rmap [before flush]" in t)
    mkclean = next(i for i, t in enumerate(texts) if "folio_mapped() = 0" in t)
    assert removal < mkclean < v.outcome.step
    assert v.run.trace[v.outcome.step].cpu == 0 and "TLB hit" in texts[v.outcome.step]
    main_v = check(cx, "mainline")
    assert main_v.ok and main_v.got == "pass" and main_v.expected == "pass"
    # the same race as the fuzzer's own find
    assert load(RECORDED).prop == cx.prop


def test_every_documented_field_is_read():
    text = open(DOC).read()
    for field in corpus.FIELDS:
        assert f"`{field}`" in text, field
    for field in ("ncpus", "cpu_mm", "ptrs_per_pte", "npmds", "nframes", "files", "vmas",
                  "gather", "prefault", "mm", "start", "end", "file", "pgoff", "shared",
                  "writable"):
        assert f"`{field}`" in text, field
    from mmfuzz.run import ACTION_ARGS
    for kind in ACTION_ARGS:
        assert f'`["{kind}"' in text, kind
    # the operations: `mmfuzz ops` prints the registry (tests/test_ops_cli.py); the doc's table
    # is a snapshot and points there, so an operation added later needs no doc edit to pass
    assert "`mmfuzz ops`" in text


def test_world_defaults():
    w = world_with_defaults({})
    validate_world(w)
    assert w == {**default_world(), "prefault": [], "nframes": 64,
                 "vmas": [dict(v, pgoff=0) for v in default_world()["vmas"]], "npmds": 3}
    w = world_with_defaults({"vmas": [{"start": 2, "end": 5, "file": 3, "pgoff": 1,
                                       "shared": True}], "ptrs_per_pte": 4})
    validate_world(w)
    assert w["ncpus"] == 3 and w["cpu_mm"] == [1, 1, 1] and w["npmds"] == 2
    assert w["files"] == [{"id": 3, "npages": 4}] and w["nframes"] == 64
    assert w["vmas"] == [{"mm": 1, "start": 2, "end": 5, "file": 3, "pgoff": 1, "shared": True,
                          "writable": True}]
    assert w["gather"] == {"local_max": 8, "batch_max": 510, "batch_count_max": 19}
    assert world_with_defaults({"cpu_mm": [1, 2]})["ncpus"] == 2
    assert world_with_defaults({"gather": {"local_max": 2}})["gather"]["batch_max"] == 510
    assert load(HAND).world["files"] == [{"id": 1, "npages": 1}]


def test_until_is_inclusive_and_equals_the_counted_steps():
    cx = load(HAND)
    kcls = resolve_kernel(cx.kernel)
    actions, skipped = expand(kcls, cx.world, cx.schedule, strict=True)
    assert skipped == 0 and all(a[0] != "until" for a in actions)
    run, out = execute(kcls, cx.world, actions, strict=True)
    assert out.violation.prop == "dirty-data-preserved"
    # the last step of each until is the first whose label matches
    cpu1 = [s.text for s in run.trace if s.cpu == 1]
    assert "folio_remove_rmap_ptes" in cpu1[-1]
    assert not any("folio_remove_rmap_ptes" in t for t in cpu1[:-1])
    cpu2 = [s.text for s in run.trace if s.cpu == 2]
    assert cpu2[-1].startswith("device writes")
    # the legacy file, with counted steps, shows the same interleaving of labels per CPU
    legacy = load(RECORDED)
    lrun, lout, _ = replay(legacy)
    assert lout.violation.prop == out.violation.prop


def test_legacy_violation_block_and_expect_both_read(tmp_path):
    old = load(RECORDED)
    assert old.expect == "violation:dirty-data-preserved" and old.step == 15
    d = json.load(open(RECORDED))
    d.pop("violation")
    d["expect"] = "violation:dirty-data-preserved"
    assert check(load(write(tmp_path, d))).ok


def test_expect_pass_that_violates_is_not_ok(tmp_path):
    d = hand_doc()
    d["expect"] = "pass"
    v = check(load(write(tmp_path, d)))
    assert not v.ok and v.got == "violation:dirty-data-preserved"
    assert "expected pass on bug:zap-rmap-before-flush, got violation" in v.message


def test_replay_and_show_print_the_files_why(capsys):
    why = hand_doc()["why"]
    assert main(["replay", HAND]) == 1
    out = capsys.readouterr().out
    assert f"why: {why}" in out and "reproduced (dirty-data-preserved)" in out
    assert main(["replay", HAND, "--kernel", "mainline"]) == 0
    out = capsys.readouterr().out
    assert f"why: {why}" in out and "clean on mainline" in out
    assert main(["show", HAND]) == 1
    assert f"why (from the file): {why}" in capsys.readouterr().out


def test_user_kernel_named_on_the_command_line_is_used(tmp_path, capsys):
    d = hand_doc()
    d["kernel"] = "tests.variants:FreeBeforeFlush"
    p = write(tmp_path, d)
    assert main(["replay", p]) == 2
    assert "--kernel tests.variants:FreeBeforeFlush" in capsys.readouterr().err
    # named by the user it is the file's own kernel: strict, and mainline-like here, so the
    # zap blocks on its flush before the rmap removal the until asks for
    assert main(["replay", p, "--kernel", "tests.variants:FreeBeforeFlush"]) == 2
    assert "blocked" in capsys.readouterr().err
    assert main(["replay", HAND, "--kernel", "tests.variants:FreeBeforeFlush"]) == 0


# ------------------------------------------------------------------------- saving --------
def test_save_is_content_named_and_laid_out(tmp_path):
    cx = load(HAND)
    path = save(cx, str(tmp_path))
    assert os.path.dirname(path) == str(tmp_path / "violations" / "zap-rmap-before-flush")
    assert re.fullmatch(r"dirty-data-preserved-[0-9a-f]{12}\.json", os.path.basename(path))
    assert os.path.exists(path[:-5] + ".txt")
    again = load(path)
    assert again.world == cx.world and again.schedule == cx.schedule
    assert again.expect == cx.expect and again.why == cx.why
    assert check(again).ok
    assert not [p for p in os.listdir(os.path.dirname(path)) if p.startswith(".tmp-")]
    # saving again writes nothing new
    before = sorted(os.listdir(os.path.dirname(path)))
    assert save(cx, str(tmp_path)) == path
    assert sorted(os.listdir(os.path.dirname(path))) == before


def test_save_deduplicates_by_signature(tmp_path):
    first = save(load(HAND), str(tmp_path))
    # the fuzzer's own find of the same race: same property, same operations
    assert save(load(RECORDED), str(tmp_path)) == first
    assert len(list((tmp_path / "violations").rglob("*.json"))) == 1
    # a different race on the same kernel is kept
    other = load(os.path.join(ROOT, "corpus", "violations", "madv-parallel-flush-miss",
                              "no-stale-translation-after-return-152b5aeb2fce.json"))
    assert save(other, str(tmp_path)) != first
    assert len(list((tmp_path / "violations").rglob("*.json"))) == 2


def test_pass_files_go_to_passes(tmp_path):
    px = pass_from(load(HAND))
    assert px.kernel == "mainline" and px.expect == "pass"
    path = save(px, str(tmp_path))
    assert os.path.dirname(path) == str(tmp_path / "passes")
    assert check(load(path)).ok


class Flaky(Mainline):
    """Not deterministic: the label of its writeback counts calls across runs."""

    calls = 0

    def writeback(self, t, file_id):
        Flaky.calls += 1
        yield f"writeback call {Flaky.calls}"
        yield from super().writeback(t, file_id)


class NeverFails(Mainline):
    """zap-rmap-before-flush's schedule does not fit: the failure does not reproduce."""


def test_save_replays_twice_first(tmp_path):
    cx = load(HAND)
    bug = resolve_kernel(cx.kernel)
    flaky = type("FlakyZap", (Flaky, bug), {})
    cx2 = Counterexample("tests:FlakyZap", cx.world, cx.schedule, cx.prop, cx.why)
    with pytest.raises(ModelError, match="not deterministic"):
        save(cx2, str(tmp_path), kernel_cls=flaky)
    with pytest.raises((ModelError, CorpusError)):
        save(Counterexample("tests:NeverFails", cx.world, cx.schedule, cx.prop, cx.why),
             str(tmp_path), kernel_cls=NeverFails)
    assert not list(tmp_path.rglob("*.json"))


# --------------------------------------------------------------- generated worlds --------
from hypothesis import given, settings  # noqa: E402

from strategies.machine import worlds  # noqa: E402


@settings(max_examples=60, database=None, derandomize=True, deadline=None)
@given(worlds())
def test_hypothesis_worlds_pass_the_full_check(w):
    """Run checks only a world's shape (it runs once per fuzzing run); the engines' worlds must
    pass the full check a corpus file's world gets, so every saved find loads again."""
    validate_world(w)


def test_an_interrupted_save_leaves_nothing(tmp_path, monkeypatch):
    def boom(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        save(load(HAND), str(tmp_path))
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
