"""The corpus itself: the plugin (mmfuzz/pytest_plugin.py) turns every file into replay tests
(its own kernel, then mainline), the way a user's corpus is tested; what is left here is what
the plugin does not check. Never skipped: an empty corpus fails."""

import os

import pytest

from mmfuzz.pytest_plugin import corpus_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = corpus_files(os.path.join(ROOT, "corpus"))


def test_corpus_is_not_empty():
    assert FILES, "corpus/ holds no counterexample"


@pytest.mark.parametrize("path", FILES, ids=[os.path.relpath(p, ROOT) for p in FILES])
def test_corpus_entry_has_its_rendered_trace(path):
    assert os.path.exists(path[:-5] + ".txt"), "rendered trace missing beside the JSON"


def test_plugin_replays_every_corpus_file_in_our_own_run(request):
    """In a run over the default test paths (``pytest -n auto``, .ci/run) every corpus file is
    a replay item on its own kernel and on mainline."""
    if request.config.args_source == pytest.Config.ArgsSource.ARGS:
        pytest.skip("test paths named on the command line: the corpus is not collected")
    ids = {it.nodeid for it in request.session.items}
    for path in FILES:
        rel = os.path.relpath(path, str(request.config.rootpath))
        kernel = "bug:" + os.path.basename(os.path.dirname(path))
        assert f"{rel}::replay[{kernel}]" in ids
        assert f"{rel}::replay[mainline]" in ids
