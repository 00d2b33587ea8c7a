"""``replica ui`` and ``replica demo``: the Sync screen served on 127.0.0.1.

- :func:`ui`: one device's home screen (``replica.ui_device``) over its data
  directory, until Ctrl-C or SIGTERM;
- :func:`demo`: the relay, three devices and the field day they play
  (``replica.demo``), on one page, until Ctrl-C or SIGTERM.

Both print the page's URL once it listens, and a line when they stopped.
Mistakes (a data directory that holds no device, a taken port, a malformed
peer address) are :class:`~replica.errors.ReplicaError`\\ s with a code, which
``replica.cli`` prints as one line.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from replica import cli_input
from replica.replica import Replica
from replica.ui_screen import Target
from replica.ui_text import CATALOGS, Catalog

if TYPE_CHECKING:
    from replica.ui_http import WebServer

HOST = "127.0.0.1"
#: The screen's port when none is given.
PORT = 8780


def peer(text: str) -> Target:
    """``--peer [NAME=]ws://HOST:PORT``: a nearby device serving peers."""
    name, _, url = text.rpartition("=") if "=" in text.split("://", 1)[0] else ("", "", text)
    if not url.startswith(("ws://", "wss://")) or len(url.split("://", 1)[1]) == 0:
        raise cli_input.error("bad_peer_url", f"--peer {text!r}: give a device's address as [NAME=]ws://HOST:PORT")
    return Target(name or url, url)


def area(text: str) -> str:
    try:
        from replica.names import check_document_name

        return check_document_name(text)
    except ValueError as exc:
        raise cli_input.error("bad_area", f"--area {text!r}: {exc}") from None


def catalog(language: str) -> Catalog:
    try:
        return Catalog(language)
    except ValueError as exc:
        raise cli_input.error("bad_language", str(exc)) from None


async def listen(web: WebServer, port: int) -> None:
    try:
        await web.start()
    except OSError as exc:
        raise cli_input.listen_error(exc, HOST, port) from None


def ui(args: argparse.Namespace) -> int:
    """``replica ui``: serve one device's Sync screen."""
    from replica.ui_device import DEFAULT_AREA, Device  # the web stack loads only for the commands serving a page
    from replica.ui_http import WebServer, device_app

    path = cli_input.device_dir(args)
    credential = cli_input.read_credential(args.credential) if args.credential else None
    words = catalog(args.lang)
    tls = cli_input.client_tls(args)

    async def serve() -> None:
        stop = cli_input.stop_on_signals()
        with Replica.open(path, replica_id=args.replica_id) as replica:
            device = Device(
                replica,
                name=args.name,
                relay=args.relay,
                credential=credential,
                targets=args.peer or (),
                areas=args.area or [DEFAULT_AREA],
                catalog=words,
                timeout=args.timeout,
                tls=tls,
            )
            async with AsyncExitStack() as stack:
                stack.push_async_callback(device.close)
                if args.serve_peers is not None:
                    try:
                        server = await replica.serve_peers(args.peer_host, args.serve_peers)
                    except OSError as exc:
                        raise cli_input.listen_error(exc, args.peer_host, args.serve_peers) from None
                    stack.push_async_callback(server.stop)
                    print(f"Device {replica.id} serving peers on {server.url}", flush=True)
                web = WebServer(device_app(device, stop), host=HOST, port=args.port)
                await listen(web, args.port)
                stack.push_async_callback(web.stop)
                print(f"Sync screen of {replica.id} on {web.url}", flush=True)
                await stop.wait()
        print("Sync screen stopped.", flush=True)

    asyncio.run(serve())
    return 0


def demo(args: argparse.Namespace) -> int:
    """``replica demo``: the relay, the field devices and the field day, on one page."""
    from replica.demo import Demo
    from replica.ui_http import WebServer, demo_app

    words = catalog(args.lang)
    if args.data is not None:
        folder = Path(args.data)
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise cli_input.error(
                "data_dir_not_empty",
                f"{folder} is not empty; give the demo a new or empty directory (or no --data: a temporary one)",
            )

    async def serve(data: Path) -> None:
        stop = cli_input.stop_on_signals()
        field_day = Demo(data, step_delay=args.step_delay, catalog=words)
        field_day.announce = lambda line: print(line, flush=True)
        async with AsyncExitStack() as stack:
            stack.push_async_callback(field_day.close)
            try:
                await field_day.start()
            except OSError as exc:
                raise cli_input.error("demo_not_started", f"the demo could not start its relay: {exc}") from None
            web = WebServer(demo_app(field_day, stop), host=HOST, port=args.port)
            await listen(web, args.port)
            stack.push_async_callback(web.stop)
            print(f"Field day demo of relay {field_day.relay_id} on {web.url}", flush=True)
            print(f"Relay at {field_day.relay_url}; data in {data}. Ctrl-C stops it.", flush=True)
            if not args.manual:
                field_day.play()
            await stop.wait()
        print("Demo stopped.", flush=True)

    if args.data is not None:
        asyncio.run(serve(Path(args.data)))
    else:
        with tempfile.TemporaryDirectory(prefix="replica-demo-") as temporary:
            asyncio.run(serve(Path(temporary)))
    return 0


def add_options(ui_command: argparse.ArgumentParser, demo_command: argparse.ArgumentParser) -> None:
    """The options of ``replica ui`` (besides ``--data``/``--replica-id``) and of ``replica demo``."""
    languages = ", ".join(sorted(CATALOGS))
    ui_command.add_argument("--relay", metavar="URL", help="the relay, e.g. ws://127.0.0.1:8765")
    ui_command.add_argument(
        "--credential", metavar="FILE", help="file holding the credential (default: the last given)"
    )
    ui_command.add_argument("--port", type=cli_input.port, default=PORT, help="port of the page on 127.0.0.1")
    ui_command.add_argument("--ca", metavar="FILE", help=cli_input.CA_HELP)
    ui_command.add_argument(
        "--peer", type=peer, action="append", metavar="[NAME=]URL", help="a nearby device (repeatable)"
    )
    ui_command.add_argument("--serve-peers", type=cli_input.port, metavar="PORT", help="also serve peers on PORT")
    ui_command.add_argument("--peer-host", default="0.0.0.0", help="with --serve-peers: address to listen on")
    ui_command.add_argument("--area", type=area, action="append", metavar="DOC", help="a document the form writes to")
    ui_command.add_argument("--name", help="the device's name on the screen (default: its replica id)")
    ui_command.add_argument("--lang", default="en", help=f"language of the screen ({languages})")
    ui_command.add_argument(
        "--timeout", type=cli_input.seconds, default=30.0, help="seconds without an answer before a sync fails"
    )
    demo_command.add_argument("--data", metavar="DIR", help="a new or empty directory (default: a temporary one)")
    demo_command.add_argument("--port", type=cli_input.port, default=PORT, help="port of the page on 127.0.0.1")
    demo_command.add_argument("--lang", default="en", help=f"language of the screens ({languages})")
    demo_command.add_argument(
        "--step-delay", type=cli_input.seconds, default=2.5, help="seconds between two steps of the field day"
    )
    demo_command.add_argument("--manual", action="store_true", help="do not play the field day: drive it by hand")
