"""Real ``replica ui`` and ``replica demo`` processes for tests, on 127.0.0.1 with a free port.

:class:`UIProcess` serves one device's Sync screen (``replica ui --data DIR
--port 0 ...``) and :class:`DemoProcess` the whole demo (``replica demo
--port 0 ...``); both wait (with a deadline, never by sleeping) for the line
giving the page's URL, and always reap the process (see ``server_process``)::

    with UIProcess(tmp_path / "tablet", "--relay", relay.url) as ui:
        urllib.request.urlopen(ui.url + "screen")
"""

from __future__ import annotations

import re

from server_process import CLI, ServerProcess, ServerProcessError

__all__ = ["CLI", "DemoProcess", "UIProcess", "UIProcessError"]


class UIProcessError(ServerProcessError):
    """The process did not behave (did not start, did not stop cleanly)."""


class UIProcess(ServerProcess):
    """One device's data directory, its screen served by at most one process at a time."""

    NAME = "sync screen"
    READY = re.compile(r"Sync screen of (?P<id>\S+) on (?P<url>http://127\.0\.0\.1:\d+/)")
    STOPPED = "Sync screen stopped"
    Error = UIProcessError

    def command(self, port: int) -> list[str]:
        return [*CLI, "ui", "--data", str(self.data), "--port", str(port), *self.extra]


class DemoProcess(UIProcess):
    """``replica demo`` over the directory ``data`` (new or empty)."""

    NAME = "demo"
    READY = re.compile(r"Field day demo of relay (?P<id>\S+) on (?P<url>http://127\.0\.0\.1:\d+/)")
    STOPPED = "Demo stopped"

    def command(self, port: int) -> list[str]:
        return [*CLI, "demo", "--data", str(self.data), "--port", str(port), *self.extra]
