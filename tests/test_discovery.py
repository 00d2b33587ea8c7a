"""mDNS records and the browser's handling of them (no multicast is sent)."""

from __future__ import annotations

import pytest
from zeroconf import ServiceInfo

from replica.discovery import SERVICE_TYPE, DiscoveredPeer, peer_from_info, service_info


def test_advertised_record_round_trips() -> None:
    info = service_info("tablet-7", 8766, ["192.0.2.10"], "0123456789abcdef")
    assert info.type == SERVICE_TYPE and info.port == 8766
    assert info.properties[b"id"] == b"tablet-7" and info.properties[b"relay"] == b"0123456789abcdef"
    assert peer_from_info(info) == DiscoveredPeer("tablet-7", "ws://192.0.2.10:8766", "0123456789abcdef")
    assert peer_from_info(info, relay_key_id="0123456789abcdef") is not None


def test_ipv6_addresses_are_bracketed() -> None:
    peer = peer_from_info(service_info("tablet-7", 8766, ["fd00::5"], None))
    assert peer is not None and peer.url == "ws://[fd00::5]:8766"


def test_peers_of_another_relay_are_ignored() -> None:
    info = service_info("tablet-7", 8766, ["192.0.2.10"], "aaaaaaaaaaaaaaaa")
    assert peer_from_info(info, relay_key_id="bbbbbbbbbbbbbbbb") is None


def record(properties: dict[bytes, bytes | None], port: int = 8766, addresses: list[str] | None = None) -> ServiceInfo:
    return ServiceInfo(
        SERVICE_TYPE,
        f"x.{SERVICE_TYPE}",
        port=port,
        properties=properties,
        parsed_addresses=["192.0.2.10"] if addresses is None else addresses,
    )


@pytest.mark.parametrize(
    "info",
    [
        record({b"v": b"1"}),
        record({b"id": b"bad id", b"v": b"1"}),
        record({b"id": b"tablet-7", b"v": b"2"}),
        record({b"id": b"tablet-7"}),
        record({b"id": b"\xff\xfe", b"v": b"1"}),
        record({b"id": b"x" * 250, b"v": b"1"}),
        record({b"id": b"tablet-7", b"v": b"1"}, port=0),
        record({b"id": b"tablet-7", b"v": b"1"}, addresses=[]),
        record({b"id": None, b"v": b"1"}),
    ],
)
def test_malformed_records_are_ignored(info: ServiceInfo) -> None:
    assert peer_from_info(info) is None
