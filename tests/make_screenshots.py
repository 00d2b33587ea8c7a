"""Screenshots of the Sync screen's states for docs/, taken with the tests' Chromium.

Run from the project's root with the test extra installed::

    python tests/make_screenshots.py        # writes docs/ui-*.png

Real processes, as in ``tests/test_ui_browser.py``: a relay (``replica
relay``), a device's screen (``replica ui``) on a phone-sized viewport, and
``replica demo`` on a wide one. "In progress" is caught by pausing the relay
process (SIGSTOP) once the overlay shows deltas sent, and letting it go on
(SIGCONT) after the shot.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from browser import launch
from relay_process import RelayProcess
from replica import Replica
from ui_process import DemoProcess, UIProcess

DOCS = Path(__file__).resolve().parents[1] / "docs"
DOC = "campaign-7/households"
#: Deltas on the device before its first sync: enough for the overlay to show progress.
BACKLOG = 20_000


def main() -> None:
    from playwright.sync_api import expect

    with tempfile.TemporaryDirectory(prefix="replica-shots-") as folder:
        root = Path(folder)
        with Replica.open(root / "tablet", replica_id="tablet-7") as replica:
            households = replica.doc(DOC).records("households")
            with replica.batch():
                for number in range(BACKLOG):
                    households.put(f"h-{number}", {"name": f"household {number}", "members": 1 + number % 7})
        with RelayProcess(root / "relay") as relay, launch(scale=2) as browser:
            cred = root / "tablet-7.cred"
            cred.write_text(relay.issue("tablet-7", ["campaign-7/*"]) + "\n")
            port = int(relay.url.rsplit(":", 1)[1])
            extra = ["--relay", relay.url, "--credential", str(cred), "--name", "Amina (health worker)"]
            extra += ["--peer", "Chidi's tablet=ws://127.0.0.1:8766"]
            with UIProcess(root / "tablet", *extra) as ui:
                page = browser.new_page()
                page.set_default_timeout(60_000)
                page.goto(ui.url)
                page.click("#login")
                page.wait_for_function("document.querySelector('#overlay-lines').textContent.startsWith('Sent ')")
                page.wait_for_function("!document.querySelector('#overlay-lines').textContent.startsWith('Sent 0 ')")
                os.kill(relay.pid, signal.SIGSTOP)
                try:
                    page.screenshot(path=DOCS / "ui-in-progress.png")
                finally:
                    os.kill(relay.pid, signal.SIGCONT)
                expect(page.locator("#popup-title")).to_have_text("Data Synced")
                page.screenshot(path=DOCS / "ui-synced.png")
                page.click("#popup-close")
                for name in ("Hauwa Musa", "Ibrahim Sani", "Fatima Bala"):
                    page.fill("#form-name", name)
                    page.click("#form-save")
                expect(page.locator("#card-count")).to_have_text("3")
                expect(page.locator("#toast")).to_contain_text("Fatima Bala")
                page.locator("#toast").evaluate("toast => toast.hidden = true")
                page.screenshot(path=DOCS / "ui-unsynced.png")
                relay.terminate()
                page.click("#sync")
                expect(page.locator("#popup-title")).to_have_text("Sync Failed")
                page.locator("#toast").evaluate("toast => toast.hidden = true")
                page.screenshot(path=DOCS / "ui-failed.png")
                relay.start(port)
                ui.terminate()
        with (
            launch({"width": 1560, "height": 900}) as browser,
            DemoProcess(root / "demo", "--step-delay", "0.01") as demo,
        ):
            page = browser.new_page()
            page.set_default_timeout(90_000)
            page.goto(demo.url)
            expect(page.locator("#all-synced")).to_be_visible()
            page.screenshot(path=DOCS / "demo.png")
            demo.terminate()
    for name in ("ui-unsynced", "ui-in-progress", "ui-synced", "ui-failed", "demo"):
        print(DOCS / f"{name}.png")


if __name__ == "__main__":
    main()
