"""`mmfuzz ops [--json]` and the validation of start actions both read the operation registry
(mmfuzz.ops): an operation registered there is listed and checked with no other edit."""

import json

import pytest

from mmfuzz import ops
from mmfuzz.cli import main
from mmfuzz.corpus import CorpusError, load

HAND_WORLD = {"vmas": [{"start": 0, "end": 1, "file": 1, "shared": True}]}


def run_ops(capsys, *args):
    assert main(["ops", *args]) == 0
    return capsys.readouterr().out


def test_ops_lists_every_registered_operation(capsys):
    text = run_ops(capsys)
    rows = json.loads(run_ops(capsys, "--json"))
    assert [r["name"] for r in rows] == list(ops.names())
    for r in rows:
        op = ops.get(r["name"])
        assert r["context"] == op.context and r["arg_names"] == list(op.arg_names)
        assert r["kernel_function"] == op.method and r["doc"] == op.doc
        assert r["args"] == [a.describe() for a in op.args]
        # the kernel state it declares (the interaction relation, mmfuzz.ops.STATE)
        assert r["writes"] == list(op.writes) and r["reads"] == list(op.reads)
        assert r["writes"] or r["reads"]
        assert r["models"], f"{r['name']}: the modelled function has no docstring"
        assert r["name"] in text and op.doc in text
        assert json.dumps(["start", "CPU", r["name"], *[n.upper() for n in op.arg_names]]) in text
    assert "madvise_dontneed" in text and "mm/madvise.c" in text
    assert "  writes    " in text and "pte.dirty:file" in text
    assert "until" in text.splitlines()[-1]


def _file(tmp_path, action):
    p = tmp_path / "cx.json"
    p.write_text(json.dumps({"format_version": 1, "kind": "mmfuzz-counterexample",
                             "kernel": "mainline", "world": HAND_WORLD, "schedule": [action],
                             "expect": "pass", "why": "a probe of argument checking"}))
    return str(p)


@pytest.fixture
def probe_op(monkeypatch):
    op = ops.Operation("probe_op", "clear_refs", (ops.Choice("mode", (1, 2), "probe"),),
                       "process", "a probe operation", "tests", ("mode",))
    ops.operations()
    monkeypatch.setitem(ops._REGISTRY, "probe_op", op)
    return op


def test_a_new_operation_is_listed_and_validated(probe_op, tmp_path, capsys):
    text = run_ops(capsys)
    assert "probe_op" in text and "mode: one of [1, 2] (probe)" in text
    assert load(_file(tmp_path, ["start", 0, "probe_op", 2])).schedule
    with pytest.raises(CorpusError, match=r"mode must be one of \[1, 2\]"):
        load(_file(tmp_path, ["start", 0, "probe_op", 3]))
    with pytest.raises(CorpusError, match="takes 1 argument"):
        load(_file(tmp_path, ["start", 0, "probe_op"]))
    with pytest.raises(CorpusError, match="mode must be one of"):
        load(_file(tmp_path, ["start", 0, "probe_op", True]))


def test_removed_operation_is_unknown(tmp_path):
    with pytest.raises(CorpusError, match="unknown operation 'probe_op'"):
        load(_file(tmp_path, ["start", 0, "probe_op", 1]))
