"""What a home screen shows (``replica.status``): labels and card lines of snapshots."""

from __future__ import annotations

import dataclasses

import pytest

from replica.errors import ErrorInfo
from replica.status import PeerStatus, Progress, Rejected, SyncState, SyncStatus

RETRYABLE = ErrorInfo("relay_unreachable", "cannot reach the relay", True)
FATAL = ErrorInfo("credential_expired", "the credential expired", False)


# -- label -------------------------------------------------------------------


def test_a_running_sync_is_in_progress_whatever_is_unsynced() -> None:
    assert SyncStatus(SyncState.SYNCING, unsynced=0).label == "Sync in Progress"
    assert SyncStatus(SyncState.SYNCING, unsynced=12, error=FATAL).label == "Sync in Progress"


def test_a_failed_sync_says_why_and_whether_retrying_helps() -> None:
    retry = SyncStatus(SyncState.FAILED, 3, error=RETRYABLE)
    assert retry.label == "Sync Failed: cannot reach the relay (retry can help)"
    fatal = SyncStatus(SyncState.FAILED, 0, error=FATAL)
    assert fatal.label == "Sync Failed: the credential expired (retrying will not help)"


def test_a_failed_sync_with_no_error_shows_the_unsynced_count() -> None:
    assert SyncStatus(SyncState.FAILED, 4).label == "Data unsynced: 4"


def test_data_synced_only_when_synced_with_nothing_left() -> None:
    assert SyncStatus(SyncState.SYNCED, 0).label == "Data Synced"
    assert SyncStatus(SyncState.SYNCED, 2).label == "Data unsynced: 2"  # changes made since the sync


@pytest.mark.parametrize("unsynced", [0, 1, 250])
def test_an_idle_replica_shows_its_unsynced_count(unsynced: int) -> None:
    assert SyncStatus(SyncState.IDLE, unsynced).label == f"Data unsynced: {unsynced}"


# -- lines -------------------------------------------------------------------


def test_a_running_sync_shows_its_progress_and_what_is_unsynced() -> None:
    status = SyncStatus(SyncState.SYNCING, 7, progress=Progress(sent=3, to_send=7, received=1, to_receive=2))
    assert status.lines == ["Sync in Progress", "sent 3/7, received 1/2", "Data unsynced: 7"]


def test_a_running_sync_with_nothing_to_move_shows_no_progress_line() -> None:
    assert SyncStatus(SyncState.SYNCING, 0).lines == ["Sync in Progress", "Data unsynced: 0"]


def test_a_receive_only_sync_still_shows_progress() -> None:
    status = SyncStatus(SyncState.SYNCING, 0, progress=Progress(received=5, to_receive=9))
    assert status.lines[1] == "sent 0/0, received 5/9"


def test_progress_is_not_shown_once_the_sync_ended() -> None:
    progress = Progress(sent=7, to_send=7)
    assert SyncStatus(SyncState.SYNCED, 0, progress=progress).lines == ["Data Synced"]
    failed = SyncStatus(SyncState.FAILED, 7, progress=progress, error=RETRYABLE)
    assert failed.lines == ["Sync Failed: cannot reach the relay (retry can help)", "Data unsynced: 7"]


def test_the_unsynced_line_is_not_repeated() -> None:
    assert SyncStatus(SyncState.IDLE, 5).lines == ["Data unsynced: 5"]
    assert SyncStatus(SyncState.SYNCED, 5).lines == ["Data unsynced: 5"]
    assert SyncStatus(SyncState.FAILED, 5).lines == ["Data unsynced: 5"]


def test_rejected_changes_get_a_line_each() -> None:
    rejections = (
        Rejected("secret/notes", None, 4, "document_out_of_scope", "the credential does not cover it"),
        Rejected("c7/h", "dev-a", 2, "delta_too_large", "too large"),
    )
    status = SyncStatus(SyncState.SYNCED, 0, rejected=6, rejections=rejections)
    assert status.lines == [
        "Data Synced",
        "Refused by the relay: 4 changes to secret/notes (the credential does not cover it)",
        "Refused by the relay: 2 changes to c7/h (too large)",
    ]


# -- the snapshot itself -----------------------------------------------------


def test_snapshots_are_immutable_with_empty_defaults() -> None:
    status = SyncStatus(SyncState.IDLE, 0)
    assert (status.rejected, status.progress, status.last_synced_at, status.error, status.rejections) == (
        0,
        Progress(0, 0, 0, 0),
        None,
        None,
        (),
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        status.unsynced = 1  # type: ignore[misc]
    peer = PeerStatus("dev-b", 1, 2, None, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        peer.to_send = 0  # type: ignore[misc]


def test_sync_states_have_stable_values() -> None:
    assert [s.value for s in SyncState] == ["idle", "syncing", "synced", "failed"]
