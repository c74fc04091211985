"""Directed fuzzing of a kernel variant: which operations reach the code it changes.

A kernel variant (a catalogued bug, a proposal, a developer's patch written as a mixin) differs
from mainline in the methods its own classes define. A patch reviewer wants the search to
spend its runs where the patch is: the operations whose kernel code can call a changed
function (directed greybox fuzzing, as AFLGo aims at the changed lines of a commit). This
module finds them statically and deterministically:

- ``changed_functions(kernel_cls)``: the names of the methods defined by the classes of
  ``kernel_cls``'s MRO that are not mainline's own classes (the variant's diff, by name);
- ``call_graph()``: for every method of the modelled kernel (mmfuzz/kernel/*.py), the
  ``self.NAME(...)`` calls in its body, read with ``ast`` (names, not classes: a name
  defined by several mixins is one node);
- ``focus_ops(kernel_cls)``: the operations (mmfuzz.ops, in registry order) whose entry
  method reaches a changed function in that graph.

Nothing here reads what a variant's bug is: only which functions it overrides. User faults
are not operations (every run has them), so a change reached only from the fault path (a
new do_wp_page reuse rule) focuses on the operations that also reach it, or on none.
"""

from __future__ import annotations

import ast
import os

from . import ops as _ops

_GRAPH: dict = {}
_FOCUS: dict = {}


def _kernel_dir() -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernel")


def call_graph() -> dict[str, frozenset]:
    """Method name -> the names it calls as ``self.NAME(...)``, over every class of the
    modelled kernel's modules (mmfuzz/kernel/*.py, read in sorted order). Computed once."""
    if "g" in _GRAPH:
        return _GRAPH["g"]
    graph: dict[str, set] = {}
    root = _kernel_dir()
    for fname in sorted(os.listdir(root)):
        if not fname.endswith(".py"):
            continue
        with open(os.path.join(root, fname), encoding="utf-8") as fh:
            tree = ast.parse(fh.read(), fname)
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            for fn in node.body:
                if not isinstance(fn, ast.FunctionDef):
                    continue
                calls = graph.setdefault(fn.name, set())
                for sub in ast.walk(fn):
                    if (isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute)
                            and isinstance(sub.func.value, ast.Name)
                            and sub.func.value.id == "self"):
                        calls.add(sub.func.attr)
    _GRAPH["g"] = {k: frozenset(v) for k, v in graph.items()}
    return _GRAPH["g"]


def changed_functions(kernel_cls) -> tuple[str, ...]:
    """The methods ``kernel_cls`` defines or overrides beyond mainline (sorted names): those of
    every class in its MRO that mainline's MRO does not have."""
    from .kernel import Mainline
    base = set(Mainline.__mro__)
    out: set = set()
    for c in kernel_cls.__mro__:
        if c in base:
            continue
        out.update(n for n, v in vars(c).items() if callable(v) and not n.startswith("__"))
    return tuple(sorted(out))


def reaches(graph: dict, start: str) -> set:
    """Every name reachable from ``start`` in ``graph`` (``start`` included)."""
    seen: set = set()
    todo = [start]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        todo.extend(sorted(graph.get(n, ())))
    return seen


def focus_ops(kernel_cls) -> tuple[str, ...]:
    """The operations, in registry order, whose kernel entry method reaches a function
    ``kernel_cls`` changes (empty for mainline). Cached per class."""
    if kernel_cls in _FOCUS:
        return _FOCUS[kernel_cls]
    changed = set(changed_functions(kernel_cls))
    out: tuple = ()
    if changed:
        graph = call_graph()
        out = tuple(op.name for op in _ops.operations().values()
                    if reaches(graph, op.method) & changed)
    _FOCUS[kernel_cls] = out
    return out
