"""The layers contract of ``src/replica`` (docs/architecture.md).

Every import counts: top-level, function-local and under ``TYPE_CHECKING``.
A module may import only modules of a lower layer (and its own package's
``__init__``); no module imports another module's private names. So the
package has no import cycle, and a change that reaches upward fails here, in
the default suite that ``.ci/run`` runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "replica"

#: Lowest first. A module imports only from layers below its own.
LAYERS: list[set[str]] = [
    {"errors", "names", "values", "ui_text", "ui_feed", "runindex"},
    {"delta", "store", "tls"},
    {"vv", "store.memory", "store.lmdb", "doc", "status", "credentials"},
    {"wire", "events", "spans", "ui_screen", "yprotocol"},
    {"log", "runs"},
    {"compaction", "doccache", "session_terms"},
    {"engine", "session"},
    {"trust", "discovery", "registry", "limits"},
    {"sync", "compacting", "devices", "oplog", "relay_http", "redis_log"},
    {"net"},
    {"listener"},
    {"yjs_endpoint", "relay_ops"},
    {"peer", "relay"},
    {"replica"},
    {
        "cli_input",
        "testing.clientids",
        "testing.strategies",
        "testing.backends",
        "testing.ledger",
        "testing.links",
        "ui_device",
    },
    {"cli_sync", "demo"},
    {"ui_http"},
    {"cli_ui"},
    {"cli"},
    {"testing.network"},
    {"testing.checks"},
    {"testing.machine"},
    {"testing"},
]


def _modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        found[name.removesuffix(".__init__") if name != "__init__" else ""] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, str | None]]:
    """``(module imported, name imported from it or None)`` for every import in ``path``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(alias.name, None) for alias in node.names if alias.name.split(".")[0] == "replica"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = ["replica", *package.split(".")] if package else ["replica"]
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "replica":
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}".removeprefix("replica.")
                out.append((f"{base}.{alias.name}", None) if full in modules else (base, alias.name))
    return [(module.removeprefix("replica").removeprefix("."), imported) for module, imported in out]


def _layer(name: str) -> int:
    for number, layer in enumerate(LAYERS):
        if name in layer:
            return number
    raise AssertionError(f"module replica.{name} has no layer in tests/test_layers.py: give it one")


MODULES = _modules()


def test_every_module_has_a_layer() -> None:
    for name in MODULES:
        if name:
            _layer(name)


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n), ids=str)
def test_imports_only_go_down(name: str) -> None:
    own = _layer(name)
    for module, imported in _imports(name, MODULES[name], MODULES):
        if module == "" or module == name.rpartition(".")[0]:
            continue  # the package's own __init__ (re-exports), as in ``from replica import errors``
        target = module if module in MODULES else module.rpartition(".")[0]
        assert _layer(target) < own, f"replica.{name} (layer {own}) imports replica.{target} (layer {_layer(target)})"
        if imported is not None:
            assert not imported.startswith("_"), f"replica.{name} imports the private {imported} of replica.{module}"


def test_the_package_imports_its_front_only_from_above() -> None:
    """``from replica import Replica`` keeps working, and the package's
    ``__init__`` is the only module above ``replica.replica`` besides the CLI
    and the shipped testing tools."""
    import replica

    assert replica.Replica.__module__ == "replica.replica"
    assert issubclass(replica.Replica, replica.Engine)
