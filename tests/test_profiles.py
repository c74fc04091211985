"""The dev, pr and nightly settings profiles (strategies/profiles.py): registered by name, chosen
explicitly, never Hypothesis's automatic `ci` one; the database of a campaign is real (nightly
writes, the next campaign tries the saved failure first), read-only under pr, and keyed per
kernel and strategy."""

import os

import pytest
from hypothesis import Phase, settings
from hypothesis.database import DirectoryBasedExampleDatabase, ReadOnlyDatabase

from mmfuzz.kernel import Mainline
from mmfuzz.pytest_plugin import parse_budget, run_campaign
from strategies import profiles, settings_for
from tests.variants import FreeBeforeFlush


def test_profiles_are_registered_by_name():
    for name, p in profiles.PROFILES.items():
        assert p.hypothesis == f"mmfuzz-{name}"
        assert settings.get_profile(p.hypothesis).deadline is None
        parse_budget(p.budget)
    assert settings.get_profile("mmfuzz-pr").derandomize
    assert settings.get_profile("mmfuzz-pr").database is None   # Hypothesis: derandomize => none
    assert isinstance(settings.get_profile("mmfuzz-nightly").database,
                      DirectoryBasedExampleDatabase)
    assert not profiles.PROFILES["pr"].fresh_seed and parse_budget("1000x") == (None, 1000)
    assert profiles.PROFILES["nightly"].fresh_seed and profiles.PROFILES["nightly"].budget == "1h"
    with pytest.raises(ValueError, match="unknown mmfuzz profile"):
        profiles.profile("ci")


def test_campaign_settings_come_from_the_named_profile_only():
    plain = settings_for(100, shrink=False)
    assert plain.database is None and Phase.reuse not in plain.phases and not plain.derandomize
    pr = settings_for(100, shrink=False, profile="pr", database_key="mainline/swarm")
    assert isinstance(pr.database, profiles.KeyedDatabase)
    assert isinstance(pr.database.db, ReadOnlyDatabase)
    assert Phase.reuse in pr.phases and Phase.shrink not in pr.phases
    assert not pr.derandomize       # derandomized by the campaign's fixed seed instead
    nightly = settings_for(100, profile="nightly", database_key="mainline/swarm")
    assert isinstance(nightly.database.db, DirectoryBasedExampleDatabase)


@pytest.mark.cost(2)
def test_nightly_database_is_real_pr_reads_it_and_keys_are_per_kernel(tmp_path):
    night, fresh = tmp_path / "night", tmp_path / "fresh"
    try:
        profiles.register(str(night))
        failure, runs, _ = run_campaign(FreeBeforeFlush, 0, None, 600, "swarm", "nightly")
        assert failure is not None and runs == 106     # seed 0 finds it in 106 runs (66 before fork was switched on only where it can start and a free CPU in half the worlds; 86 before the hot page; 61, 27, 13 before, as operations joined)
        assert any(files for _, _, files in os.walk(night))
        # the next campaign, any seed, tries yesterday's failure first: 2 runs, the saved
        # example and Hypothesis's final re-run of the failure it reports
        failure, runs, _ = run_campaign(FreeBeforeFlush, 5, None, 600, "swarm", "pr")
        assert failure is not None and runs == 2
        # another kernel's campaign never sees that key: the same runs as with no database
        _, keyed, _ = run_campaign(Mainline, 5, None, 40, "swarm", "nightly")
        _, plain, _ = run_campaign(Mainline, 5, None, 40, "swarm", None)
        assert keyed == plain
        # pr on an empty database finds it by search and writes nothing
        profiles.register(str(fresh))
        failure, runs, _ = run_campaign(FreeBeforeFlush, 0, None, 600, "swarm", "pr")
        assert failure is not None and runs == 106
        assert not fresh.exists() or not any(files for _, _, files in os.walk(fresh))
    finally:
        profiles.register()
