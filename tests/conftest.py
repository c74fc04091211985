"""Collection order for parallel runs."""

import pytest


def _cost(item: pytest.Item) -> float:
    return max((m.args[0] for m in item.iter_markers("cost")), default=0)


def pytest_collection_modifyitems(config, items):
    """Longest first (a stable sort, so equal costs keep their order). xdist's load scheduler
    hands tests out in collection order (one at a time with --maxschedchunk 1, set in
    pyproject.toml); a long test collected last runs alone while the other workers idle."""
    items.sort(key=_cost, reverse=True)
