"""The schedule shrinker on long runs (catalogued bugs with Bug.actions_max 200 or 400).

Before the costly fallbacks were gated (mmfuzz/explore.py `_shrink`), one fallback on a long
schedule spent the shrinker's whole attempt budget before a single chunk was tried: the
bench's cow-gup-wrong-direction reports kept 306 of about 400 actions (373 of 373 for seed
1). The same held for the cheaper find this test used then (madvfree-reclaim-vs-dio seed 2's
run 42, a 200-action run at the time), which the old order left at 32 actions; the test's
find now is seed 21's (the swarm's hot page moved the runs), never run under the old order.
"""

import pytest

from mmfuzz.explore import explore, fails_with, shrink
from mmfuzz.kernel import Mainline
from mmfuzz.kernels import BUGS


@pytest.mark.cost(1)
def test_long_find_shrinks_to_a_short_schedule_that_still_fails_and_mainline_does_not():
    bug = next(b for b in BUGS if b.slug == "madvfree-reclaim-vs-dio")
    # a long find: seed 21, run 102, a 240-action run (seed 2, run 42, 240 actions shrunk
    # to 26 before the swarm's hot page, 2026-12-03; seed 2 finds nothing in 200 runs since;
    # 187 actions and 21 shrunk in the 200-action run 42 was before mremap and hole punching
    # joined)
    found, _ = explore(bug.kernel, 21, runs_max=200, actions_max=bug.actions_max)
    assert found is not None and found.runs == 102 and len(found.actions) == 240
    world, actions = shrink(bug.kernel, found.world, found.actions, found.prop)
    assert len(actions) == 24
    assert fails_with(bug.kernel, world, actions, found.prop)
    assert not fails_with(Mainline, world, actions, found.prop)
