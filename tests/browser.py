"""Headless Chromium for the browser tests, driven by playwright's Python package.

The browser is Debian's ``chromium`` at :data:`CHROMIUM` (``.ci/run`` installs
it with apt-get); playwright never downloads one. :func:`missing` says why the
browser tests cannot run on this machine (None when they can): the
``browser`` marker's tests are skipped with that reason (``conftest.py``).
:func:`launch` starts a fresh browser with its own user-data directory and a
phone-sized viewport.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: A phone's screen (CSS pixels), as the field app runs on.
PHONE = {"width": 390, "height": 844}


def missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install -e '.[test]')"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (apt-get install -y chromium)"
    return None


@contextmanager
def launch(viewport: dict[str, int] | None = None, *, scale: float = 1.0) -> Iterator[Any]:
    """A browser context (fresh profile, ``viewport``: a phone's by default,
    ``scale`` device pixels per CSS pixel); closed at the end."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright, tempfile.TemporaryDirectory(prefix="replica-chromium-") as profile:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            args=ARGS,
            headless=True,
            viewport=viewport or PHONE,
            device_scale_factor=scale,
        )
        try:
            yield context
        finally:
            context.close()
