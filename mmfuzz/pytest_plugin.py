"""pytest plugin: the corpus directory option, a fixture listing its counterexamples, and
explicit Hypothesis profiles (never the automatic `ci` one, which derandomizes and drops the
database when CI is set)."""

from __future__ import annotations

import glob
import os

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("mmfuzz")
    group.addoption("--mmfuzz-corpus", default="corpus",
                    help="directory of saved counterexamples to replay (default: corpus)")


def corpus_files(root: str) -> list[str]:
    return sorted(glob.glob(os.path.join(root, "**", "*.json"), recursive=True))


@pytest.fixture(scope="session")
def mmfuzz_corpus_dir(request) -> str:
    return request.config.getoption("--mmfuzz-corpus")
