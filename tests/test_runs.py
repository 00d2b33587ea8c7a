"""The status rules (``replica.runs``): pure functions of events, session facts and a clock."""

from __future__ import annotations

from dataclasses import dataclass

from replica import runs
from replica.delta import make
from replica.errors import ErrorInfo
from replica.events import Acknowledged, Closed, Completed, Connected, Denied, Event, Incoming
from replica.runs import Facing, PeerResult, RelayStatus, Run
from replica.status import Progress, SyncState

RETRYABLE = ErrorInfo("connection_lost", "the connection was lost", True)
FATAL = ErrorInfo("credential_expired", "the credential expired", False)
OTHER = ErrorInfo("timeout", "nothing heard", True)
NOW = 1_700_000_000.0


@dataclass(frozen=True)
class Facts:
    """What the rules read of a session (``runs.SessionFacts``)."""

    mode: str = "once"
    authenticated: bool = True
    remote_id: str | None = "relay-1"
    sent: int = 0
    to_send: int = 0
    received: int = 0
    to_receive: int = 0


def connected(role: str = "relay", remote_id: str = "relay-1") -> Connected:
    return Connected(remote_id, role, {}, 0, 0)


def ack(count: int = 1) -> Acknowledged:
    return Acknowledged("relay-1", "relay", "c7/h", {"dev-a": count}, count)


def play(facing: Facing, events: list[Event], session: Facts, now: float = NOW) -> tuple[Run, list[runs.Record]]:
    """Start a run and feed it ``events``; the final run and every record stored."""
    run, records = runs.start(facing)
    for event in events:
        run, more = runs.step(run, event, session, now)
        records.extend(more)
    return run, records


# -- start and progress ------------------------------------------------------


def test_a_relay_run_starts_syncing_and_is_recorded() -> None:
    run, records = runs.start(Facing.RELAY)
    assert run.state is SyncState.SYNCING and run.facing is Facing.RELAY
    assert run.progress == Progress() and run.error is None and run.synced_at is None
    assert not run.decided
    assert records == [RelayStatus(run)]


def test_a_peer_run_starts_syncing_with_nothing_recorded() -> None:
    run, records = runs.start(Facing.PEER)
    assert run.state is SyncState.SYNCING and run.facing is Facing.PEER
    assert records == []


def test_progress_is_published_with_every_event() -> None:
    run, _ = runs.start(Facing.RELAY)
    run, records = runs.step(run, ack(5), Facts(sent=5, to_send=10, received=1, to_receive=4), NOW)
    assert run.state is SyncState.SYNCING
    assert run.progress == Progress(sent=5, to_send=10, received=1, to_receive=4)
    assert records == [RelayStatus(run)]
    batch = Incoming("c7/h", (make("c7/h", "dev-b", 1, b"\x01\x00"),))
    run, records = runs.step(run, batch, Facts(sent=5, to_send=10, received=2, to_receive=4), NOW)
    assert run.progress.received == 2
    assert records == [RelayStatus(run)]


def test_progress_of_reads_the_session_counts() -> None:
    assert runs.progress_of(Facts(sent=1, to_send=2, received=3, to_receive=4)) == Progress(1, 2, 3, 4)


def test_an_event_that_changes_nothing_records_nothing() -> None:
    run, _ = runs.start(Facing.RELAY)
    session = Facts(sent=2, to_send=2)
    run, _ = runs.step(run, ack(2), session, NOW)
    same, records = runs.step(run, Denied("x/y", "document_out_of_scope", "no"), session, NOW)
    assert same == run
    assert records == []


# -- completion --------------------------------------------------------------


def test_completed_makes_the_run_synced_at_the_time_given() -> None:
    run, records = play(Facing.RELAY, [connected(), Completed()], Facts(sent=3, to_send=3), now=1234.5)
    assert run.state is SyncState.SYNCED and run.decided
    assert run.synced_at == 1234.5 and run.error is None
    assert run.progress == Progress(sent=3, to_send=3)
    assert records[-1] == RelayStatus(run)


def test_completed_after_a_failure_does_not_undo_it() -> None:
    run, _ = play(Facing.RELAY, [Closed(FATAL), Completed()], Facts())
    assert run.state is SyncState.FAILED and run.error == FATAL and run.synced_at is None


def test_a_completed_once_run_stays_synced_whatever_closes_it() -> None:
    for error in (None, RETRYABLE, FATAL):
        run, _ = play(Facing.RELAY, [Completed(), Closed(error)], Facts(mode="once"), now=10.0)
        assert run.state is SyncState.SYNCED, error
        assert run.error is None and run.synced_at == 10.0


def test_a_completed_live_run_stays_synced_when_its_link_drops_retryably() -> None:
    for error in (None, RETRYABLE):
        run, _ = play(Facing.RELAY, [Completed(), Closed(error)], Facts(mode="live"), now=10.0)
        assert run.state is SyncState.SYNCED, error
        assert run.error is None and run.synced_at == 10.0


def test_a_completed_live_run_fails_on_an_error_retrying_cannot_fix() -> None:
    run, records = play(Facing.RELAY, [Completed(), Closed(FATAL)], Facts(mode="live"))
    assert run.state is SyncState.FAILED
    assert run.error == FATAL
    assert records[-1] == RelayStatus(run)


# -- failure -----------------------------------------------------------------


def test_closed_before_completion_fails_with_its_error() -> None:
    run, records = play(Facing.RELAY, [connected(), Closed(OTHER)], Facts())
    assert run.state is SyncState.FAILED and run.decided
    assert run.error == OTHER and run.synced_at is None
    assert records[-1] == RelayStatus(run)


def test_closed_before_completion_without_a_reason_is_a_lost_connection() -> None:
    run, _ = play(Facing.RELAY, [connected(), Closed(None)], Facts())
    assert run.state is SyncState.FAILED
    assert run.error == runs.LOST
    assert runs.LOST.code == "connection_lost" and runs.LOST.retryable


def test_the_first_failure_is_the_reason_shown() -> None:
    run, _ = play(Facing.RELAY, [Closed(OTHER), Closed(FATAL)], Facts())
    assert run.error == OTHER
    run, records = runs.fail(run, FATAL, Facts())
    assert run.state is SyncState.FAILED and run.error == OTHER
    assert records == []  # nothing changed: nothing to store


def test_fail_is_a_close_with_that_error() -> None:
    run, _ = runs.start(Facing.RELAY)
    failed, records = runs.fail(run, FATAL, Facts(sent=1, to_send=4))
    closed, _ = runs.step(run, Closed(FATAL), Facts(sent=1, to_send=4), NOW)
    assert failed == closed
    assert failed.state is SyncState.FAILED and failed.error == FATAL
    assert failed.progress == Progress(sent=1, to_send=4)
    assert records == [RelayStatus(failed)]


def test_fail_after_a_once_run_completed_keeps_it_synced() -> None:
    run, _ = play(Facing.RELAY, [Completed()], Facts(mode="once"), now=5.0)
    after, _ = runs.fail(run, FATAL, Facts(mode="once"))
    assert after.state is SyncState.SYNCED and after.synced_at == 5.0


def test_fail_after_a_live_run_completed_follows_the_close_rules() -> None:
    run, _ = play(Facing.RELAY, [Completed()], Facts(mode="live"))
    assert runs.fail(run, RETRYABLE, Facts(mode="live"))[0].state is SyncState.SYNCED
    failed, _ = runs.fail(run, FATAL, Facts(mode="live"))
    assert failed.state is SyncState.FAILED and failed.error == FATAL


# -- a relay run that reached a peer -----------------------------------------


def test_a_relay_run_answered_by_a_peer_leaves_the_home_screen() -> None:
    run, _ = runs.start(Facing.RELAY)
    run, records = runs.step(run, connected("peer", "dev-b"), Facts(remote_id="dev-b"), NOW)
    assert run.facing is Facing.PEER and run.state is SyncState.SYNCING
    assert records == [RelayStatus(runs.IDLE)]
    assert runs.IDLE.state is SyncState.IDLE and runs.IDLE.facing is Facing.RELAY
    run, records = runs.step(run, Completed(), Facts(remote_id="dev-b"), 7.0)
    assert records == [PeerResult("dev-b", 7.0, None, 0)]  # reported as the peer's, not the relay's


def test_a_relay_run_answered_by_the_relay_stays_relay_facing() -> None:
    run, _ = runs.start(Facing.RELAY)
    run, records = runs.step(run, connected("relay"), Facts(to_send=3), NOW)
    assert run.facing is Facing.RELAY and run.progress.to_send == 3
    assert records == [RelayStatus(run)]


# -- peer results --------------------------------------------------------------


def test_a_peer_run_records_its_result_only_once_decided() -> None:
    session = Facts(remote_id="dev-b", sent=2, to_send=2, received=1, to_receive=3)
    run, _ = runs.start(Facing.PEER)
    run, records = runs.step(run, connected("peer", "dev-b"), session, NOW)
    assert records == []
    run, records = runs.step(run, ack(2), session, NOW)
    assert records == []
    run, records = runs.step(run, Completed(), session, 42.0)
    assert records == [PeerResult("dev-b", 42.0, None, 2)]
    run, records = runs.step(run, Closed(None), session, 43.0)
    assert records == []  # already decided: recorded once


def test_a_failed_peer_run_records_its_error() -> None:
    run, records = play(Facing.PEER, [Closed(FATAL)], Facts(remote_id="dev-b"))
    assert run.state is SyncState.FAILED
    assert records == [PeerResult("dev-b", None, FATAL, 0)]


def test_a_peer_that_did_not_authenticate_is_not_recorded() -> None:
    _, records = play(Facing.PEER, [Completed()], Facts(authenticated=False, remote_id="dev-b"))
    assert records == []
    _, records = play(Facing.PEER, [Closed(FATAL)], Facts(authenticated=False, remote_id="dev-b"))
    assert records == []


def test_a_peer_with_no_id_is_not_recorded() -> None:
    _, records = play(Facing.PEER, [Closed(FATAL)], Facts(remote_id=None))
    assert records == []


def test_a_peer_result_counts_what_is_still_missing_here() -> None:
    _, records = play(Facing.PEER, [Completed()], Facts(remote_id="dev-b", received=3, to_receive=10))
    assert [r.to_receive for r in records if isinstance(r, PeerResult)] == [7]
    _, records = play(Facing.PEER, [Completed()], Facts(remote_id="dev-b", received=12, to_receive=10))
    assert [r.to_receive for r in records if isinstance(r, PeerResult)] == [0]


def test_fail_records_a_peer_result_like_a_close() -> None:
    run, _ = runs.start(Facing.PEER)
    _, records = runs.fail(run, OTHER, Facts(remote_id="dev-b", to_receive=4))
    assert records == [PeerResult("dev-b", None, OTHER, 4)]


# -- ends_link ---------------------------------------------------------------


def test_only_a_completed_once_run_ends_the_link() -> None:
    assert runs.ends_link(Completed(), "once")
    assert not runs.ends_link(Completed(), "live")
    assert not runs.ends_link(Closed(None), "once")
    assert not runs.ends_link(ack(), "once")


# -- connected, waiting to reconnect, stopped ----------------------------------


def test_a_run_is_connected_from_the_welcome_until_its_link_closes() -> None:
    run, _ = runs.start(Facing.RELAY)
    assert not run.connected
    run, records = runs.step(run, connected(), Facts(mode="live"), NOW)
    assert run.connected and records == [RelayStatus(run)]
    run, _ = runs.step(run, Completed(), Facts(mode="live"), NOW)
    assert run.connected and run.state is SyncState.SYNCED
    run, records = runs.step(run, Closed(RETRYABLE), Facts(mode="live"), NOW)
    assert not run.connected and run.state is SyncState.SYNCED and records == [RelayStatus(run)]


def test_a_failure_to_connect_leaves_it_unconnected() -> None:
    run, _ = runs.start(Facing.RELAY)
    run, _ = runs.fail(run, OTHER, Facts())
    assert not run.connected and run.state is SyncState.FAILED


def test_a_peer_run_is_connected_too() -> None:
    run, _ = runs.start(Facing.RELAY)
    run, _ = runs.step(run, connected("peer", "tablet-a"), Facts(), NOW)
    assert run.connected and run.facing is Facing.PEER


def test_waiting_says_when_the_next_try_is_and_is_recorded() -> None:
    run, _ = play(Facing.RELAY, [connected(), Closed(RETRYABLE)], Facts(mode="live"))
    run, records = runs.waiting(run, NOW + 4)
    assert run.retry_at == NOW + 4 and not run.connected and run.state is SyncState.FAILED
    assert records == [RelayStatus(run)]
    peer, _ = runs.start(Facing.PEER)
    peer, records = runs.waiting(peer, NOW + 4)
    assert peer.retry_at == NOW + 4 and records == []  # a peer's outcome is recorded once, when decided


def test_a_stopped_run_that_had_not_completed_failed_with_stopped() -> None:
    run, _ = play(Facing.RELAY, [connected()], Facts(mode="once", sent=1, to_send=3))
    run, records = runs.stop(run, Facts(mode="once", sent=1, to_send=3))
    assert run.state is SyncState.FAILED and run.error == runs.STOPPED and run.error.retryable
    assert not run.connected and run.retry_at is None and run.progress.sent == 1
    assert records == [RelayStatus(run)]


def test_a_stopped_live_sync_that_caught_up_stays_synced_and_stops_waiting() -> None:
    run, _ = play(Facing.RELAY, [connected(), Completed()], Facts(mode="live"))
    run, _ = runs.stop(run, Facts(mode="live"))
    assert run.state is SyncState.SYNCED and run.error is None and not run.connected
    waiting, _ = runs.waiting(run, NOW + 9)
    stopped, _ = runs.stop(waiting, Facts(mode="live"))
    assert stopped.retry_at is None and stopped.state is SyncState.SYNCED


def test_a_stop_keeps_the_first_failure_as_the_reason() -> None:
    run, _ = play(Facing.RELAY, [Closed(FATAL)], Facts())
    run, _ = runs.stop(run, Facts())
    assert run.error == FATAL
