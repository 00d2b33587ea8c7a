"""The Sync screen's words and states, without a server or a browser.

- The message catalog: every language has English's keys and placeholders.
- ``ui_screen.screen`` over generated statuses: the card's headline is the
  status's own (``SyncStatus.headline``), the popup says "Data Synced" only
  when the status does, Retry is offered exactly when the error says retrying
  can help, and every refusal that holds changes back is on the card.
- Peer rows: the nearby devices first, then those that synced with this one.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replica.errors import ErrorInfo
from replica.status import Headline, PeerStatus, Progress, Rejected, SyncState, SyncStatus
from replica.ui_screen import Facts, Outcome, Target, screen
from replica.ui_text import CATALOGS, Catalog, placeholders

ENGLISH = Catalog("en")
FACTS = Facts(name="Amina", replica_id="tablet-7", relay=True, areas=("campaign-7/households",))

errors = st.builds(
    ErrorInfo, st.sampled_from(["relay_unreachable", "changes_refused"]), st.text(max_size=20), st.booleans()
)
rejections = st.lists(
    st.builds(Rejected, st.just("c8/h"), st.none(), st.integers(0, 5), st.just("document_out_of_scope"), st.just("no")),
    max_size=2,
)
statuses = st.builds(
    SyncStatus,
    state=st.sampled_from(SyncState),
    unsynced=st.integers(0, 50),
    rejected=st.integers(0, 5),
    progress=st.builds(Progress, st.integers(0, 9), st.integers(0, 9), st.integers(0, 9), st.integers(0, 9)),
    error=st.none() | errors,
    rejections=rejections.map(tuple),
    connected=st.booleans(),
)


@pytest.mark.parametrize("language", sorted(CATALOGS))
def test_every_language_has_the_english_keys_and_placeholders(language: str) -> None:
    messages = CATALOGS[language]
    assert set(messages) == set(CATALOGS["en"])
    for key, text in CATALOGS["en"].items():
        assert placeholders(messages[key]) == placeholders(text), key


def test_an_unknown_language_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match="en, fr"):
        Catalog("xx")


@given(statuses)
def test_the_card_shows_the_status_headline_and_every_refusal(status: SyncStatus) -> None:
    card = screen(status, {}, FACTS, ENGLISH)["card"]
    assert card["headline"] == status.headline.name.lower()
    assert card["title"] == status.headline.value  # English words the same line as SyncStatus.label
    assert status.label.startswith(card["title"])
    assert card["count"] == status.unsynced
    held = [r for r in status.rejections if r.count]
    assert [item["count"] for item in card["rejected"]] == [r.count for r in held]


@given(statuses, statuses, st.none() | errors)
def test_the_popup_says_data_synced_only_when_the_status_does(
    final: SyncStatus, now: SyncStatus, failure: ErrorInfo | None
) -> None:
    """``final``: what the sync returned; ``now``: the status while the popup shows."""
    popup = screen(now, {}, replace(FACTS, outcome=Outcome(final, None, failure)), ENGLISH)["popup"]
    assert popup is not None
    says_synced = popup["title"] == "Data Synced"
    both = final.headline is Headline.SYNCED and now.headline is Headline.SYNCED
    assert says_synced == (both and failure is None and final.peer is None)
    error = failure or (final.error if final.state is SyncState.FAILED else None)
    if error is not None:
        assert popup["title"] == "Sync Failed"
        assert (popup["retry"] == "Retry") == error.retryable
        assert any(("Retrying can help" if error.retryable else "Retrying will not help") in x for x in popup["lines"])


def test_a_peer_sync_never_says_data_synced() -> None:
    final = SyncStatus(SyncState.SYNCED, unsynced=0, peer="supervisor-chidi")
    tablet = Target("Chidi's tablet", "ws://127.0.0.1:9", "supervisor-chidi")
    facts = Facts(name="Amina", replica_id="tablet-7", targets=(tablet,), outcome=Outcome(final, tablet))
    shown = screen(SyncStatus(SyncState.IDLE, unsynced=3), {}, facts, ENGLISH)
    assert shown["popup"]["title"] == "Synced with Chidi's tablet"
    assert shown["popup"]["peer_url"] == tablet.url
    assert shown["card"]["title"] == "Data unsynced"


def test_peer_rows_list_targets_then_the_devices_that_dialled_in() -> None:
    tablet = Target("Chidi's tablet", "ws://127.0.0.1:9", "supervisor-chidi")
    known = {
        "supervisor-chidi": PeerStatus("supervisor-chidi", 2, 0, 1000.0, None),
        "worker-bello": PeerStatus("worker-bello", 0, 1, None, ErrorInfo("stopped", "stopped early", True)),
    }
    facts = Facts(name="Amina", replica_id="tablet-7", targets=(tablet,), running=tablet)
    rows = screen(SyncStatus(SyncState.IDLE, unsynced=0), known, facts, ENGLISH)["peers"]
    assert [(r["name"], r["button"], r["busy"]) for r in rows] == [
        ("Chidi's tablet", "Sync with Chidi's tablet", True),
        ("worker-bello", None, False),
    ]
    assert rows[0]["lines"][0] == "To send 2 · To receive 0"
    assert rows[1]["lines"][-1] == "Last sync failed: stopped early"


def test_the_overlay_shows_progress_while_the_users_sync_runs() -> None:
    status = SyncStatus(SyncState.SYNCING, unsynced=7, progress=Progress(3, 10, 1, 5))
    shown = screen(status, {}, Facts(name="A", replica_id="t", relay=True, running_relay=True), ENGLISH)
    assert shown["overlay"]["title"] == "Sync in Progress"
    assert shown["overlay"]["lines"][:2] == ["Sent 3 of 10", "Received 1 of 5"]
    assert shown["sync"]["enabled"] is False
    assert screen(status, {}, FACTS, ENGLISH)["overlay"] is None  # a live reconnection: the card only
