"""Campaign-shaped records for the field-day benchmark, deterministic from a seed.

A health campaign's field teams register households (with their members),
individuals, deliveries of resources to households, and stock moving between
facilities. The layout follows a real deployment: one document per team area,
``bench/area-<team>``, holding the collections ``households``, ``individuals``
and ``deliveries``; and one document shared by every team, ``bench/stock``,
holding ``transactions``. Each device makes its own records (ids carry the
device id), so no two devices write the same record.

Values respect ``replica.values``: GPS positions are integer microdegrees and
dates are ISO strings (no floats to compare), members are lists of dicts.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

import msgpack

STOCK_DOCUMENT = "bench/stock"
STOCK_COLLECTION = "transactions"
#: Share of each kind in a device's records: (document kind, collection, share).
MIX: tuple[tuple[str, float], ...] = (("households", 0.4), ("individuals", 0.2), ("deliveries", 0.3), ("stock", 0.1))

_FIRST = [
    "Amina",
    "Fatou",
    "Mariam",
    "Aisha",
    "Hawa",
    "Kadiatou",
    "Awa",
    "Salimata",
    "Binta",
    "Ramatou",
    "Oumar",
    "Moussa",
    "Ibrahim",
    "Issa",
    "Abdoulaye",
    "Mamadou",
    "Seydou",
    "Boubacar",
    "Adama",
    "Souleymane",
    "Yacouba",
    "Hamidou",
    "Djeneba",
    "Fanta",
    "Rokia",
    "Oumou",
    "Assetou",
    "Bakary",
    "Lassina",
]
_LAST = [
    "Traore",
    "Diallo",
    "Coulibaly",
    "Keita",
    "Sangare",
    "Konate",
    "Toure",
    "Diarra",
    "Ouedraogo",
    "Sawadogo",
    "Kone",
    "Camara",
    "Sylla",
    "Bah",
    "Sow",
    "Barry",
    "Cisse",
    "Maiga",
    "Dembele",
    "Sidibe",
    "Kante",
    "Doumbia",
    "Fofana",
    "Ballo",
    "Sanogo",
]
#: resource -> (unit, typical quantity per delivery to a household, per stock transfer)
_RESOURCES: dict[str, tuple[str, int, int]] = {
    "llin": ("net", 3, 400),
    "spaq": ("blister", 4, 1_000),
    "ors": ("sachet", 6, 2_000),
    "zinc": ("tablet", 10, 5_000),
    "vitamin-a": ("capsule", 2, 3_000),
    "rdt": ("kit", 1, 500),
}
_VILLAGES_PER_AREA = 8
_FACILITIES_PER_AREA = 3
_CAMPAIGN_DAYS = 10


def area_document(team: int) -> str:
    """The document of team ``team``'s area."""
    return f"bench/area-{team:02d}"


def device_id(team: int, member: int) -> str:
    """The replica id of member ``member`` of team ``team``."""
    return f"field-t{team:02d}-d{member}"


@dataclass(frozen=True)
class FieldRecord:
    """One record as a device writes it: ``records(collection).put(record_id, fields)`` in ``document``."""

    document: str
    collection: str
    record_id: str
    fields: dict[str, Any]


def _name(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"


def _date(rng: random.Random) -> str:
    return f"2026-03-{rng.randrange(1, _CAMPAIGN_DAYS + 1):02d}"


def _timestamp(rng: random.Random) -> str:
    return f"{_date(rng)}T{rng.randrange(7, 18):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}Z"


def _facility(team: int, rng: random.Random) -> str:
    return f"hf-{team:02d}-{rng.randrange(_FACILITIES_PER_AREA)}"


def _kinds(count: int, rng: random.Random) -> list[str]:
    """Exactly ``round(share * count)`` of each kind (the rest to households), shuffled."""
    counts = {kind: round(share * count) for kind, share in MIX}
    counts["households"] += count - sum(counts.values())
    kinds = [kind for kind, n in counts.items() for _ in range(n)]
    rng.shuffle(kinds)
    return kinds


class _Device:
    """The state a device's generator keeps: its households so far, its area."""

    def __init__(self, team: int, member: int, seed: int) -> None:
        self.team = team
        self.id = device_id(team, member)
        self.rng = random.Random(f"{seed}:{self.id}")
        self.area = area_document(team)
        # Each area sits around its own point (integer microdegrees: exact through replica.values).
        area_rng = random.Random(f"{seed}:area:{team}")
        self.lat0 = area_rng.randrange(4_000_000, 15_000_000)
        self.lon0 = area_rng.randrange(-12_000_000, 2_000_000)
        self.households: list[str] = []
        self.serial: Counter[str] = Counter()

    def next_id(self, kind: str) -> str:
        self.serial[kind] += 1
        return f"{self.id}-{kind[:2]}-{self.serial[kind]:05d}"

    def village(self) -> str:
        return f"v-{self.team:02d}-{self.rng.randrange(_VILLAGES_PER_AREA)}"

    def household(self) -> FieldRecord:
        rng = self.rng
        members = [
            {"name": _name(rng), "sex": rng.choice("FM"), "birth_year": rng.randrange(1940, 2026)}
            for _ in range(rng.choice((1, 2, 3, 3, 4, 4, 5, 5, 6, 7, 8)))
        ]
        record_id = self.next_id("households")
        self.households.append(record_id)
        fields = {
            "head": members[0]["name"],
            "village": self.village(),
            "gps": {
                "lat": self.lat0 + rng.randrange(-50_000, 50_000),
                "lon": self.lon0 + rng.randrange(-50_000, 50_000),
                "accuracy_m": rng.randrange(3, 40),
            },
            "members": members,
            "size": len(members),
            "registered_at": _timestamp(rng),
            "by": self.id,
        }
        return FieldRecord(self.area, "households", record_id, fields)

    def individual(self) -> FieldRecord:
        rng = self.rng
        fields = {
            "name": _name(rng),
            "sex": rng.choice("FM"),
            "birth_year": rng.randrange(1940, 2026),
            "household": rng.choice(self.households) if self.households and rng.random() < 0.8 else None,
            "village": self.village(),
            "phone": f"+223{rng.randrange(60_000_000, 100_000_000)}" if rng.random() < 0.4 else None,
            "registered_at": _timestamp(rng),
            "by": self.id,
        }
        return FieldRecord(self.area, "individuals", self.next_id("individuals"), fields)

    def delivery(self) -> FieldRecord:
        rng = self.rng
        resource = rng.choice(list(_RESOURCES))
        unit, typical, _ = _RESOURCES[resource]
        # Before this device registered any household, it serves one registered in an earlier round.
        household = rng.choice(self.households) if self.households else f"prior-{self.team:02d}-{rng.randrange(999)}"
        fields = {
            "household": household,
            "resource": resource,
            "quantity": rng.randrange(1, 2 * typical + 1),
            "unit": unit,
            "date": _date(rng),
            "facility": _facility(self.team, rng),
            "by": self.id,
        }
        return FieldRecord(self.area, "deliveries", self.next_id("deliveries"), fields)

    def stock(self) -> FieldRecord:
        rng = self.rng
        resource = rng.choice(list(_RESOURCES))
        unit, _, typical = _RESOURCES[resource]
        source = "warehouse-central" if rng.random() < 0.3 else _facility(self.team, rng)
        fields = {
            "from": source,
            "to": _facility(self.team, rng),
            "resource": resource,
            "quantity": rng.randrange(typical // 10, 2 * typical + 1),
            "unit": unit,
            "date": _date(rng),
            "batch": f"B26-{rng.randrange(1, 40):03d}",
            "by": self.id,
        }
        return FieldRecord(STOCK_DOCUMENT, STOCK_COLLECTION, self.next_id("stock"), fields)


def device_records(team: int, member: int, count: int, seed: int = 7) -> list[FieldRecord]:
    """The ``count`` records device ``device_id(team, member)`` makes, in the
    order it makes them; the same for the same arguments on every run."""
    device = _Device(team, member, seed)
    make = {"households": device.household, "individuals": device.individual}
    make |= {"deliveries": device.delivery, "stock": device.stock}
    return [make[kind]() for kind in _kinds(count, device.rng)]


def encoded_size(record: FieldRecord) -> int:
    """Bytes of the record as plain msgpack (id and fields): the payload a
    record carries before any CRDT or log framing, as a reference."""
    return len(msgpack.packb([record.record_id, record.fields], use_bin_type=True))
