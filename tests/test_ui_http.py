"""The Sync screen's server without a browser: real ``replica ui`` and
``replica demo`` processes on 127.0.0.1, spoken to over HTTP.

1. ``GET /screen`` and the server-sent events of ``GET /events``: a record
   saved by a POST reaches an open stream, pushed (the stream is read with a
   deadline; nothing polls or sleeps).
2. Every bad request gets a 4xx with ``{"error": {code, message,
   retryable}}`` and a stable code, never a traceback: bad JSON, no JSON
   content type, another origin, another host, a form filled in wrong, an
   unknown peer, a sync with no relay, an unknown path or method, a body too
   large.
3. The commands' own mistakes are one line with a code (``replica.cli``).
4. ``replica demo --manual``: a step played by hand, the relay stopped from
   the page, an unknown device refused; SIGTERM stops it cleanly.
"""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from replica import Replica
from ui_process import CLI, DemoProcess, UIProcess

TIMEOUT = 30.0


def request(
    url: str, body: bytes | None = None, *, method: str = "POST", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """The status and JSON answer of one request (errors included)."""
    sent = {"Content-Type": "application/json"} if body is not None else {}
    call = urllib.request.Request(url, data=body, headers={**sent, **(headers or {})}, method=method)
    try:
        with urllib.request.urlopen(call, timeout=TIMEOUT) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as exc:
        text = exc.read().decode()
        assert "Traceback" not in text
        return exc.code, json.loads(text)


def post(url: str, value: object) -> tuple[int, dict[str, Any]]:
    return request(url, json.dumps(value).encode())


def events(url: str) -> Iterator[dict[str, Any]]:
    """The values a server-sent events stream pushes, read with a deadline."""
    with urllib.request.urlopen(url, timeout=TIMEOUT) as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        for raw in stream:
            line = raw.decode().rstrip("\n")
            if line.startswith("data: "):
                yield json.loads(line[len("data: ") :])


@pytest.fixture(scope="module")
def screen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UIProcess]:
    """One screen for the module's tests (none of them changes what another checks)."""
    folder = tmp_path_factory.mktemp("screen")
    with Replica.open(folder / "tablet", replica_id="tablet-7"):
        pass
    with UIProcess(folder / "tablet", "--peer", "Chidi=ws://127.0.0.1:9") as ui:
        yield ui
        ui.terminate()


def test_the_screen_and_its_pushed_updates(screen: UIProcess) -> None:
    status, now = request(screen.url + "screen", method="GET")
    assert status == 200
    assert now["device"]["replica_id"] == "tablet-7"
    assert now["card"]["title"] == "Data unsynced"
    assert now["peers"][0]["button"] == "Sync with Chidi"
    stream = events(screen.url + "events")
    count = next(stream)["card"]["count"]
    status, saved = post(screen.url + "records", {"kind": "household", "name": "Hauwa Musa", "number": 5})
    assert status == 200 and saved["message"] == "Saved: Household Hauwa Musa"
    assert next(stream)["card"]["count"] == count + 1
    stream.close()


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "code"),
    [
        ("records", b"{not json", None, 400, "bad_json"),
        ("records", b"[1, 2]", None, 400, "bad_json"),
        ("records", b'{"name": "x"}', {"Content-Type": "text/plain"}, 415, "bad_content_type"),
        ("sync", b"{}", {"Origin": "http://evil.example"}, 403, "cross_origin"),
        ("screen", None, {"Host": "evil.example"}, 421, "bad_host"),
        ("records", b'{"name": ""}', None, 422, "bad_record"),
        ("records", b'{"name": "x", "number": -1}', None, 422, "bad_record"),
        ("records", b'{"name": "x", "kind": "cow"}', None, 422, "bad_record"),
        ("records", b'{"name": "x", "area": "campaign-9/x"}', None, 422, "bad_record"),
        ("peers/sync", b'{"url": "ws://127.0.0.1:1"}', None, 404, "unknown_peer"),
        ("peers/sync", b'{"url": "http://x"}', None, 422, "bad_peer_url"),
        ("peers", b'{"url": "ws://a b"}', None, 422, "bad_peer_url"),
        ("sync", b"{}", None, 409, "no_relay"),
        ("live", b'{"on": "yes"}', None, 400, "bad_request"),
        ("nothing/here", None, None, 404, "not_found"),
        ("records", b" " * (65 * 1024), None, 413, "too_large"),
    ],
)
def test_bad_requests_get_a_4xx_with_a_stable_code(
    screen: UIProcess, path: str, body: bytes | None, headers: dict[str, str] | None, status: int, code: str
) -> None:
    got, answer = request(screen.url + path, body, method="GET" if body is None else "POST", headers=headers)
    assert (got, answer["error"]["code"]) == (status, code)
    assert answer["error"]["message"] and answer["error"]["retryable"] is False


def test_a_get_on_a_button_is_405(screen: UIProcess) -> None:
    got, answer = request(screen.url + "sync", method="GET")
    assert (got, answer["error"]["code"]) == (405, "method_not_allowed")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=TIMEOUT, check=False)


def test_the_commands_mistakes_are_one_line_with_a_code(tmp_path: Path) -> None:
    with Replica.open(tmp_path / "tablet", replica_id="tablet-7"):
        pass
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        cases = [
            (["ui", "--data", str(tmp_path / "nowhere")], "no_data_dir"),
            (["ui", "--data", str(tmp_path / "tablet"), "--port", port], "port_in_use"),
            (["ui", "--data", str(tmp_path / "tablet"), "--peer", "tablet"], "bad_peer_url"),
            (["ui", "--data", str(tmp_path / "tablet"), "--lang", "xx"], "bad_language"),
            (["ui", "--data", str(tmp_path / "tablet"), "--area", "bad name"], "bad_area"),
            (["demo", "--data", str(tmp_path / "full")], "data_dir_not_empty"),
            (["demo", "--step-delay", "-1"], "bad_timeout"),
            (["demo", "--port", port], "port_in_use"),
        ]
        for args, code in cases:
            done = cli(*args)
            assert done.returncode == 2, (args, done.stderr)
            assert done.stderr.startswith(f"Error [{code}]: "), (args, done.stderr)
            assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1


def test_demo_driven_by_hand(tmp_path: Path) -> None:
    with DemoProcess(tmp_path / "demo", "--manual") as demo:
        status, view = request(demo.url + "demo/view", method="GET")
        assert status == 200 and view["relay"]["up"] and len(view["steps"]) == 9
        assert [device["key"] for device in view["devices"]] == ["amina", "bello", "chidi"]
        status, screen = request(demo.url + "devices/amina/screen", method="GET")
        assert status == 200 and screen["device"]["replica_id"] == "worker-amina"
        stream = events(demo.url + "demo/events")
        assert post(demo.url + "demo/step", {})[0] == 200
        done = next(v for v in stream if v["steps"][0]["state"] == "done" and not v["playing"])
        assert all(device["headline"] == "synced" for device in done["devices"])
        assert post(demo.url + "demo/relay", {"up": False})[0] == 200
        assert not next(v for v in stream if not v["relay"]["up"])["relay"]["up"]
        got, answer = post(demo.url + "demo/credential", {"device": "nobody"})
        assert (got, answer["error"]["code"]) == (404, "unknown_device")
        got, answer = post(demo.url + "devices/bello/sync", {})
        assert got == 200
        stream.close()
        demo.terminate()
    assert "Step 1/9 Morning login: Amina: Data Synced, Bello: Data Synced, Chidi: Data Synced" in demo.output


def until(stream: Iterator[dict[str, Any]], check: Any) -> dict[str, Any]:
    """The first pushed screen for which ``check(screen)`` holds (the stream's deadline applies)."""
    return next(value for value in stream if check(value))


def test_login_peer_sync_and_live_mode_through_the_screens(tmp_path: Path) -> None:
    """Two devices' screens and a relay: the morning login syncs both; B
    syncs with A (served by A's `replica ui --serve-peers`): A's count rises,
    B's stays; live mode on B then carries B's record to the relay, and
    "Sync Data" is refused meanwhile (the live sync already syncs)."""
    from relay_process import RelayProcess

    with RelayProcess(tmp_path / "relay") as relay:
        options = {}
        for name in ("dev-a", "dev-b"):
            with Replica.open(tmp_path / name, replica_id=name):
                pass
            (tmp_path / f"{name}.cred").write_text(relay.issue(name, ["campaign-7/*"]) + "\n")
            options[name] = ["--relay", relay.url, "--credential", str(tmp_path / f"{name}.cred")]
        serving = [*options["dev-a"], "--serve-peers", "0", "--peer-host", "127.0.0.1"]
        with UIProcess(tmp_path / "dev-a", *serving) as a:
            served = next(line for line in a.output if "serving peers on" in line).rsplit(" ", 1)[1]
            with UIProcess(tmp_path / "dev-b", *options["dev-b"], "--peer", f"A={served}") as b:
                a_events, b_events = events(a.url + "events"), events(b.url + "events")
                for url, stream in ((a.url, a_events), (b.url, b_events)):
                    assert post(url + "login", {"name": "Amina"})[0] == 200
                    shown = until(stream, lambda s: s["popup"] is not None)
                    assert shown["popup"]["title"] == "Data Synced" and shown["login"]["line"] == "Logged in: Amina"
                    assert post(url + "popup/close", {})[0] == 200  # so the next popup is the next sync's
                    until(stream, lambda s: s["popup"] is None)
                post(b.url + "records", {"name": "Zainab Ali"})
                assert until(b_events, lambda s: s["card"]["count"] == 1)["card"]["title"] == "Data unsynced"

                assert post(b.url + "peers/sync", {"url": served})[0] == 200
                shown = until(b_events, lambda s: s["popup"] is not None and s["overlay"] is None)
                assert shown["popup"]["title"] == "Synced with A"
                assert shown["card"]["count"] == 1  # only the relay's acknowledgement lowers it
                assert shown["peers"][0]["peer_id"] == "dev-a"
                assert until(a_events, lambda s: s["card"]["count"] == 1)["peers"][0]["peer_id"] == "dev-b"

                assert post(b.url + "live", {"on": True})[0] == 200
                shown = until(b_events, lambda s: s["card"]["count"] == 0)
                assert shown["live"]["on"] and not shown["sync"]["enabled"]
                status, answer = post(b.url + "sync", {})
                assert (status, answer["error"]["code"]) == (409, "live_on")
                assert post(b.url + "live", {"on": False})[0] == 200
                assert not until(b_events, lambda s: not s["live"]["on"])["sync"]["note"]
                b.terminate()
            a.terminate()


def test_a_screen_syncs_over_wss_with_the_campaign_ca_and_says_why_not_without(tmp_path: Path) -> None:
    """``replica ui --ca``: the screen reaches a TLS relay; without the CA
    the popup names the untrusted certificate and offers no Retry."""
    from relay_process import RelayProcess
    from tls_certs import make_pki

    pki = make_pki(tmp_path / "pki")
    with RelayProcess(tmp_path / "relay", "--tls-cert", str(pki.cert), "--tls-key", str(pki.key)) as relay:
        assert relay.url.startswith("wss://")
        (tmp_path / "dev.cred").write_text(relay.issue("dev-a", ["campaign-7/*"]) + "\n")
        with Replica.open(tmp_path / "dev-a", replica_id="dev-a"):
            pass
        relay_options = ["--relay", relay.url, "--credential", str(tmp_path / "dev.cred")]
        for extra, expected in ((["--ca", str(pki.ca)], "synced"), ([], "failed")):
            with UIProcess(tmp_path / "dev-a", *relay_options, *extra) as ui:
                stream = events(ui.url + "events")
                assert post(ui.url + "sync", {})[0] == 200
                popup = until(stream, lambda s: s["popup"] is not None)["popup"]
                assert popup["kind"] == expected, popup
                if expected == "failed":
                    assert popup["error_code"] == "tls_untrusted" and popup["retry"] is None, popup
                ui.terminate()
