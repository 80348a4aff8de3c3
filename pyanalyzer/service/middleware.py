"""The service's error answers (one line of JSON; a 500 with a request id, its traceback in
the log), the request log (one line per request) and the upload limit (413), as exception
handlers and ASGI middleware."""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from pyanalyzer.errors import BackendUnavailableError, PyanalyzerError, UserInputError

LOG = logging.getLogger("pyanalyzer.service")

# ---- errors and the request log --------------------------------------------------------------


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(
            {"detail": one_line(str(exc.detail))}, exc.status_code, headers=exc.headers
        )

    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(StarletteHTTPException)
    async def starlette_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"detail": one_line(str(exc.detail))}, exc.status_code, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_line(exc)}, 422)

    @app.exception_handler(UserInputError)
    async def user_error(request: Request, exc: UserInputError) -> JSONResponse:
        return JSONResponse({"detail": one_line(str(exc))}, 422)

    @app.exception_handler(BackendUnavailableError)
    async def backend_error(request: Request, exc: BackendUnavailableError) -> JSONResponse:
        # params asked for a device this server lacks (device='cuda' without CUDA): the
        # request can ask for another, so 422, not the 503 of a server-side failure
        return JSONResponse({"detail": one_line(str(exc))}, 422)

    @app.exception_handler(PyanalyzerError)
    async def service_error(request: Request, exc: PyanalyzerError) -> JSONResponse:
        return JSONResponse({"detail": one_line(str(exc))}, 503)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        rid = request_id(request.scope)
        import traceback

        LOG.error("request %s failed: %s", rid, "".join(traceback.format_exception(exc)))
        return JSONResponse(
            {"detail": f"internal error (request id {rid})", "request_id": rid},
            500,
            headers={"X-Request-ID": rid},  # sent outside the request log's middleware
        )


def _validation_line(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",)) or "request"
        msg = str(err.get("msg", "invalid"))
        for prefix in ("Value error, ", "Assertion failed, "):
            msg = msg.removeprefix(prefix)
        parts.append(f"{loc}: {msg}")
    return one_line("; ".join(parts)) or "invalid request"


def one_line(text: str) -> str:
    return " ".join(text.split())[:1000]


def request_id(scope: MutableMapping[str, Any]) -> str:
    state = scope.setdefault("state", {})
    if "request_id" not in state:
        state["request_id"] = secrets.token_hex(6)
    return str(state["request_id"])


ASGIApp = Callable[..., Awaitable[None]]


class RequestLog:
    """One log line per request (method, path, status, milliseconds, request id), and the
    request id in an ``X-Request-ID`` response header."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id(scope)
        start = time.perf_counter()
        status = [500]

        async def send_logged(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        finally:
            ms = (time.perf_counter() - start) * 1000
            LOG.info("%s %s %d %.1fms %s", scope["method"], scope["path"], status[0], ms, rid)


class _TooLarge(Exception):
    pass


class UploadLimit:
    """413 for a request body over the limit: by its Content-Length before reading, and by
    counting while it streams (chunked uploads)."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def _refuse(self, send: Any) -> None:
        body = json.dumps(
            {"detail": f"the upload is larger than the server's limit of "
             f"{self.limit // (1024 * 1024)} MiB (--max-upload-mb)"}
        ).encode()  # fmt: skip
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.limit:
                    await self._refuse(send)
                    return
        seen = [0]
        started = [False]

        async def counted() -> MutableMapping[str, Any]:
            message: MutableMapping[str, Any] = await receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > self.limit:
                    raise _TooLarge()
            return message

        async def tracked(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                started[0] = True
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:
            if not started[0]:
                await self._refuse(send)
