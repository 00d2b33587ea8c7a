"""Abuse limits of a relay, and the relay's session that enforces them.

A relay serves devices it does not control: one of them (a bug, a stolen
credential, a fuzzer) must not starve the others. Three limits, each with
its own error code, all retryable (the device backs off and reconnects, as
after any drop), each counted in ``/metrics`` under its code:

================================  =======================================
``frame_rate_exceeded``           frames per second on one connection
``byte_rate_exceeded``            bytes per second on one connection
``credential_frame_rate_exceeded`` frames per second of one device, all its
                                  connections together
``credential_byte_rate_exceeded`` bytes per second, likewise
``too_many_connections``          connections of one device open at once
================================  =======================================

Rates are token buckets (:class:`TokenBucket`): a burst is allowed, then the
rate. The per-device ones apply once the device's credential was checked
(before that, only the connection's own). The clock is an argument, as in
the sans-I/O core.

:class:`RelaySession` is a :class:`~replica.session.Session` that also
counts what it moves (frames and bytes each way, for the operator's log and
the metrics) and applies these limits to what it receives.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from replica import wire
from replica.errors import ErrorInfo, ReplicaError
from replica.events import Incoming, IncomingSnapshot, IngestResult
from replica.session import Authorizer, Limits, LogView, Session

FRAME_RATE = "frame_rate_exceeded"
BYTE_RATE = "byte_rate_exceeded"
CREDENTIAL_FRAME_RATE = "credential_frame_rate_exceeded"
CREDENTIAL_BYTE_RATE = "credential_byte_rate_exceeded"
TOO_MANY_CONNECTIONS = "too_many_connections"
CODES = (FRAME_RATE, BYTE_RATE, CREDENTIAL_FRAME_RATE, CREDENTIAL_BYTE_RATE, TOO_MANY_CONNECTIONS)

_MB = 1024 * 1024


@dataclass(frozen=True)
class AbuseLimits:
    """The relay's abuse limits (None: that limit is off). The defaults are
    far above what a device syncing does (a catch-up sends a few frames of
    up to 2 MiB per round trip) and far below what floods a relay."""

    frames_per_second: float | None = 500.0
    frame_burst: int = 2_000
    bytes_per_second: float | None = 32.0 * _MB
    byte_burst: int = 4 * wire.MAX_FRAME_BYTES  # a few frames of the largest size at once
    credential_frames_per_second: float | None = 1_000.0
    credential_frame_burst: int = 4_000
    credential_bytes_per_second: float | None = 64.0 * _MB
    credential_byte_burst: int = 8 * wire.MAX_FRAME_BYTES
    connections_per_credential: int | None = 8


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up."""

    __slots__ = ("_at", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at = now

    def take(self, amount: float, now: float) -> bool:
        """Take ``amount`` tokens if there are that many (refilled up to ``now``)."""
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = max(self._at, now)
        if amount > self._tokens:
            return False
        self._tokens -= amount
        return True


def _bucket(rate: float | None, burst: int, now: float) -> TokenBucket | None:
    return None if rate is None else TokenBucket(rate, burst, now)


class _Device:
    """What one device (one credential's replica id) holds against its limits."""

    __slots__ = ("bytes", "frames", "open")

    def __init__(self, limits: AbuseLimits, now: float) -> None:
        self.frames = _bucket(limits.credential_frames_per_second, limits.credential_frame_burst, now)
        self.bytes = _bucket(limits.credential_bytes_per_second, limits.credential_byte_burst, now)
        self.open = 0


class Guard:
    """The relay-wide side of the limits: per device, its buckets and how many
    connections it has open. One per relay; sessions call it."""

    def __init__(self, limits: AbuseLimits | None = None) -> None:
        self.limits = limits or AbuseLimits()
        self._devices: dict[str, _Device] = {}

    def _device(self, replica_id: str, now: float) -> _Device:
        found = self._devices.get(replica_id)
        if found is None:
            found = self._devices[replica_id] = _Device(self.limits, now)
        return found

    def admit(self, replica_id: str, now: float) -> None:
        """A connection of ``replica_id`` passed its credential check; raise
        ``too_many_connections`` if it has its share open already."""
        device = self._device(replica_id, now)
        cap = self.limits.connections_per_credential
        if cap is not None and device.open >= cap:
            raise ReplicaError(
                f"{replica_id} already has {device.open} connections open to this relay (at most {cap}); "
                "this one is refused and will be retried later. If one device really needs more, ask the "
                "operator to raise --max-connections-per-device",
                code=TOO_MANY_CONNECTIONS,
                retryable=True,
            )
        device.open += 1

    def release(self, replica_id: str) -> None:
        """An admitted connection of ``replica_id`` ended."""
        device = self._devices.get(replica_id)
        if device is not None:
            device.open -= 1
            if device.open <= 0:
                del self._devices[replica_id]  # its buckets start full next time: a quiet device earned it

    def received(self, replica_id: str, size: int, now: float) -> ErrorInfo | None:
        """One frame of ``size`` bytes from an admitted device: the error if it is over its share."""
        device = self._device(replica_id, now)
        if device.frames is not None and not device.frames.take(1, now):
            return _over(CREDENTIAL_FRAME_RATE, f"{replica_id} sent more frames per second than this relay allows")
        if device.bytes is not None and not device.bytes.take(size, now):
            return _over(CREDENTIAL_BYTE_RATE, f"{replica_id} sent more bytes per second than this relay allows")
        return None


def _over(code: str, what: str) -> ErrorInfo:
    return ErrorInfo(
        code,
        f"{what}, over all its connections; the relay closed this one to keep serving the others, and the "
        "device will retry later. If this device is legitimate, ask the operator to raise the relay's limits",
        True,
    )


#: Called with (what, amount): ``"bytes_in"``, ``"bytes_out"``, ``"deltas_in"`` of one session.
TrafficHook = Callable[[str, int], None]


class RelaySession(Session):
    """A relay's session: counts what it moves and applies the abuse limits
    to every frame received (over its limit: an ``error`` frame with the
    limit's code, and the close)."""

    __slots__ = (
        "_bytes",
        "_frames",
        "_guard",
        "_on_traffic",
        "admitted",
        "bytes_in",
        "bytes_out",
        "frames_in",
        "frames_out",
        "started_at",
    )

    def __init__(
        self,
        replica: LogView,
        *,
        authorize: Authorizer,
        guard: Guard,
        limits: Limits | None = None,
        on_traffic: TrafficHook | None = None,
        now: float | None = None,
    ) -> None:
        super().__init__(replica, role="relay", initiator=False, authorize=authorize, limits=limits)
        now = time.time() if now is None else now  # the simulated fleet passes its relay's clock
        self.started_at = now
        self.frames_in = self.frames_out = self.bytes_in = self.bytes_out = 0
        self._guard = guard
        self._on_traffic = on_traffic
        abuse = guard.limits
        self._frames = _bucket(abuse.frames_per_second, abuse.frame_burst, now)
        self._bytes = _bucket(abuse.bytes_per_second, abuse.byte_burst, now)
        #: The replica id whose connection slot this session holds (see :meth:`Guard.admit`).
        self.admitted: str | None = None

    def receive(self, data: bytes | str, now: float) -> None:
        """Count and check the frame, then feed it to the session."""
        if self.closed:
            return
        self.frames_in += 1
        self.bytes_in += len(data)
        if self._on_traffic is not None:
            self._on_traffic("bytes_in", len(data))
        refusal = self._over_limits(len(data), now)
        if refusal is not None:
            self.fail(refusal.code, refusal.message, refusal.retryable)
            return
        super().receive(data, now)

    def _over_limits(self, size: int, now: float) -> ErrorInfo | None:
        if self._frames is not None and not self._frames.take(1, now):
            return ErrorInfo(
                FRAME_RATE,
                "this connection sent more frames per second than this relay allows; it was closed to keep "
                "serving the others, and the device will retry later",
                True,
            )
        if self._bytes is not None and not self._bytes.take(size, now):
            return ErrorInfo(
                BYTE_RATE,
                "this connection sent more bytes per second than this relay allows; it was closed to keep "
                "serving the others, and the device will retry later",
                True,
            )
        if self.admitted is not None:
            return self._guard.received(self.admitted, size, now)
        return None

    def data_to_send(self, now: float) -> list[bytes]:
        """The frames to send, counted."""
        frames = super().data_to_send(now)
        if frames:
            size = sum(len(frame) for frame in frames)
            self.frames_out += len(frames)
            self.bytes_out += size
            if self._on_traffic is not None:
                self._on_traffic("bytes_out", size)
        return frames

    def ingested(self, event: Incoming | IncomingSnapshot, result: IngestResult) -> None:
        """As :meth:`Session.ingested`, counting the deltas stored."""
        before = self.received
        super().ingested(event, result)
        if self._on_traffic is not None and self.received > before:
            self._on_traffic("deltas_in", self.received - before)
