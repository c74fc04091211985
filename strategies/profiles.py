"""Hypothesis settings profiles for mmfuzz campaigns, chosen explicitly by name.

Three profiles, registered with ``settings.register_profile`` under the names ``mmfuzz-dev``,
``mmfuzz-pr`` and ``mmfuzz-nightly`` (prefixed so they never clash with a project's own), and
selected with ``pytest --mmfuzz-profile dev|pr|nightly`` (``strategies.profiles.PROFILES``
holds each one's campaign defaults). Hypothesis's automatic ``ci`` profile (loaded when a CI
variable is set) is never used: a campaign's settings are built from the named profile only.

- ``dev`` (the default): a fresh random seed per session (printed), the example database in
  ``.hypothesis/examples`` read and written, a 30 s campaign budget.
- ``pr``: derandomized (seed 0 unless one is given), quick (1,000 examples: the same search
  on any machine, whatever its speed) and the database read-only: a pull-request run replays
  the failures a nightly run saved but never writes. Hypothesis refuses a database together
  with ``derandomize=True``, so the registered ``mmfuzz-pr`` profile is derandomized (for
  a project's own ``@given`` tests) and a campaign is derandomized by its fixed seed instead,
  with the database read-only.
- ``nightly``: a fresh random seed printed at the start (so every night searches somewhere
  new, and any night can be re-run), a real database directory read and written, a one-hour
  budget.

The example database holds Hypothesis's own choice sequences of failing runs (so the next
campaign tries them first, in its reuse phase); the readable, replayable counterexamples live
in corpus/ as JSON. Keys are per kernel and strategy (``KeyedDatabase``), so a failure found on
one variant is never replayed as if it were another's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from hypothesis import HealthCheck, settings
from hypothesis.database import (DirectoryBasedExampleDatabase, ExampleDatabase,
                                 ReadOnlyDatabase)

DATABASE_DIR = os.path.join(".hypothesis", "examples")   # Hypothesis's own default place


@dataclass(frozen=True)
class Profile:
    name: str            # dev, pr, nightly
    hypothesis: str      # the registered Hypothesis profile
    budget: str          # the campaign budget (pytest --mmfuzz-budget syntax)
    fresh_seed: bool     # a fresh random seed per session, unless one is given
    database: str        # "read-write", "read-only"
    summary: str


PROFILES: dict[str, Profile] = {
    "dev": Profile("dev", "mmfuzz-dev", "30s", True, "read-write",
                   "local work: fresh seed, database read and written, 30 s"),
    "pr": Profile("pr", "mmfuzz-pr", "1000x", False, "read-only",
                  "every patch: derandomized, 1,000 examples, database read-only"),
    "nightly": Profile("nightly", "mmfuzz-nightly", "1h", True, "read-write",
                       "nightly job: fresh seed printed, real database, one hour"),
}


def _database(mode: str, directory: str) -> ExampleDatabase:
    db = DirectoryBasedExampleDatabase(directory)
    return ReadOnlyDatabase(db) if mode == "read-only" else db


_database_dir = DATABASE_DIR


def register(database_dir: str = DATABASE_DIR) -> None:
    """(Re-)register the three profiles, with their database in ``database_dir``."""
    global _database_dir
    _database_dir = database_dir
    common = dict(deadline=None, print_blob=True, suppress_health_check=list(HealthCheck))
    for p in PROFILES.values():
        if p.name == "pr":
            settings.register_profile(p.hypothesis, derandomize=True, **common)
        else:
            settings.register_profile(p.hypothesis, database=_database(p.database, database_dir),
                                      **common)


def campaign_database(name: str) -> ExampleDatabase:
    """The example database a campaign under profile ``name`` reads (and writes, unless it is
    read-only)."""
    return _database(profile(name).database, _database_dir)


register()


class KeyedDatabase(ExampleDatabase):
    """``db`` with every key prefixed by ``prefix`` (kernel and strategy): every campaign runs
    the same Hypothesis test function, whose digest is the key Hypothesis stores failures
    under."""

    def __init__(self, db: ExampleDatabase, prefix: str):
        super().__init__()
        self.db = db
        self.prefix = prefix.encode() + b"\0"

    def save(self, key: bytes, value: bytes) -> None:
        self.db.save(self.prefix + key, value)

    def fetch(self, key: bytes):
        return self.db.fetch(self.prefix + key)

    def delete(self, key: bytes, value: bytes) -> None:
        self.db.delete(self.prefix + key, value)

    def move(self, src: bytes, dest: bytes, value: bytes) -> None:
        self.db.move(self.prefix + src, self.prefix + dest, value)

    def __repr__(self) -> str:
        return f"KeyedDatabase({self.db!r}, {self.prefix[:-1].decode()!r})"


def database_key(kernel_cls: type, strategy: str) -> str:
    """The database key prefix of a campaign: the variant's class (its ``name`` is "mainline"
    for a subclass imported directly) and the strategy."""
    return f"{kernel_cls.__module__}.{kernel_cls.__qualname__}/{strategy}"


def profile(name: str) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"unknown mmfuzz profile {name!r}; one of {', '.join(PROFILES)}")
    return PROFILES[name]
