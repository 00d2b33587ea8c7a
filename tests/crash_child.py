"""Child program of the crash test (tests/test_crash.py); not a test module.

Usage: ``python tests/crash_child.py DATA_DIR SEED``

Opens the replica in ``DATA_DIR`` (replica id ``crash-dev``) and writes to the
document ``crash/doc`` forever, until it is killed. Every line it prints is one
JSON object, flushed at once:

- ``{"ev": "open", "seq": S, "ids": N, "text": L}`` once the replica is open:
  the seq of ``crash-dev`` it found, the record count and the text length;
- ``{"ev": "intent", "op": OP, "n": K}`` just BEFORE a call starts: the call
  and the number of deltas it makes (a ``batch`` makes one per call inside, a
  ``txn``, i.e. ``doc.transaction()``, makes one);
- ``{"ev": "done", "seq": S}`` just AFTER that call returned: the seq of
  ``crash-dev`` that the call made durable.

An op in wire form (plain JSON; bytes are ``{"$b": hex}``) is one of::

    {"kind": "put" | "update", "id": ID, "fields": {name: value}}
    {"kind": "delete", "id": ID}
    {"kind": "insert", "index": I, "content": STR}      # text "t"
    {"kind": "erase", "index": I, "length": N}          # text "t"
    {"kind": "batch" | "txn", "ops": [OP, ...]}

The op is printed first and then executed from its decoded wire form, so what
the parent reads is exactly what ran. ``decode`` is shared with the parent.
"""

from __future__ import annotations

import json
import random
import sys
from typing import Any

DOC = "crash/doc"
RECORDS = "r"
TEXT = "t"
REPLICA_ID = "crash-dev"

BIG_INTS = (2**62 + 1, -(2**63), 2**63 - 1, 2**64 - 1, 2**64 + 5, -(2**70) + 3, 10**30)
FLOATS = (0.1, -0.0, 1.5e-300, 1e308, float("inf"), -2.5)
ALPHABET = "abcxyz é日本🦀\n"
FIELD_NAMES = ("a", "b", "name", "n", "ü", "value")


def encode(value: Any) -> Any:
    """A record value in wire form (JSON-able; bytes tagged)."""
    if isinstance(value, bytes):
        return {"$b": value.hex()}
    if isinstance(value, list):
        return [encode(item) for item in value]
    if isinstance(value, dict):
        return {key: encode(item) for key, item in value.items()}
    return value


def decode(value: Any) -> Any:
    """The record value of a wire form made by :func:`encode`."""
    if isinstance(value, dict):
        if set(value) == {"$b"}:
            return bytes.fromhex(value["$b"])
        return {key: decode(item) for key, item in value.items()}
    if isinstance(value, list):
        return [decode(item) for item in value]
    return value


class Generator:
    """Random valid ops, tracking the ids and text length they leave behind."""

    def __init__(self, rng: random.Random, ids: list[str], text_length: int, prefix: str) -> None:
        self.rng = rng
        self.ids = ids
        self.text_length = text_length
        self.prefix = prefix
        self.counter = 0

    def string(self, longest: int = 12) -> str:
        return "".join(self.rng.choice(ALPHABET) for _ in range(self.rng.randint(0, longest)))

    def value(self, depth: int = 0) -> Any:
        rng = self.rng
        kind = rng.randrange(10 if depth < 2 else 8)
        if kind == 0:
            return rng.choice(BIG_INTS)
        if kind == 1:
            return rng.randint(-1000, 1000)
        if kind == 2:
            return rng.choice((rng.uniform(-1e6, 1e6), *FLOATS))
        if kind == 3:
            return self.string()
        if kind == 4:
            return rng.randbytes(rng.randint(0, 16))
        if kind == 5:
            return None
        if kind == 6:
            return rng.random() < 0.5
        if kind == 7:
            return rng.choice((1, 0, 1.0, True, False, "", b""))  # values equal but of other types
        if kind == 8:
            return [self.value(depth + 1) for _ in range(rng.randint(0, 3))]
        return {rng.choice(FIELD_NAMES): self.value(depth + 1) for _ in range(rng.randint(0, 3))}

    def fields(self) -> dict[str, Any]:
        return {self.rng.choice(FIELD_NAMES): encode(self.value()) for _ in range(self.rng.randint(1, 4))}

    def new_id(self) -> str:
        self.counter += 1
        return f"{self.prefix}-{self.counter}"

    def put(self) -> dict[str, Any]:
        if self.ids and self.rng.random() < 0.2:
            record_id = self.rng.choice(self.ids)  # replace an existing record
        else:
            record_id = self.new_id()
            self.ids.append(record_id)
        return {"kind": "put", "id": record_id, "fields": self.fields()}

    def update(self) -> dict[str, Any]:
        if not self.ids:
            return self.put()
        return {"kind": "update", "id": self.rng.choice(self.ids), "fields": self.fields()}

    def delete(self) -> dict[str, Any]:
        if not self.ids:
            return self.put()
        record_id = self.ids.pop(self.rng.randrange(len(self.ids)))
        return {"kind": "delete", "id": record_id}

    def insert(self) -> dict[str, Any]:
        content = self.string() or "x"
        index = self.rng.randint(0, self.text_length)
        self.text_length += len(content)
        return {"kind": "insert", "index": index, "content": content}

    def erase(self) -> dict[str, Any]:
        if not self.text_length:
            return self.insert()
        index = self.rng.randrange(self.text_length)
        length = self.rng.randint(1, min(5, self.text_length - index))
        self.text_length -= length
        return {"kind": "erase", "index": index, "length": length}

    def op(self) -> tuple[dict[str, Any], int]:
        """The next op and the number of deltas it makes."""
        roll = self.rng.random()
        if roll < 0.30:
            return self.put(), 1
        if roll < 0.52:
            return self.update(), 1
        if roll < 0.65:
            return self.delete(), 1
        if roll < 0.80:
            return self.insert(), 1
        if roll < 0.85:
            return self.erase(), 1
        if roll < 0.93:
            ops = [self.put() for _ in range(self.rng.randint(2, 6))]
            if self.rng.random() < 0.3:
                ops.append(self.insert())
            return {"kind": "batch", "ops": ops}, len(ops)
        return {"kind": "txn", "ops": self.pair()}, 1

    def pair(self) -> list[dict[str, Any]]:
        """Two calls for one ``doc.transaction()``."""
        choice = self.rng.randrange(3)
        if choice == 0:
            first = self.put()
            return [first, {"kind": "update", "id": first["id"], "fields": self.fields()}]
        if choice == 1:
            return [self.put(), self.insert()]
        return [self.update(), self.delete()]


def main(data_dir: str, seed: int) -> None:
    from replica import Replica

    replica = Replica.open(data_dir, replica_id=REPLICA_ID)
    doc = replica.doc(DOC)
    records = doc.records(RECORDS)
    text = doc.text(TEXT)

    def seq() -> int:
        return replica.version_vector(DOC).get(REPLICA_ID, 0)

    def say(line: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(line, ensure_ascii=True) + "\n")
        sys.stdout.flush()

    def run(op: dict[str, Any]) -> None:
        kind = op["kind"]
        if kind == "put":
            records.put(op["id"], decode(op["fields"]))
        elif kind == "update":
            records.update(op["id"], decode(op["fields"]))
        elif kind == "delete":
            records.delete(op["id"])
        elif kind == "insert":
            text.insert(op["index"], op["content"])
        elif kind == "erase":
            text.delete(op["index"], op["length"])
        elif kind == "batch":
            with replica.batch():
                for inner in op["ops"]:
                    run(inner)
        elif kind == "txn":
            with doc.transaction():
                for inner in op["ops"]:
                    run(inner)
        else:
            raise ValueError(f"unknown op {kind!r}")

    generator = Generator(random.Random(seed), records.ids(), len(text), prefix=f"{seed:x}")
    say({"ev": "open", "seq": seq(), "ids": len(records), "text": len(text)})
    while True:
        op, count = generator.op()
        say({"ev": "intent", "op": op, "n": count})
        run(json.loads(json.dumps(op)))
        say({"ev": "done", "seq": seq()})


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
