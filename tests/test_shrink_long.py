"""The schedule shrinker on long runs (catalogued bugs with Bug.actions_max 200 or 400).

Before the costly fallbacks were gated (mmfuzz/explore.py `_shrink`), one fallback on a long
schedule spent the shrinker's whole attempt budget before a single chunk was tried: the
bench's cow-gup-wrong-direction reports kept 306 of about 400 actions (373 of 373 for seed
1). The same holds for this cheaper 200-action find, which the old order left at 32 actions.
"""

import pytest

from mmfuzz.explore import explore, fails_with, shrink
from mmfuzz.kernel import Mainline
from mmfuzz.kernels import BUGS


@pytest.mark.cost(1)
def test_long_find_shrinks_to_a_short_schedule_that_still_fails_and_mainline_does_not():
    bug = next(b for b in BUGS if b.slug == "madvfree-reclaim-vs-dio")
    # a long find: run 42, a 240-action run (187 actions and 21 shrunk in the 200-action
    # run 42 was before mremap and hole punching joined)
    found, _ = explore(bug.kernel, 2, runs_max=200, actions_max=bug.actions_max)
    assert found is not None and found.runs == 42 and len(found.actions) == 240
    world, actions = shrink(bug.kernel, found.world, found.actions, found.prop)
    assert len(actions) == 26
    assert fails_with(bug.kernel, world, actions, found.prop)
    assert not fails_with(Mainline, world, actions, found.prop)
