"""Plain HTTP on the relay's own port: ``/health`` and ``/metrics``.

The listener's ``process_request`` sees every request before its websocket
handshake: :class:`RelayHTTP` answers ``GET /health`` and ``GET /metrics``,
lets websocket upgrades through (on any path), and gives any other plain
request a short text answer saying what this port is, instead of
websockets' bare 426.

``/health`` is 200 when the relay can accept and store: a write of
:data:`PROBE_BYTES` to its log (at most every :data:`PROBE_EVERY` seconds)
succeeded, and the last commit that stored deltas did not fail with a
storage error (after one did, only a commit that stores again, or a probe
at least :data:`PROBE_EVERY` later, turns it back to 200). Otherwise 503, with the reason, so a load
balancer stops sending devices and an operator sees why (``storage_error``:
the disk is full or failing). Both answer JSON.

``/metrics`` is the Prometheus text format, from :class:`RelayMetrics`
(``prometheus-client``, a registry of its own per relay, so two relays in
one process do not mix), plus the process's memory and CPU from the
client's process collector.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from replica.errors import ReplicaError

#: Seconds between two write probes of ``/health`` (a probe costs one small commit).
PROBE_EVERY = 5.0
#: Bytes a probe writes (over the same key each time): room for a batch, not just a byte.
PROBE_BYTES = 64 * 1024
PROBE_SETTING = "relay.health_probe"
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Buckets of the commit latency histogram (seconds).
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class RelayMetrics:
    """The relay's counters and gauges. The gauges read their value when
    scraped, from the callables given."""

    def __init__(
        self,
        *,
        connections: Callable[[], float],
        links: Callable[[], float],
        documents_loaded: Callable[[], float],
        devices_recent: Callable[[], float],
    ) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: one line per figure is what dashboards read
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)  # process_resident_memory_bytes, cpu, open fds
        prefix = "replica_relay_"
        Gauge(prefix + "connections", "TCP connections open (websocket or not yet)", registry=registry).set_function(
            connections
        )
        Gauge(prefix + "links", "Sync links open (websocket sessions)", registry=registry).set_function(links)
        Gauge(prefix + "documents_loaded", "Documents loaded in memory", registry=registry).set_function(
            documents_loaded
        )
        Gauge(prefix + "devices_seen_24h", "Devices heard from in the last 24 hours", registry=registry).set_function(
            devices_recent
        )
        self.sessions = Counter(prefix + "sessions", "Sync sessions started (one per link)", registry=registry)
        self.handshakes = Counter(
            prefix + "handshakes", "Handshakes by outcome (accepted, refused)", ["outcome"], registry=registry
        )
        self.refusals = Counter(
            prefix + "refusals",
            "Sessions ended with an error, by code (handshakes refused, abuse limits, bad frames, storage)",
            ["code"],
            registry=registry,
        )
        self.outcomes = Counter(
            prefix + "syncs",
            "Finished sessions by outcome (synced, disconnected, refused, failed)",
            ["outcome"],
            registry=registry,
        )
        self.deltas_received = Counter(prefix + "deltas_received", "Deltas received and stored", registry=registry)
        self.deltas_sent = Counter(prefix + "deltas_sent", "Deltas sent and acknowledged by devices", registry=registry)
        self.bytes_received = Counter(prefix + "received_bytes", "Websocket message bytes received", registry=registry)
        self.bytes_sent = Counter(prefix + "sent_bytes", "Websocket message bytes sent", registry=registry)
        self.acks_received = Counter(
            prefix + "acks_received", "Acknowledgements received from devices", registry=registry
        )
        self.commits = Counter(
            prefix + "commits", "Group commits (one per event-loop turn with news)", registry=registry
        )
        self.commit_seconds = Histogram(
            prefix + "commit_seconds",
            "Time of one group commit: storing what the links received, then queueing acks",
            buckets=COMMIT_BUCKETS,
            registry=registry,
        )
        self.storage_failures = Counter(
            prefix + "storage_failures", "Commits or health probes that the disk refused", registry=registry
        )

    def traffic(self, what: str, amount: int) -> None:
        """A session's :data:`~replica.limits.TrafficHook`."""
        if what == "bytes_in":
            self.bytes_received.inc(amount)
        elif what == "bytes_out":
            self.bytes_sent.inc(amount)
        elif what == "deltas_in":
            self.deltas_received.inc(amount)

    def committed(self, links: int, seconds: float) -> None:
        """The listener's ``on_commit``."""
        self.commits.inc()
        self.commit_seconds.observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)


class Health:
    """Whether the relay can store: a write probe now and then, and the
    storage errors its commits met (see the module docstring)."""

    def __init__(self, probe: Callable[[str], None], on_failure: Callable[[], None] | None = None) -> None:
        self._probe = probe
        self._on_failure = on_failure
        self._checked_at = float("-inf")
        self.error: str | None = None  #: why it is unhealthy, or None

    def storage_failed(self, message: str, now: float | None = None) -> None:
        """A commit failed with a storage error: unhealthy until one stores
        again, or a probe succeeds at least :data:`PROBE_EVERY` later."""
        self.error = f"[storage_error] {message}"
        self._checked_at = time.monotonic() if now is None else now

    def stored(self) -> None:
        """A commit stored deltas: the disk takes writes."""
        self.error = None

    def check(self, now: float | None = None) -> str | None:
        """Probe if due; the reason the relay cannot store, or None."""
        when = time.monotonic() if now is None else now
        if when - self._checked_at < PROBE_EVERY:
            return self.error
        self._checked_at = when
        try:
            self._probe(str(time.time()).ljust(PROBE_BYTES))
        except ReplicaError as exc:
            self.error = f"[{exc.code}] {exc.message}"
            if self._on_failure is not None:
                self._on_failure()
        else:
            self.error = None
        return self.error


class RelayHTTP:
    """The relay's ``process_request``."""

    def __init__(self, metrics: RelayMetrics, health: Health, describe: Callable[[], dict[str, object]]) -> None:
        self.metrics = metrics
        self.health = health
        self._describe = describe

    def __call__(self, connection: object, request: Request) -> Response | None:
        if "websocket" in request.headers.get("Upgrade", "").lower():
            return None  # a device (or any websocket endpoint on this port): go on with the handshake
        path = request.path.split("?", 1)[0]
        if path == "/health":
            error = self.health.check()
            body = {"status": "ok" if error is None else "failing", "error": error, **self._describe()}
            return _answer(200 if error is None else 503, json.dumps(body) + "\n", "application/json")
        if path == "/metrics":
            return _answer(200, self.metrics.render(), METRICS_TYPE)
        text = (
            "This is a replica relay. Devices connect to it with a websocket (replica sync --relay URL); "
            "GET /health and GET /metrics answer plain HTTP.\n"
        )
        return _answer(404, text, "text/plain; charset=utf-8")


def _answer(status: int, body: str | bytes, content_type: str) -> Response:
    data = body.encode() if isinstance(body, str) else body
    reasons = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(data))), ("Connection", "close")])
    return Response(status, reasons[status], headers, data)
