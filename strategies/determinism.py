"""Hypothesis generation that depends only on the seed, the settings and the strategy.

Hypothesis (hypothesis/internal/conjecture/providers.py, ``_get_local_constants``) draws about
5% of its integers from constants it finds in the source of every "local" module loaded so far
(not stdlib, not site-packages, not a test file). The pool therefore changes with what the
process happened to import: the same seeded campaign ran 460 examples as a script and 4,254
under pytest (where test files are skipped and other modules are loaded), and under
``pytest -n`` it changed with which tests a worker had run before. Our campaigns run with that
pool empty, so a seed means the same search in a script, the CLI, the bench and any pytest
worker. The global constants Hypothesis ships with are fixed per version and stay in use.
"""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def no_source_constants():
    """Run a Hypothesis campaign with an empty local-constant pool. Restores Hypothesis's own
    function afterwards. On a Hypothesis without the pool it does nothing."""
    try:
        from hypothesis.internal.conjecture import providers
        original = providers._get_local_constants
        cache = providers.CONSTANTS_CACHE
        empty = providers.Constants()
    except (ImportError, AttributeError):
        yield
        return

    providers._get_local_constants = lambda: empty
    cache.cache.clear()
    try:
        yield
    finally:
        providers._get_local_constants = original
        cache.cache.clear()
