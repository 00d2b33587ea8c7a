"""Shared helpers: timing, medians of alternating repeats, targets, JSON, a registry.

Every benchmark runs a *baseline* (what the stack can do at best) and a
*subject* (replica doing the same work) in one process, alternating them over
several repeats so that drift on a noisy machine hits both alike; figures are
medians and targets are checked on ratios of medians.
"""

from __future__ import annotations

import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any


class BenchmarkFailed(Exception):
    """A benchmark produced a wrong result (a correctness failure, not a slow one)."""


Run = Callable[[], float]
"""One measured run: does its own setup, returns the seconds of the timed part."""


class Stopwatch:
    """``with Stopwatch() as sw: ...`` then ``sw.seconds`` (``time.perf_counter``)."""

    seconds: float = 0.0

    def __enter__(self) -> Stopwatch:
        gc.collect()  # garbage left by setup should not be collected inside the timed part
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = self.lap()

    def lap(self) -> float:
        """Seconds since the start, without stopping."""
        return time.perf_counter() - self._start


def alternate(repeats: int, baseline: Run, subject: Run) -> tuple[list[float], list[float]]:
    """Run both ``repeats`` times, alternating which goes first (ABBA order);
    returns the seconds of each run of (baseline, subject)."""
    base: list[float] = []
    subj: list[float] = []
    for i in range(repeats):
        if i % 2:
            subj.append(subject())
            base.append(baseline())
        else:
            base.append(baseline())
            subj.append(subject())
    return base, subj


@dataclass
class Figure:
    """One measured quantity over the repeats."""

    name: str
    unit: str
    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


@dataclass
class Target:
    """A bound on a measured value; ``at_least`` for rates and ratios, else an upper bound.

    A *gross regression* is missing the bound by a factor of two (below half a
    lower bound, above twice an upper one); only targets with ``guard`` set can
    fail the quick (CI) run, since absolute speeds depend on the machine.
    """

    name: str
    measured: float
    bound: float
    at_least: bool = True
    guard: bool = True

    @property
    def passed(self) -> bool:
        return self.measured >= self.bound if self.at_least else self.measured <= self.bound

    @property
    def gross_regression(self) -> bool:
        if not self.guard:
            return False
        return self.measured < self.bound / 2 if self.at_least else self.measured > self.bound * 2

    def describe(self) -> str:
        return f"{'>=' if self.at_least else '<='} {self.bound:g}"


@dataclass
class Result:
    """What one benchmark measured."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)
    paired_ratios: dict[str, list[float]] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    status: str = "ok"  # ok | skipped | error

    def figure(self, name: str, unit: str, samples: list[float]) -> Figure:
        self.figures.append(Figure(name, unit, samples))
        return self.figures[-1]

    def ratio(self, name: str, subject: Figure, baseline: Figure) -> float:
        """Record subject / baseline: the ratio of medians (checked against
        targets) and, as a noise check, the ratio within each repeat."""
        self.ratios[name] = subject.median / baseline.median
        self.paired_ratios[name] = [s / b for s, b in zip(subject.samples, baseline.samples, strict=True)]
        return self.ratios[name]


def rates(count: int, seconds: list[float]) -> list[float]:
    """Operations per second for each run of ``count`` operations."""
    return [count / s for s in seconds]


Benchmark = Callable[[bool], Result]
REGISTRY: dict[str, Benchmark] = {}


def register(name: str) -> Callable[[Benchmark], Benchmark]:
    """Add a benchmark ``fn(quick) -> Result`` to :data:`REGISTRY` under ``name``."""

    def add(fn: Benchmark) -> Benchmark:
        REGISTRY[name] = fn
        return fn

    return add


def machine_info() -> dict[str, Any]:
    """Python, library versions, cores and platform, for the JSON and the docs."""
    versions: dict[str, str | None] = {}
    for package in ("replica", "pycrdt", "lmdb", "msgpack"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "packages": versions,
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def to_json(result: Result, *, quick: bool, seconds: float, machine: dict[str, Any]) -> dict[str, Any]:
    """The JSON document written for one benchmark."""
    return {
        "name": result.name,
        "status": result.status,
        "mode": "quick" if quick else "full",
        "params": result.params,
        "figures": {f.name: {"unit": f.unit, "median": f.median, "samples": f.samples} for f in result.figures},
        "ratios": result.ratios,
        "paired_ratios": result.paired_ratios,
        "targets": [
            {**asdict(t), "bound_text": t.describe(), "passed": t.passed, "gross_regression": t.gross_regression}
            for t in result.targets
        ],
        "notes": result.notes,
        "wall_seconds": seconds,
        "machine": machine,
    }


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
