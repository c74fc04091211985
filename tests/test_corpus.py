"""Every saved counterexample in corpus/ replays forever after: a violation file still shows
its expected violation on its own kernel and runs clean on mainline; a pass file runs clean on
its kernel. Never skipped: an empty corpus fails. (Uses corpus.check, the API the pytest
plugin uses.)"""

import os

import pytest

from mmfuzz.corpus import check, files, load

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = files(os.path.join(ROOT, "corpus"))


def test_corpus_is_not_empty():
    assert FILES, "corpus/ holds no counterexample"
    assert any("/passes/" in p for p in FILES) and any("/violations/" in p for p in FILES)


@pytest.mark.parametrize("path", FILES, ids=[os.path.relpath(p, ROOT) for p in FILES])
def test_corpus_entry_replays(path):
    cx = load(path)
    v = check(cx)
    assert v.ok, v.message
    assert v.skipped == 0
    if cx.step is not None:          # recorded by a saver; a hand-written file has none
        assert v.outcome.step == cx.step
    assert os.path.exists(path[:-5] + ".txt"), "rendered trace missing beside the JSON"
    if cx.prop:
        assert "/violations/" in path
        main = check(cx, "mainline")
        assert main.ok and main.outcome.violation is None, main.message
    else:
        assert "/passes/" in path
