"""The Sync screen's web edge: HTTP routes, server-sent events, the server.

The only module that imports the web stack (Starlette for routes, uvicorn to
serve them). :func:`device_app` serves one device's screen
(``replica.ui_device.Device``); :func:`demo_app` serves ``replica demo``'s
page, every device's screen under ``/devices/<replica id>/`` and the demo's
controls. :class:`WebServer` runs an app inside the running event loop, on a
socket bound by the caller's choice of port, and stops it cleanly.

A device's routes (relative to where it is mounted):

=================  ======================================================
``GET /``          the page (HTML, CSS and JS from ``ui_static``, no build)
``GET /screen``    the screen now (JSON, see ``replica.ui_screen``)
``GET /events``    server-sent events: each new screen, pushed (no polling)
``POST /sync``     "Sync Data" and Retry;  ``POST /login``, ``/logout``
``POST /live``     ``{"on": bool}``;  ``POST /popup/close``
``POST /peers``    ``{"name", "url"}`` adds a nearby device
``POST /peers/sync``  ``{"url"}``;  ``POST /discover`` (mDNS, if installed)
``POST /records``  ``{"kind", "area", "name", "number"}``
=================  ======================================================

Every answer that is not a success is JSON ``{"error": {"code", "message",
"retryable"}}`` with a 4xx status (5xx for a fault of the server, logged with
its traceback, which the answer never holds). The server answers only
requests addressed to 127.0.0.1 or localhost (so a web page elsewhere cannot
reach it by DNS rebinding), and a ``POST`` only as JSON from its own origin
(so another site cannot press its buttons).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from importlib import resources
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from replica.demo import Demo
from replica.errors import ReplicaError
from replica.ui_device import Device

log = logging.getLogger("replica.ui_http")

#: Largest request body accepted (a form, a URL).
MAX_BODY = 64 * 1024
#: HTTP status of each error code an action can answer (400 for the others).
STATUS_OF = {
    "not_found": 404,
    "unknown_peer": 404,
    "unknown_device": 404,
    "method_not_allowed": 405,
    "no_relay": 409,
    "live_on": 409,
    "sync_running": 409,
    "step_running": 409,
    "day_over": 409,
    "relay_down": 409,
    "too_large": 413,
    "bad_content_type": 415,
    "bad_record": 422,
    "bad_peer_url": 422,
    "cross_origin": 403,
    "bad_host": 421,
    "discovery_not_installed": 501,
}
LOCAL_HOSTS = ("127.0.0.1", "localhost")

Handler = Callable[[Request], Awaitable[Response]]


def error_response(code: str, message: str, *, retryable: bool = False, status: int | None = None) -> JSONResponse:
    """The one shape of every error the server answers."""
    body = {"error": {"code": code, "message": message, "retryable": retryable}}
    return JSONResponse(body, status_code=status or STATUS_OF.get(code, 400))


def page(name: str) -> Response:
    """A file of the page, from the package's ``ui_static`` folder."""
    folder = resources.files("replica") / "ui_static"
    kinds = {"html": "text/html; charset=utf-8", "css": "text/css", "js": "text/javascript"}
    text = (folder / name).read_text(encoding="utf-8")
    return Response(text, media_type=kinds[name.rsplit(".", 1)[1]], headers={"Cache-Control": "no-store"})


def pages(home: str, *assets: str) -> list[BaseRoute]:
    """``/``: the page ``home``; ``/static/NAME``: its ``assets``."""

    async def show_home(request: Request) -> Response:
        return page(home)

    async def show_asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in assets:
            raise HTTPException(404)
        return page(name)

    return [Route("/", show_home), Route("/static/{name}", show_asset)]


async def body_of(request: Request) -> dict[str, Any]:
    """The JSON object a POST carries (an empty body is ``{}``)."""
    chunks, size = [], 0
    async for chunk in request.stream():  # read no further than the limit
        size += len(chunk)
        if size > MAX_BODY:
            raise ReplicaError(f"the request is larger than {MAX_BODY} bytes", code="too_large")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ReplicaError("the request body is not JSON", code="bad_json") from None
    if not isinstance(value, dict):
        raise ReplicaError("the request body must be a JSON object", code="bad_json")
    return value


def pushed(
    now: str,
    stream: str,
    current: Callable[[], Mapping[str, Any]],
    values: Callable[[], AsyncIterator[Mapping[str, Any]]],
) -> list[BaseRoute]:
    """``GET now``: ``current()`` as JSON; ``GET stream``: server-sent events,
    one ``data:`` line of JSON for each of ``values()`` (a new iterator per viewer)."""

    async def show(request: Request) -> Response:
        return JSONResponse(current())

    async def push(request: Request) -> Response:
        async def lines() -> AsyncIterator[str]:
            async for value in values():
                yield f"data: {json.dumps(value)}\n\n"

        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(lines(), media_type="text/event-stream", headers=headers)

    return [Route(now, show), Route(stream, push)]


def action(run: Callable[[dict[str, Any]], Awaitable[object]]) -> Handler:
    """A POST route that does ``run(body)`` and answers what it returned (or ``{"ok": true}``)."""

    async def handle(request: Request) -> Response:
        result = await run(await body_of(request))
        return JSONResponse({"ok": True} if result is None else result)

    return handle


def flag(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name)
    if not isinstance(value, bool):
        raise ReplicaError(f"{name!r} must be true or false", code="bad_request")
    return value


def text(body: Mapping[str, Any], name: str, *, most: int = 500) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= most:
        raise ReplicaError(f"{name!r} must be a text of 1 to {most} characters", code="bad_request")
    return value


def peer_url(body: Mapping[str, Any]) -> str:
    url = body.get("url")
    if not isinstance(url, str) or not url.startswith(("ws://", "wss://")) or len(url) > 500 or " " in url:
        raise ReplicaError("the device's address must look like ws://HOST:PORT", code="bad_peer_url")
    return url


# -- one device ----------------------------------------------------------------


def device_routes(device: Device, stop: asyncio.Event) -> list[BaseRoute]:
    """The routes of one device's screen."""

    async def sync(body: dict[str, Any]) -> None:
        device.start_sync()

    async def login(body: dict[str, Any]) -> None:
        who = body.get("name")
        device.log_in(text(body, "name", most=100) if who is not None else None)

    async def logout(body: dict[str, Any]) -> None:
        device.log_out()

    async def live(body: dict[str, Any]) -> None:
        await device.set_live(flag(body, "on"))

    async def close_popup(body: dict[str, Any]) -> None:
        device.close_popup()

    async def add_peer(body: dict[str, Any]) -> None:
        url = peer_url(body)
        device.add_target(text(body, "name", most=100) if body.get("name") else url, url)

    async def sync_peer(body: dict[str, Any]) -> None:
        device.start_peer_sync(peer_url(body))

    async def discover(body: dict[str, Any]) -> dict[str, Any]:
        return {"found": await device.discover()}

    async def save(body: dict[str, Any]) -> dict[str, str]:
        return device.save(body)

    posts: dict[str, Callable[[dict[str, Any]], Awaitable[object]]] = {
        "/sync": sync,
        "/login": login,
        "/logout": logout,
        "/live": live,
        "/popup/close": close_popup,
        "/peers": add_peer,
        "/peers/sync": sync_peer,
        "/discover": discover,
        "/records": save,
    }
    return [
        *pages("screen.html", "screen.css", "screen.js"),
        *pushed("/screen", "/events", device.screen, lambda: device.screens(stop)),
        *(Route(path, action(run), methods=["POST"]) for path, run in posts.items()),
    ]


def device_app(device: Device, stop: asyncio.Event) -> ASGIApp:
    """``replica ui``: one device's screen at ``/``."""
    return guarded(Starlette(routes=device_routes(device, stop), exception_handlers=HANDLERS))


# -- the demo --------------------------------------------------------------------


def demo_app(demo: Demo, stop: asyncio.Event) -> ASGIApp:
    """``replica demo``: the page with every device's screen and the relay's view."""

    async def step(body: dict[str, Any]) -> None:
        demo.next_step()

    async def play(body: dict[str, Any]) -> None:
        demo.play()

    async def relay(body: dict[str, Any]) -> None:
        await demo.set_relay(flag(body, "up"))

    async def widen(body: dict[str, Any]) -> None:
        demo.widen(text(body, "device", most=100))

    routes: list[BaseRoute] = [
        *pages("demo.html", "demo.css", "demo.js"),
        *pushed("/demo/view", "/demo/events", demo.view, lambda: demo.views(stop)),
        Route("/demo/step", action(step), methods=["POST"]),
        Route("/demo/play", action(play), methods=["POST"]),
        Route("/demo/relay", action(relay), methods=["POST"]),
        Route("/demo/credential", action(widen), methods=["POST"]),
    ]
    routes += [Mount(f"/devices/{key}", routes=device_routes(device, stop)) for key, device in demo.devices.items()]
    return guarded(Starlette(routes=routes, exception_handlers=HANDLERS))


# -- errors and the guard ----------------------------------------------------------


async def on_replica_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ReplicaError)
    return error_response(exc.code, exc.message, retryable=exc.retryable)


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response("not_found", f"nothing at {request.url.path}")
    if exc.status_code == 405:
        return error_response("method_not_allowed", f"{request.method} is not allowed on {request.url.path}")
    return error_response("bad_request", str(exc.detail), status=exc.status_code)


async def on_fault(request: Request, exc: Exception) -> Response:
    # Starlette raises the exception on after this answer, and uvicorn logs it with its traceback.
    message = "the device's screen server failed; it is logged. Try again, or restart `replica ui`"
    return error_response("internal_error", message, retryable=True, status=500)


HANDLERS: Mapping[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
    ReplicaError: on_replica_error,
    HTTPException: on_http_error,
    Exception: on_fault,
}


def guarded(app: ASGIApp) -> ASGIApp:
    """``app``, answering only local requests, and POSTs only as JSON from its own origin."""

    async def guard(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]}
        host = headers.get("host", "")
        refusal = None
        if host.rsplit(":", 1)[0] not in LOCAL_HOSTS:
            refusal = error_response("bad_host", "this screen answers only at 127.0.0.1 or localhost")
        elif scope["method"] == "POST":
            origin = headers.get("origin")
            if origin is not None and origin != f"http://{host}":
                refusal = error_response("cross_origin", "buttons of this screen can only be pressed on its own page")
            elif headers.get("content-type", "").split(";")[0].strip() != "application/json":
                refusal = error_response(
                    "bad_content_type", "send the request as JSON (Content-Type: application/json)"
                )
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await app(scope, receive, send)

    return guard


# -- the server ----------------------------------------------------------------------


class WebServer:
    """An ASGI app served by uvicorn on 127.0.0.1 inside the running loop."""

    def __init__(self, app: ASGIApp, *, host: str = "127.0.0.1", port: int = 8780) -> None:
        self.host = host
        self.port = port
        config = uvicorn.Config(app, host=host, port=port, log_config=None, lifespan="off", access_log=False)
        config.timeout_graceful_shutdown = 5
        self._server = uvicorn.Server(config)
        self._socket: socket.socket | None = None
        self._ticks: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT/`` of the running server."""
        if self._socket is None:
            raise RuntimeError("the server is not running")
        return f"http://{self.host}:{self._socket.getsockname()[1]}/"

    async def start(self) -> None:
        """Listen (an ``OSError`` if the port is taken) and serve."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self._socket = sock
        config = self._server.config
        config.load()
        self._server.lifespan = config.lifespan_class(config)
        await self._server.startup(sockets=[sock])
        # uvicorn's own loop (its Date header, its limits), without its signal handlers: the caller has them.
        self._ticks = asyncio.get_running_loop().create_task(self._server.main_loop())

    async def stop(self) -> None:
        """Stop accepting, finish the requests in flight, close the socket.
        Streams of events must have ended first (their ``stop`` set)."""
        if self._socket is None:
            return
        self._server.should_exit = True
        if self._ticks is not None:
            await self._ticks
        await self._server.shutdown(sockets=[self._socket])
        self._socket.close()
        self._socket = None
