"""Hypothesis strategies and the state machine that drive the mm model.

``schedules.schedules(policy)``: the explorer's scheduling policies (swarm, pct, uniform) as
Hypothesis strategies (the default engine of ``mmfuzz fuzz``).

``MmStateMachine``, the rule-based machine (``--strategy rules``): every scheduling decision
is a Hypothesis choice, drawn only among what is enabled at that moment (the runnable CPUs, the idle ones, the CPUs with a pending IPI), so Hypothesis shrinks
the operations and the interleaving together, and a deleted rule never leaves a dangling one.
Rule names are kernel entry points, so Hypothesis's printed program reads like a race.
"""

from .machine import MmStateMachine, machine_for, run_hypothesis, settings_for, worlds

__all__ = ["MmStateMachine", "machine_for", "run_hypothesis", "settings_for", "worlds"]
