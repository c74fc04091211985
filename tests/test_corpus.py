"""Every saved counterexample in corpus/ replays forever after: on its own kernel it still
shows the recorded violation, and a catalogued bug's schedule runs clean on mainline. Never
skipped: an empty corpus fails."""

import os

import pytest

from mmfuzz.corpus import load, replay
from mmfuzz.pytest_plugin import corpus_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = corpus_files(os.path.join(ROOT, "corpus"))


def test_corpus_is_not_empty():
    assert FILES, "corpus/ holds no counterexample"


@pytest.mark.parametrize("path", FILES, ids=[os.path.relpath(p, ROOT) for p in FILES])
def test_corpus_entry_replays(path):
    cx = load(path)
    run, out, skipped = replay(cx)
    assert skipped == 0
    assert out.violation is not None and out.violation.prop == cx.prop
    assert out.step == cx.step
    assert os.path.exists(path[:-5] + ".txt"), "rendered trace missing beside the JSON"
    if cx.kernel.startswith("bug:"):
        _, main_out, _ = replay(cx, "mainline")
        assert main_out.violation is None, main_out.violation
