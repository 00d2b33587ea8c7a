"""The Sync screen in a real browser: headless Chromium, real processes, real LMDB.

Every test runs ``replica ui`` (or ``replica demo``) as a subprocess on
127.0.0.1 and a real relay process (``replica relay``) where it needs one,
and drives Debian's Chromium with playwright (``tests/browser.py``). Waits
are playwright's expectations on what the page shows (with deadlines), and
process lines; nothing sleeps.

1. "Sync Data": the overlay blocks the page while the run lasts (the relay
   process is paused with SIGSTOP so that it lasts), then "Data Synced" and
   the card at 0; the relay stopped: "Sync Failed" with Retry; the relay
   restarted on the same port and data: Retry, "Data Synced", the card at 0.
2. Records saved on the page and by another client raise the count live.
3. A change the relay refuses (outside the credential): "Sync Failed" with
   no Retry, what to do instead, and the refusal on the card.
4. ``replica demo``: the page loads, the field day reaches "All devices:
   Data Synced" (each device's own screen says it), SIGTERM stops it cleanly.
"""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from browser import launch
from relay_process import RelayProcess
from replica import Replica
from ui_process import DemoProcess, UIProcess

pytestmark = pytest.mark.browser

DOC = "campaign-7/households"
#: Longest wait for something to show on the page (ms).
SHOW = 30_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with launch() as context:
        yield context


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    page = browser.new_page()
    page.set_default_timeout(SHOW)
    yield page
    page.close()


def device(path: Path, records: int = 0) -> Path:
    """A device's data directory holding ``records`` households (unsynced)."""
    with Replica.open(path, replica_id="tablet-7") as replica:
        households = replica.doc(DOC).records("households")
        for number in range(records):
            households.put(f"h-{number}", {"name": f"household {number}", "members": number + 1})
    return path


def credential(relay: RelayProcess, folder: Path, docs: list[str]) -> str:
    path = folder / "tablet-7.cred"
    path.write_text(relay.issue("tablet-7", docs) + "\n")
    return str(path)


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        value: dict[str, Any] = json.load(answer)
        return value


def failed(page: Any, *, retry: bool, says: str) -> None:
    """The popup says "Sync Failed" and ``says``, with Retry only if ``retry``; so does the card."""
    from playwright.sync_api import expect

    expect(page.locator("#popup-title")).to_have_text("Sync Failed")
    retry_button = expect(page.locator("#popup-retry"))
    retry_button.to_be_visible() if retry else retry_button.to_be_hidden()
    expect(page.locator("#popup-lines")).to_contain_text("Retrying can help" if retry else "Retrying will not help")
    expect(page.locator("#popup-lines")).to_contain_text(says)
    expect(page.locator("#card-title")).to_have_text("Sync Failed")


def covered(page: Any, selector: str) -> bool:
    """True if the overlay is what a tap on ``selector``'s centre reaches."""
    return bool(
        page.evaluate(
            """(selector) => {
                const box = document.querySelector(selector).getBoundingClientRect();
                const hit = document.elementFromPoint(box.x + box.width / 2, box.y + box.height / 2);
                return hit !== null && hit.closest("#overlay") !== null;
            }""",
            selector,
        )
    )


def test_sync_data_then_relay_down_then_retry(tmp_path: Path, page: Any) -> None:
    from playwright.sync_api import expect

    with RelayProcess(tmp_path / "relay") as relay:
        token = credential(relay, tmp_path, ["campaign-7/*"])
        data = device(tmp_path / "tablet", records=3)
        port = relay.url.rsplit(":", 1)[1]
        with UIProcess(data, "--relay", relay.url, "--credential", token, "--timeout", "20") as ui:
            page.goto(ui.url)
            expect(page.locator("#card-title")).to_have_text("Data unsynced")
            expect(page.locator("#card-count")).to_have_text("3")

            os.kill(relay.pid, signal.SIGSTOP)  # the run lasts until the relay answers again
            try:
                page.click("#sync")
                expect(page.locator("#overlay")).to_be_visible()
                expect(page.locator("#overlay-title")).to_have_text("Sync in Progress")
                assert covered(page, "#sync") and covered(page, "#form-save")  # it blocks the page
                expect(page.locator("#popup")).to_be_hidden()
            finally:
                os.kill(relay.pid, signal.SIGCONT)
            expect(page.locator("#popup-title")).to_have_text("Data Synced")
            expect(page.locator("#overlay")).to_be_hidden()
            expect(page.locator("#popup-retry")).to_be_hidden()
            expect(page.locator("#card-count")).to_have_text("0")
            expect(page.locator("#card-title")).to_have_text("Data Synced")
            page.click("#popup-close")
            expect(page.locator("#popup")).to_be_hidden()

            relay.terminate()  # an outage
            page.fill("#form-name", "Hauwa Musa")
            page.click("#form-save")
            expect(page.locator("#card-count")).to_have_text("1")
            page.click("#sync")
            failed(page, retry=True, says="refused the connection")
            expect(page.locator("#popup-retry")).to_have_text("Retry")
            expect(page.locator("#card-count")).to_have_text("1")

            relay.start(int(port))  # back, on the same port and data
            page.click("#popup-retry")
            expect(page.locator("#popup-title")).to_have_text("Data Synced")
            expect(page.locator("#card-count")).to_have_text("0")
            expect(page.locator("#card-title")).to_have_text("Data Synced")
            page.click("#popup-close")
            expect(page.locator("#popup")).to_be_hidden()
            ui.terminate()  # exit 0 after "Sync screen stopped"


def test_saved_records_raise_the_count_live(tmp_path: Path, page: Any) -> None:
    from playwright.sync_api import expect

    with UIProcess(device(tmp_path / "tablet")) as ui:
        page.goto(ui.url)
        expect(page.locator("#card-count")).to_have_text("0")
        expect(page.locator("#sync")).to_be_disabled()  # no relay given: the note says how to give one
        expect(page.locator("#sync-note")).to_contain_text("--relay URL")
        page.fill("#form-name", "Ibrahim Sani")
        page.fill("#form-number", "6")
        page.click("#form-save")
        expect(page.locator("#card-count")).to_have_text("1")
        expect(page.locator("#toast")).to_contain_text("Saved: Household Ibrahim Sani")
        for number in range(2):  # another client: the page learns it by push, with no reload
            post(ui.url + "records", {"kind": "delivery", "name": f"visit {number}", "number": 2})
        expect(page.locator("#card-count")).to_have_text("3")
        expect(page.locator("#card-title")).to_have_text("Data unsynced")
        ui.terminate()


def test_a_refused_change_offers_no_retry(tmp_path: Path, page: Any) -> None:
    from playwright.sync_api import expect

    with RelayProcess(tmp_path / "relay") as relay:
        token = credential(relay, tmp_path, ["campaign-9/*"])  # does not cover campaign-7
        data = device(tmp_path / "tablet", records=2)
        with UIProcess(data, "--relay", relay.url, "--credential", token) as ui:
            page.goto(ui.url)
            expect(page.locator("#card-count")).to_have_text("2")
            page.click("#sync")
            failed(page, retry=False, says="ask the relay operator")
            expect(page.locator("#popup-code")).to_have_text("Code: changes_refused")
            page.click("#popup-close")
            expect(page.locator("#rejected")).to_be_visible()
            expect(page.locator("#rejected-list")).to_contain_text(f"2 changes to {DOC}")
            expect(page.locator("#card-title")).to_have_text("Sync Failed")


def test_demo_plays_the_field_day_to_data_synced(tmp_path: Path, browser: Any) -> None:
    from playwright.sync_api import expect

    page = browser.new_page()
    page.set_viewport_size({"width": 1600, "height": 1000})
    page.set_default_timeout(90_000)
    try:
        with DemoProcess(tmp_path / "demo", "--step-delay", "0.01") as demo:
            page.goto(demo.url)
            expect(page.locator("#all-synced")).to_be_visible()
            expect(page.locator("#all-synced")).to_have_text("All devices: Data Synced")
            frames = [page.frame(name=key) for key in ("amina", "bello", "chidi")]
            for frame in frames:
                assert frame is not None
                expect(frame.locator("#card-title")).to_have_text("Data Synced")
                expect(frame.locator("#card-count")).to_have_text("0")
            expect(page.locator("#steps li.done")).to_have_count(9)
            # The relay's devices view (`replica relay devices`): each device, its last sync, its credential.
            known = page.locator("#known tr")
            expect(known).to_have_count(3)
            for name in ("amina", "bello", "chidi"):
                row = known.filter(has_text=name)
                expect(row).to_contain_text("s ago")
                expect(row).to_contain_text("expires in")
            lines = demo.terminate()
        assert "Field day done: every device shows Data Synced" in lines
        assert any("Relay outage during a sync: Sync Failed" in line for line in lines)
        assert any("A change the relay refuses: Sync Failed" in line for line in lines)
    finally:
        page.close()
