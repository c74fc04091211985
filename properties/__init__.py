"""The named properties mmfuzz checks. Each is a pure function of the machine state and the
events of the last step, returning a Violation or None; each names the kernel text it encodes.

``STEP_PROPERTIES`` run after every step; ``QUIESCENT_PROPERTIES`` after the run is drained,
synced and dropped (the "eventually" half of the same properties).
"""

from . import _gate
from ._core import Violation
from .accounting import accounting, accounting_quiescent
from .anon import (no_lost_write_after_madv_free_quiescent,
                   no_store_leak_into_unwritten_anon_quiescent)
from .dirty import dirty_data_preserved, dirty_data_preserved_quiescent
from .gup import (cow_isolation, gup_pin_coherent, gup_pin_coherent_quiescent,
                  no_write_through_private_mapping, no_write_to_readonly_file)
from .pgtable import no_freed_page_table_walk
from .softdirty import soft_dirty_accurate
from .tlb import (no_stale_translation_after_return, no_stale_translation_quiescent,
                  no_use_after_free_via_tlb)
from .vma import pte_within_vma_protection_quiescent

STEP_PROPERTIES = (
    no_use_after_free_via_tlb,
    no_write_to_readonly_file,   # before dirty-data-preserved: the more specific of the two
    no_write_through_private_mapping,   # the same property's event half, also before it
    dirty_data_preserved,
    no_stale_translation_after_return,
    soft_dirty_accurate,
    accounting,
    no_freed_page_table_walk,
    cow_isolation,
    gup_pin_coherent,
)

#: The step properties that read nothing but the step's events: each returns None after a step
#: that emitted none (most steps emit none: a lock taken or dropped, a PTE written), so
#: Run.apply checks only STATE_STEP_PROPERTIES after such a step. A property added here must
#: return None for ``events == []`` whatever the state (tests/test_speed.py checks it).
EVENT_STEP_PROPERTIES = (
    no_write_through_private_mapping,
    no_stale_translation_after_return,
    soft_dirty_accurate,
    no_freed_page_table_walk,
    cow_isolation,
)

#: STEP_PROPERTIES less the event-only ones, in the same order: what a step without events
#: checks (the first violated property in STEP_PROPERTIES order is still the one reported)
STATE_STEP_PROPERTIES = tuple(p for p in STEP_PROPERTIES if p not in EVENT_STEP_PROPERTIES)

#: The parts of the state (properties/_gate.py) each state step property reads: after a step
#: without events Run.apply checks only those whose parts changed. A STATE_STEP property not
#: listed here reads everything and runs after every step.
STATE_READS = {
    # 0: only a step with events can make it fail (properties/_gate.py: frames are freed and
    # TLB entries filled only with events)
    no_use_after_free_via_tlb: 0,
    no_write_to_readonly_file: _gate.CACHE | _gate.FOLIOS,
    dirty_data_preserved: _gate.CACHE | _gate.FOLIOS | _gate.PGTABLE,
    accounting: _gate.PGTABLE | _gate.CACHE,
    gup_pin_coherent: _gate.PINS | _gate.ORACLE | _gate.PGTABLE | _gate.SWAPCACHE,
}

#: A state step property that returns None whenever a Machine attribute is empty, and that
#: attribute: the gate runs it only while the attribute is not.
STATE_GUARDS = {
    no_write_to_readonly_file: "readonly_files",   # it judges only the read-only files
    gup_pin_coherent: "pins",                      # it judges only pins
}

_GATE_SELECTIONS: dict = {}


def step_gate() -> _gate.StepGate:
    """A new StepGate over STATE_STEP_PROPERTIES (one per Run)."""
    return _gate.StepGate(STATE_STEP_PROPERTIES, STATE_READS, STATE_GUARDS, _GATE_SELECTIONS)


QUIESCENT_PROPERTIES = (
    dirty_data_preserved_quiescent,
    no_stale_translation_quiescent,
    accounting_quiescent,
    gup_pin_coherent_quiescent,  # before the anon checks: a pinned page's loss is its pin's
    no_lost_write_after_madv_free_quiescent,
    no_store_leak_into_unwritten_anon_quiescent,
    pte_within_vma_protection_quiescent,
)

PROPERTY_NAMES = (
    "no-use-after-free-via-TLB",
    "dirty-data-preserved",
    "no-stale-translation-after-return",
    "soft-dirty-accurate",
    "accounting",
    "no-lost-write-after-madv-free",
    "no-freed-page-table-walk",
    "cow-isolation",
    "gup-pin-coherent",
    "no-write-to-readonly-file",
    "pte-within-vma-protection",
)

__all__ = ["Violation", "STEP_PROPERTIES", "EVENT_STEP_PROPERTIES", "STATE_STEP_PROPERTIES",
           "STATE_READS", "STATE_GUARDS", "step_gate", "QUIESCENT_PROPERTIES", "PROPERTY_NAMES"]
