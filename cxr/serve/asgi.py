"""ASGI protection in front of the service's routes: request bodies are read whole, bounded in
size, pace and memory, before a request may take a work slot. Pure ASGI (Starlette's response
class only): nothing here knows BentoML, which adds it with ``add_asgi_middleware``.
"""

from __future__ import annotations

import asyncio
import os
import time

from starlette.responses import JSONResponse

from cxr.serve import decoding
from cxr.serve.audit import REQUEST_ID, REQUEST_ID_HEADER, request_id_for

BODY_GRACE_S = float(os.environ.get("CXR_BODY_GRACE_S", "5"))
BODY_MIN_RATE = int(os.environ.get("CXR_BODY_MIN_RATE", "16000"))  # bytes/s on average, after the grace
BODY_BUFFER_BYTES = int(os.environ.get("CXR_BODY_BUFFER_MIB", "512")) * 2**20  # per worker
MAX_IN_FLIGHT = int(os.environ.get("CXR_MAX_IN_FLIGHT", "64"))  # per worker, bodies complete
MAX_CONNECTIONS = int(os.environ.get("CXR_MAX_CONNECTIONS", "4096"))  # per service, BentoML's max_concurrency


class RequestId:
    """Every HTTP request gets an id: the client's ``X-Request-ID`` when it is a sane token, else
    a fresh one (:func:`cxr.serve.audit.request_id_for`). The handlers read it from
    :data:`cxr.serve.audit.REQUEST_ID` (the audit trail's ``request_id``); every response carries it
    back as ``X-Request-ID``, errors included. Added before the other middlewares, so that their
    refusals carry it too."""

    HEADER = REQUEST_ID_HEADER.encode("latin-1")

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        incoming = next((v for k, v in scope.get("headers") or [] if k.lower() == self.HEADER), None)
        request_id = request_id_for(incoming)
        encoded = request_id.encode("latin-1")

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers") or [] if k.lower() != self.HEADER]
                message = {**message, "headers": [*headers, (self.HEADER, encoded)]}
            await send(message)

        token = REQUEST_ID.set(request_id)
        try:
            return await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)


class Health:
    """``GET /healthz`` answers what is served, not just that a process is up: the model tag, the
    screening notice, and, for a model trained on the synthetic default, that it is not a medical
    model and how to serve one (BentoML's own /healthz is an empty 200; /livez and /readyz stay its)."""

    PATH = "/healthz"

    def __init__(self, app, status: dict):
        self.app = app
        self.status = status

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] == self.PATH and scope["method"] in ("GET", "HEAD"):
            return await JSONResponse(self.status)(scope, receive, send)
        return await self.app(scope, receive, send)


class BodyLimit:
    """Every POST body is read in full before the app sees it, under four limits, so that slow or
    large uploads cost connections, never the threads that score images:

    - size: over ``max_bytes`` is a 413, from Content-Length first (nothing read), then counted;
    - pace: after ``BODY_GRACE_S``, a body must keep arriving at ``BODY_MIN_RATE`` bytes/s on
      average, else 408 (a client dripping a byte a second is cut after the grace);
    - memory: the bodies one worker holds at once share ``BODY_BUFFER_BYTES`` (503 beyond);
    - work: only a request whose body has arrived takes one of ``MAX_IN_FLIGHT`` slots (429 when
      all are taken). BentoML's own ``max_concurrency`` counts connections still sending, so it
      is set far above that (``MAX_CONNECTIONS``)."""

    def __init__(self, app, max_bytes: int = decoding.MAX_REQUEST_BYTES):
        self.app = app
        self.max_bytes = max_bytes
        self.buffered = 0  # one event loop per worker process: no lock needed
        self.slots = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._refuse(send, 413, f"request body of {declared.decode(errors='replace')} bytes is over "
                                                 f"the {self.max_bytes} byte limit")
        messages, total, held = [], 0, 0
        start = time.monotonic()
        try:
            while True:
                # The next chunk is due before the average pace falls under BODY_MIN_RATE.
                due = start + BODY_GRACE_S + total / BODY_MIN_RATE - time.monotonic()
                try:
                    message = await asyncio.wait_for(receive(), timeout=max(due, 0.001))
                except asyncio.TimeoutError:
                    return await self._refuse(send, 408, f"request body arrived too slowly ({total} bytes in "
                                                         f"{time.monotonic() - start:.0f} s): send it at "
                                                         f"{BODY_MIN_RATE // 1000} kB/s or more")
                if message["type"] == "http.disconnect":
                    messages.append(message)
                    break
                chunk = len(message.get("body", b""))
                total += chunk
                if total > self.max_bytes:
                    return await self._refuse(send, 413, f"request body over the {self.max_bytes} byte limit")
                if self.buffered + chunk > BODY_BUFFER_BYTES:
                    return await self._refuse(send, 503, "the server is holding too many uploads: retry shortly")
                self.buffered += chunk
                held += chunk
                messages.append(message)
                if not message.get("more_body", False):
                    break
            if self.slots.locked():
                return await self._refuse(send, 429, "too many requests in flight: retry shortly")
            async with self.slots:
                async def replay():
                    if messages:
                        return messages.pop(0)
                    return await receive()

                return await self.app(scope, replay, send)
        finally:
            self.buffered -= held

    @staticmethod
    async def _refuse(send, status: int, message: str):
        response = JSONResponse({"error": message, "status": status}, status_code=status,
                                headers={"Connection": "close"})
        await response({"type": "http"}, None, send)
