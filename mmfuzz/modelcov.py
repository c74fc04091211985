"""Model coverage (``mmfuzz fuzz --coverage``): which lines of the modelled kernel functions a
campaign executed, measured with coverage.py.

Measured: every function in mmfuzz/kernel/*.py, plus the variant's own classes in their module
(for a user's ``package.module:Class``, that module; for ``bug:SLUG``, mmfuzz/kernels.py). Each
function is reported as lines hit / lines total, counting the statements of its body (its
``def`` line and docstring are left out: they run at import, not in a campaign). The functions
the variant overrides, the code a patch changes, are listed first: a variant's author sees
whether the fuzzer reached them at all. Only this process is measured, so ``--coverage`` runs
the campaign in one worker.
"""

from __future__ import annotations

import ast
import glob
import inspect
import os
from dataclasses import asdict, dataclass

from .kernel import Mainline

_KERNEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernel")


@dataclass
class FunctionCoverage:
    file: str          # path as given to the report (relative to the working directory if below it)
    function: str      # Class.method or function, as in the source
    line: int          # its def line
    hit: int
    total: int
    overridden: bool   # defined by the variant's own classes (the patch)
    missing: list[int]


def variant_classes(kcls: type) -> list[type]:
    """The classes between ``kcls`` and Mainline in its MRO: the variant's own code."""
    out = []
    for c in kcls.__mro__:
        if c is Mainline or c in Mainline.__mro__:
            continue
        out.append(c)
    return out


def overridden_functions(kcls: type) -> list[tuple[str, str]]:
    """(file, Class.name) of every function the variant's own classes define."""
    out = []
    for c in variant_classes(kcls):
        try:
            path = os.path.abspath(inspect.getsourcefile(c))
        except TypeError:
            continue
        for name, value in vars(c).items():
            if inspect.isfunction(value):
                out.append((path, f"{c.__name__}.{name}"))
    return out


def measured_files(kcls: type) -> list[str]:
    files = sorted(os.path.abspath(p) for p in glob.glob(os.path.join(_KERNEL_DIR, "*.py")))
    for c in variant_classes(kcls):
        try:
            path = os.path.abspath(inspect.getsourcefile(c))
        except TypeError:
            continue
        if path not in files:
            files.append(path)
    return files


def _functions(tree: ast.Module):
    """(qualname, def line, first body line, last line) of every top-level function and method;
    nested functions count toward their enclosing one."""
    def body_span(node):
        body = node.body
        if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            body = body[1:]
        if not body:
            return None
        return body[0].lineno, node.end_lineno

    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            span = body_span(node)
            if span:
                yield node.name, node.lineno, *span
        elif isinstance(node, ast.ClassDef):
            for sub in node.body:
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    span = body_span(sub)
                    if span:
                        yield f"{node.name}.{sub.name}", sub.lineno, *span


def _shown(path: str) -> str:
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


class ModelCoverage:
    """Start before the campaign, stop after, then ``report()``."""

    def __init__(self, kcls: type):
        import coverage
        self.kcls = kcls
        self.files = measured_files(kcls)
        self.class_names = {c.__name__ for c in variant_classes(kcls)}
        self.cov = coverage.Coverage(data_file=None, include=self.files, config_file=False,
                                     branch=False)

    def __enter__(self):
        self.cov.start()
        return self

    def __exit__(self, *exc):
        self.cov.stop()
        return False

    def functions(self) -> list[FunctionCoverage]:
        over = set(overridden_functions(self.kcls))
        out = []
        for path in self.files:
            _, statements, _, missing, _ = self.cov.analysis2(path)
            with open(path, encoding="utf-8") as fh:
                tree = ast.parse(fh.read(), path)
            stmts, miss = set(statements), set(missing)
            own = os.path.dirname(path) == _KERNEL_DIR
            for name, line, first, last in _functions(tree):
                if not own and name.partition(".")[0] not in self.class_names:
                    continue   # the variant's module: only the variant's own classes
                body = [n for n in range(first, last + 1) if n in stmts]
                if not body:
                    continue
                lost = [n for n in body if n in miss]
                out.append(FunctionCoverage(_shown(path), name, line, len(body) - len(lost),
                                            len(body), (path, name) in over, lost))
        return out

    def report(self) -> str:
        fns = self.functions()
        lines = [f"model coverage: kernel {self.kcls.name} (lines of each modelled function "
                 "that the campaign executed)"]
        over = [f for f in fns if f.overridden]
        if over:
            lines.append(" overridden by the variant (the code the patch changes):")
            for f in over:
                note = "  <-- NEVER REACHED" if f.hit == 0 else (
                    f"  (lines not run: {_ranges(f.missing)})" if f.missing else "")
                lines.append(f"  {f.function:48} {f.hit:3}/{f.total:<3} {f.file}:{f.line}{note}")
        replaced = {f.function.rpartition(".")[2] for f in over}
        width = max((len(f.function) for f in fns), default=10)
        current = None
        for f in fns:
            if f.overridden:
                continue
            if f.file != current:
                current = f.file
                lines.append(f" {current}")
            meth = f.function.rpartition(".")[2]
            mark = ("   (replaced by the variant)" if meth in replaced and "." in f.function
                    else "" if f.hit else "   (not reached)")
            lines.append(f"  {f.function:{width}} {f.hit:3}/{f.total:<3}{mark}")
        hit = sum(f.hit for f in fns)
        total = sum(f.total for f in fns)
        reached = sum(1 for f in fns if f.hit)
        lines.append(f" total: {reached} of {len(fns)} functions reached, {hit}/{total} lines "
                     f"({100 * hit / total if total else 0:.0f}%)")
        return "\n".join(lines)

    def to_json(self) -> dict:
        fns = self.functions()
        return {"kernel": self.kcls.name,
                "files": [_shown(p) for p in self.files],
                "functions": [{k: v for k, v in asdict(f).items()} for f in fns],
                "lines_hit": sum(f.hit for f in fns), "lines_total": sum(f.total for f in fns)}


def _ranges(lines: list[int]) -> str:
    out, start, prev = [], None, None
    for n in lines:
        if start is None:
            start = prev = n
        elif n == prev + 1:
            prev = n
        else:
            out.append(f"{start}-{prev}" if prev != start else f"{start}")
            start = prev = n
    if start is not None:
        out.append(f"{start}-{prev}" if prev != start else f"{start}")
    return ", ".join(out)
