"""The Node.js servers the benchmarks compare with, from the npm registry.

``npm install --prefix benchmarks/node`` installs them (``.ci/run`` does); without Node.js
or that install, :func:`node_missing` says why and the benchmarks leave that baseline out,
saying so in their notes.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from benchmarks.relay import ServerProcess

NODE_DIR = Path(__file__).with_name("node")
Y_WEBSOCKET_SCRIPT = NODE_DIR / "y_websocket_server.mjs"


def node_missing() -> str | None:
    """Why the Node.js baselines cannot run here, or None."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not (NODE_DIR / "node_modules" / "@y" / "websocket-server").is_dir():
        return f"the Node.js servers are not installed (npm install --prefix {NODE_DIR})"
    return None


@asynccontextmanager
async def y_websocket_node_process(log: Path) -> AsyncIterator[ServerProcess]:
    """``@y/websocket-server`` (its own ``setupWSConnection``, documents in memory) on
    127.0.0.1 and a free port, stopped on exit."""
    server = ServerProcess(["node", str(Y_WEBSOCKET_SCRIPT)], log)
    try:
        yield server
    finally:
        await server.stop()
