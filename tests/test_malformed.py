"""Malformed input against a running relay process: mutated frames taken from
a real session, then hypothesis-drawn frames. The relay stays up, its memory
stays bounded, nothing bad is stored, and a legitimate device syncing
afterwards gets exact data. The default run sends 3,000 mutated frames; the
slow one (``--runslow``) 100,000."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from malformed_campaign import Campaign, attack, mutations, record_session
from relay_process import CLI, RelayProcess
from replica import Replica
from replica.status import SyncState
from test_relay_http import get, metric

#: The campaign tests the parser and the session, not the abuse limits (tests/test_limits.py does).
NO_LIMITS = ("--max-frames-per-second", "0", "--max-mb-per-second", "0", "--max-connections-per-device", "0")


def _source(folder: Path) -> Replica:
    replica = Replica.open(folder, replica_id="tablet-1")
    rows = replica.doc("c7/households").records("households")
    for number in range(40):
        rows.put(f"h{number}", {"name": f"household {number}", "members": number % 7})
    replica.doc("c7/notes").text("day").insert(0, "rain in the afternoon")
    return replica


def _rss(relay: RelayProcess) -> float:
    return metric(get(relay.url.replace("ws://", "http://") + "/metrics")[2], "process_resident_memory_bytes")


def _check_after(relay: RelayProcess, tmp_path: Path, source: dict[str, Any], reader_token: str) -> None:
    """The relay is up and healthy; a fresh device gets exactly the source's data."""
    assert relay.running
    assert get(relay.url.replace("ws://", "http://") + "/health")[0] == 200

    async def read() -> dict[str, Any]:
        with Replica.open(tmp_path / "reader", replica_id="phone-1") as reader:
            status = await reader.sync(relay.url, credential=reader_token, timeout=20)
            assert status.state is SyncState.SYNCED, status.error
            assert sorted(reader.documents()) == ["c7/households", "c7/notes"]
            return _contents(reader)

    assert asyncio.run(read()) == source


def _contents(replica: Replica) -> dict[str, Any]:
    return {
        "households": dict(replica.doc("c7/households").records("households").items()),
        "notes": str(replica.doc("c7/notes").text("day")),
    }


def _version_vectors(replica: Replica) -> dict[str, dict[str, int]]:
    return {name: replica.version_vector(name) for name in replica.documents()}


def _run_campaign(tmp_path: Path, count: int) -> Campaign:
    with RelayProcess(tmp_path / "relay", *NO_LIMITS) as relay:
        token, reader_token = relay.issue("tablet-1", ["c7/*"]), relay.issue("phone-1", ["c7/*"])
        with _source(tmp_path / "tablet") as device:

            async def sync(url: str) -> None:
                status = await device.sync(url, credential=token, timeout=20)
                assert status.state is SyncState.SYNCED, status.error

            frames = asyncio.run(record_session(relay.url, sync))
            source, source_vv = _contents(device), _version_vectors(device)
        assert [msgpack.unpackb(f)["t"] for f in frames[:2]] == ["hello", "deltas"], frames[:2]
        rss_before = _rss(relay)
        campaign = asyncio.run(attack(relay.url, frames, mutations(frames, count), workers=16))
        rss_after = _rss(relay)
        print(
            f"malformed campaign: {campaign.sent} mutated frames from {len(frames)} recorded; by kind "
            f"{dict(campaign.kinds)}; relay errors {dict(campaign.errors.most_common())}; no error (harmless) "
            f"{campaign.accepted}; RSS {rss_before / 1e6:.1f} -> {rss_after / 1e6:.1f} MB"
        )
        assert campaign.sent == count and campaign.refused_connections == 0
        assert rss_after - rss_before < 64e6, (rss_before, rss_after)
        _check_after(relay, tmp_path, source, reader_token)
        relay.terminate()
    phantoms = _check_stored(tmp_path / "relay", source, source_vv)
    assert phantoms == {}, f"deltas stored under an origin no device has (a flipped origin): {phantoms}"
    return campaign


def _check_stored(relay_dir: Path, source: dict[str, Any], source_vv: dict[str, dict[str, int]]) -> dict[str, int]:
    """What the relay stored: the source's documents, every delta of the
    source, and the source's content exactly. Returns the deltas stored
    under origins that no device has, by origin: a frame whose origin was
    altered in transit fails its checksum (it covers the origin), so none."""
    with Replica.open(relay_dir, readonly=True) as stored:
        assert sorted(stored.documents()) == ["c7/households", "c7/notes"]
        assert _contents(stored) == source
        phantoms: dict[str, int] = {}
        for name, vv in _version_vectors(stored).items():
            for origin, seq in vv.items():
                if origin in source_vv[name]:
                    assert seq == source_vv[name][origin], (name, origin, seq)
                else:
                    phantoms[origin] = phantoms.get(origin, 0) + seq
        return phantoms


def test_a_delta_whose_origin_was_altered_is_not_stored(tmp_path: Path) -> None:
    """Its checksum covers its origin: the relay refuses it (``delta_checksum``)
    instead of storing a copy of the bytes under a phantom origin."""
    with RelayProcess(tmp_path / "relay") as relay:
        token = relay.issue("tablet-1", ["c7/*"])
        with _source(tmp_path / "tablet") as device:

            async def sync(url: str) -> None:
                await device.sync(url, credential=token, timeout=20)

            hello, deltas, *_ = asyncio.run(record_session(relay.url, sync))
        body = msgpack.unpackb(deltas, raw=False)
        body["o"] = ["phantom-" + origin for origin in body["o"]]
        altered = msgpack.packb(body, use_bin_type=True)
        campaign = asyncio.run(attack(relay.url, [hello, altered], iter([("origin", 1, altered)]), workers=1))
        relay.terminate()
    with Replica.open(tmp_path / "relay", readonly=True) as stored:
        origins = {origin for name in stored.documents() for origin in stored.version_vector(name)}
    assert origins == {"tablet-1"}, origins
    assert dict(campaign.errors) == {"delta_checksum": 1}, campaign


def test_a_campaign_of_mutated_frames(tmp_path: Path) -> None:
    campaign = _run_campaign(tmp_path, 3_000)
    assert set(campaign.kinds) == {"flip", "truncate", "append", "fields", "huge", "nest", "order"}
    assert campaign.errors["bad_frame"] > 0


@pytest.mark.slow
def test_a_campaign_of_100k_mutated_frames(tmp_path: Path) -> None:
    _run_campaign(tmp_path, 100_000)


# -- hypothesis-drawn frames -----------------------------------------------------

_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=40)
    | st.binary(max_size=64)
)
_values = st.recursive(
    _leaves,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)
_frames = st.fixed_dictionaries(
    {
        "t": st.sampled_from(
            ["hello", "welcome", "deltas", "snap", "ack", "done", "open", "opened", "error", "proof", "x"]
        )
    },
    optional={"v": _values, "doc": _values, "vv": _values, "d": _values, "o": _values, "id": _values, "cred": _values},
)


@pytest.fixture(scope="module")
def running_relay(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("hypothesis-relay")
    with RelayProcess(folder / "relay", *NO_LIMITS) as relay:
        yield relay


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frame=_frames, raw=st.booleans())
def test_hypothesis_frames_never_bring_the_relay_down(
    running_relay: RelayProcess, frame: dict[str, Any], raw: bool
) -> None:
    data = msgpack.packb(frame, use_bin_type=True)
    if raw:
        data = data[: len(data) // 2]

    async def send() -> None:
        async with connect(running_relay.url, max_size=None) as ws:
            await ws.send(data)
            try:
                async with asyncio.timeout(5):
                    answer = msgpack.unpackb(await ws.recv(decode=False), raw=False)
            except ConnectionClosed:
                return
            assert answer["t"] == "error" and answer["code"], answer  # never a welcome to junk

    asyncio.run(send())
    assert running_relay.running


def test_the_relay_is_healthy_after_hypothesis(running_relay: RelayProcess) -> None:
    """After the drawn frames (same module relay), it still serves a device exactly."""
    done = subprocess.run(
        [*CLI, "relay", "devices", "--data", str(running_relay.data), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and json.loads(done.stdout)["devices"] == []  # junk never becomes a device
    assert get(running_relay.url.replace("ws://", "http://") + "/health")[0] == 200
