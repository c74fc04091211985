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


def mapped_ptes(m, folio):
    """Every present, non-special PTE (mm_id, vpn, pte) in a live table that maps ``folio``."""
    out = []
    for mm in m.mms.values():
        for table in mm.pmd:
            if table is None:
                continue
            base = table.pmd_index * m.ptrs_per_pte
            for slot, pte in enumerate(table.ptes):
                if pte is not None and not pte.special and pte.pfn == folio.pfn:
                    out.append((mm.mm_id, base + slot, pte))
    return out
