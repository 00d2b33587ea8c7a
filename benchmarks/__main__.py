"""``python -m benchmarks [NAME ...] [--quick] [--out DIR]``: run, print a table, write JSON.

Normal mode only reports. ``--quick`` runs small sizes as a CI guard and exits
non-zero on a gross regression (a guarded target missed by a factor of two).
Either mode exits non-zero if a benchmark fails (wrong result or an error).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
import traceback
from pathlib import Path

import benchmarks
from benchmarks._common import REGISTRY, Result, machine_info, to_json, write_json

RESULTS = Path(__file__).resolve().parent / "results"

# Every public module of the package registers its benchmarks when imported.
for _module in pkgutil.iter_modules(benchmarks.__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"benchmarks.{_module.name}")


def _fmt(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _rows(result: Result) -> list[tuple[str, str, str, str, str]]:
    rows = [(result.name, f.name, f"{_fmt(f.median)} {f.unit}", "", "") for f in result.figures]
    for name, ratio in result.ratios.items():
        if not any(t.name == name for t in result.targets):
            rows.append((result.name, name, f"{ratio:.2f}", "", ""))
    for t in result.targets:
        verdict = "pass" if t.passed else ("FAIL (gross)" if t.gross_regression else "fail")
        rows.append((result.name, t.name, _fmt(t.measured), t.describe(), verdict))
    if result.status != "ok":
        rows.append((result.name, result.status.upper(), "", "", ""))
    return rows


def _table(rows: list[tuple[str, str, str, str, str]]) -> str:
    header = ("benchmark", "quantity (median)", "value", "target", "result")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"default all: {', '.join(REGISTRY)}")
    parser.add_argument("--quick", action="store_true", help="small sizes; exit 1 on a gross regression (CI guard)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"directory for NAME.json (default {RESULTS})")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in REGISTRY]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(REGISTRY)}")
    machine = machine_info()
    print(f"python {machine['python']}, {machine['packages']}, nproc {machine['nproc']}, {machine['platform']}")
    rows: list[tuple[str, str, str, str, str]] = []
    failed = gross = False
    started = time.perf_counter()
    for name in args.names or list(REGISTRY):
        print(f"running {name}{' (quick)' if args.quick else ''} ...", file=sys.stderr, flush=True)
        began = time.perf_counter()
        try:
            result = REGISTRY[name](args.quick)
        except Exception as exc:
            traceback.print_exc()
            result = Result(name, status="error", notes=[f"{type(exc).__name__}: {exc}"])
        seconds = time.perf_counter() - began
        write_json(args.out / f"{name}.json", to_json(result, quick=args.quick, seconds=seconds, machine=machine))
        for note in result.notes:
            print(f"  {name}: {note}", file=sys.stderr)
        rows.extend(_rows(result))
        failed |= result.status == "error"
        gross |= any(t.gross_regression for t in result.targets)
    print(_table(rows))
    print(f"total {time.perf_counter() - started:.1f} s; JSON in {args.out}")
    if failed:
        return 1
    return 1 if args.quick and gross else 0


if __name__ == "__main__":
    sys.exit(main())
