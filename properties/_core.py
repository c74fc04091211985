from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Violation:
    """A property violation as plain data: the property's name, one sentence saying why, and
    the facts (JSON-able) that show it."""

    prop: str
    why: str
    facts: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"property": self.prop, "why": self.why, "facts": self.facts}

    @classmethod
    def from_json(cls, d: dict) -> "Violation":
        return cls(d["property"], d["why"], dict(d.get("facts", {})))


def live_ptes(m):
    """Every PTE slot in use (mm, vpn, pte) in every mm's live tables, in table and slot
    order: the one walk of the page tables the properties share."""
    for mm in m.mms.values():
        for table in mm.pmd:
            if table is None:
                continue
            base = table.pmd_index * m.ptrs_per_pte
            for slot, pte in enumerate(table.ptes):
                if pte is not None:
                    yield mm, base + slot, pte


def mapped_ptes(m, folio):
    """Every present, non-special PTE (mm_id, vpn, pte) in a live table that maps ``folio``."""
    return [(mm.mm_id, vpn, pte) for mm, vpn, pte in live_ptes(m)
            if not pte.special and pte.pfn == folio.pfn]


def pte_at(m, mm_id: int, vpn: int):
    """The PTE that maps ``vpn`` in ``mm_id`` now (None if none or no table)."""
    mm = m.mms[mm_id]
    pmd_index, slot = divmod(vpn, m.ptrs_per_pte)
    table = mm.pmd[pmd_index] if pmd_index < len(mm.pmd) else None
    return table.ptes[slot] if table is not None else None


def last_changed_by_caller(m, observed: dict, key: int) -> bool:
    """A returning call owes the flush for ``key`` if it saw that PTE under the PTL and nobody
    revoked the translation since (a later change belongs to whoever made it, who flushes
    under its own PTL or owes its own flush)."""
    seen = observed.get(key)
    return seen is not None and m.revoked_at.get(key, -1) <= seen
