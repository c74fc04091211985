"""The corpus itself. The pytest plugin (mmfuzz/pytest_plugin.py) turns every file into replay
tests (its own kernel, then mainline), the way a user's corpus is tested; what is left here is
what the plugin does not check: our corpus's layout (violations/SLUG/ and passes/) and the
rendered trace beside each file. Never skipped: an empty corpus fails."""

import os

import pytest

from mmfuzz.corpus import files, load

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = files(os.path.join(ROOT, "corpus"))


def test_corpus_is_not_empty():
    assert FILES, "corpus/ holds no counterexample"
    assert any("/passes/" in p for p in FILES) and any("/violations/" in p for p in FILES)


@pytest.mark.parametrize("path", FILES, ids=[os.path.relpath(p, ROOT) for p in FILES])
def test_corpus_entry_is_filed_by_verdict_with_its_rendered_trace(path):
    cx = load(path)
    assert os.path.exists(path[:-5] + ".txt"), "rendered trace missing beside the JSON"
    if cx.prop:
        assert "/violations/" in path
    else:
        assert "/passes/" in path


def test_plugin_replays_every_corpus_file_in_our_own_run(request):
    """In a run over the default test paths (``pytest -n auto``, .ci/run) every corpus file is
    a replay item on its own kernel, and every file of another kernel also on mainline."""
    if request.config.args_source == pytest.Config.ArgsSource.ARGS:
        pytest.skip("test paths named on the command line: the corpus is not collected")
    ids = {it.nodeid for it in request.session.items}
    for path in FILES:
        rel = os.path.relpath(path, str(request.config.rootpath))
        kernel = load(path).kernel
        assert f"{rel}::replay[{kernel}]" in ids
        if kernel != "mainline":
            assert f"{rel}::replay[mainline]" in ids


def test_every_catalogued_bug_has_a_counterexample_in_the_corpus():
    """Each catalogued bug (kernels.BUGS: found from scratch; kernels.UNFOUND: shown on a
    hand-written schedule) keeps a counterexample under violations/SLUG/ on its own kernel,
    so every corpus replay runs its race. gupfast-fork-no-write-protect-seq went a day
    without one after it joined BUGS. Every violations/ directory also names a catalogued
    bug."""
    from mmfuzz.kernels import BUGS, UNFOUND
    slugs = {b.slug: b for b in BUGS + UNFOUND}
    dirs = {os.path.basename(os.path.dirname(p)) for p in FILES if "/violations/" in p}
    for slug, bug in slugs.items():
        mine = [p for p in FILES if f"/violations/{slug}/" in p]
        assert mine, f"corpus/violations/{slug}/ holds no counterexample"
        assert all(load(p).kernel == bug.kernel.name for p in mine), slug
    assert dirs <= set(slugs), sorted(dirs - set(slugs))
