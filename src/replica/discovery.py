"""Finding peers on the local network with mDNS/DNS-SD (``zeroconf``).

A device serving peers advertises a ``_replica-peer._tcp.local.`` service
whose TXT record names its replica id and the key id of the relay that vouches
for it; a browsing device lists the peers it sees, keeping only those of its
own relay. Advertising is a convenience, not trust: every peer is still
authenticated in the sync handshake (``replica.trust``).

The only module that imports ``zeroconf`` (the ``discovery`` extra). The
record format and the handling of what browsers receive are plain functions,
tested without a network; multicast itself is not exercised by the test
suite (test machines may send nothing but loopback traffic).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from replica.names import check_replica_id

SERVICE_TYPE = "_replica-peer._tcp.local."
_MAX_TXT = 255


@dataclass(frozen=True)
class DiscoveredPeer:
    """A device seen on the local network, to sync with by ``url``."""

    replica_id: str
    url: str
    relay_key_id: str | None


def service_info(replica_id: str, port: int, addresses: Iterable[str], relay_key_id: str | None) -> Any:
    """The zeroconf ``ServiceInfo`` a device advertises."""
    from zeroconf import ServiceInfo

    check_replica_id(replica_id)
    properties = {"id": replica_id, "v": "1"}
    if relay_key_id is not None:
        properties["relay"] = relay_key_id
    return ServiceInfo(
        SERVICE_TYPE,
        f"{replica_id}.{SERVICE_TYPE}",
        port=port,
        properties=properties,
        parsed_addresses=list(addresses),
        server=f"{replica_id}.local.",
    )


def peer_from_info(info: Any, *, relay_key_id: str | None = None) -> DiscoveredPeer | None:
    """A peer from a received service record, or None if the record is
    malformed, of another protocol version, or vouched for by another relay
    than ``relay_key_id`` (when given). Records come from anyone on the
    network: nothing here trusts them beyond listing them."""
    try:
        properties = {
            _text(key): _text(value)
            for key, value in (info.properties or {}).items()
            if key is not None and value is not None
        }
        replica_id = check_replica_id(properties.get("id"))
        port = int(info.port)
        addresses = [str(ipaddress.ip_address(a)) for a in info.parsed_addresses()]
    except (ValueError, TypeError, AttributeError, UnicodeDecodeError):
        return None
    if properties.get("v") != "1" or not 0 < port < 65536 or not addresses:
        return None
    relay = properties.get("relay")
    if relay_key_id is not None and relay != relay_key_id:
        return None
    host = addresses[0] if ":" not in addresses[0] else f"[{addresses[0]}]"
    return DiscoveredPeer(replica_id, f"ws://{host}:{port}", relay)


def _text(value: bytes | str) -> str:
    text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
    if len(text) > _MAX_TXT:
        raise ValueError("TXT entry too long")
    return text


def local_addresses() -> list[str]:
    """This host's IPv4 addresses other than loopback, best effort."""
    found = set()
    for family, _, _, _, sockaddr in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
        if family == socket.AF_INET and not str(sockaddr[0]).startswith("127."):
            found.add(str(sockaddr[0]))
    return sorted(found)


class Advertiser:
    """Advertises one peer server until stopped."""

    def __init__(self, info: Any) -> None:
        self.info = info
        self._zeroconf: Any = None

    async def start(self) -> None:
        from zeroconf.asyncio import AsyncZeroconf

        self._zeroconf = AsyncZeroconf()
        await self._zeroconf.async_register_service(self.info)

    async def stop(self) -> None:
        if self._zeroconf is not None:
            await self._zeroconf.async_unregister_service(self.info)
            await self._zeroconf.async_close()
            self._zeroconf = None


async def discover(*, timeout: float = 3.0, relay_key_id: str | None = None) -> list[DiscoveredPeer]:
    """Peers advertised on the local network within ``timeout`` seconds."""
    from zeroconf import ServiceStateChange
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

    found: dict[str, DiscoveredPeer] = {}
    pending: set[asyncio.Task[None]] = set()
    zeroconf = AsyncZeroconf()

    async def resolve(name: str) -> None:
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if await info.async_request(zeroconf.zeroconf, 1000):
            peer = peer_from_info(info, relay_key_id=relay_key_id)
            if peer is not None:
                found[peer.replica_id] = peer

    def on_change(zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
        if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
            task = asyncio.get_running_loop().create_task(resolve(name))
            pending.add(task)
            task.add_done_callback(pending.discard)

    browser = AsyncServiceBrowser(zeroconf.zeroconf, [SERVICE_TYPE], handlers=[on_change])
    try:
        await asyncio.sleep(timeout)
        if pending:
            await asyncio.wait(pending, timeout=1.5)
    finally:
        await browser.async_cancel()
        await zeroconf.async_close()
    return sorted(found.values(), key=lambda peer: peer.replica_id)
