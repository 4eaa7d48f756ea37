"""An AUTOMATIC1111-compatible HTTP API (`/sdapi/v1/...`) on the studio's own server (issue 14).

Existing A1111 clients (the `webuiapi` package, Open WebUI, SillyTavern,
bots and plugins) point at the studio and work unchanged; what they make
goes through the same `Studio` path as the tabs (validated requests, the
fair queue, accounts, the gallery, the PNG metadata). The package hides:

- `schemas.py`: A1111's request and response shapes (what `/docs` shows);
- `mapping.py`: an A1111 body -> Atelier requests, samplers, LoRA tags, the
  model, and what cannot be honoured; `controlnet.py` the ControlNet
  extension's units; `uploads.py` base64 images through the image door;
- `jobs.py`: calls in flight, per user: their batches, progress, interrupt;
- `responses.py`: records -> images, `parameters`, `info`;
- `auth.py`: HTTP Basic against the studio's accounts;
- `routes.py`: the routes themselves.

`app_kwargs` is what `webui.app.launch` hands Gradio's FastAPI app, so the
routes exist before the server answers anyone.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from webui.sdapi.routes import build_router
from webui.services import Access
from webui.studio import Studio

API_PATHS = ("/sdapi/", "/controlnet/")
# Three images at the image door's limit, in base64, and room for the rest of a body.
MAX_BODY_BYTES = 320 * 1024 * 1024


def app_kwargs(studio: Studio, access: Access, *, accounts: bool) -> dict[str, Any]:
    """FastAPI arguments for Gradio's app: the routes, /docs, and A1111-style answers to malformed bodies."""
    return {
        "routes": build_router(studio, access, accounts=accounts).routes,
        "docs_url": "/docs",
        "exception_handlers": {RequestValidationError: _malformed},
        "middleware": [Middleware(BodyLimit)],
    }


class BodyLimit:
    """Refuses an API body over MAX_BODY_BYTES with 413, from its Content-Length before reading it, else as it streams.

    FastAPI reads a route's whole body before any dependency runs, so the
    limit sits in front of the app. Gradio's own routes have their own limits.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(API_PATHS):
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            await _too_large()(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            # A body without a length (chunked) is counted as it comes; FastAPI answers the HTTPException.
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > MAX_BODY_BYTES:
                raise HTTPException(status_code=413, detail=_too_large_detail())
            return message

        await self.app(scope, counted, send)


def _too_large() -> JSONResponse:
    return JSONResponse(status_code=413, content={"detail": _too_large_detail()})


def _too_large_detail() -> str:
    return f"The request body must be at most {MAX_BODY_BYTES:,} bytes."


async def _malformed(request: Request, error: RequestValidationError) -> JSONResponse:
    """A body of the wrong shape: 422 with one sentence naming the first field, as every other refusal here.

    Gradio's own routes keep FastAPI's usual answer, which its clients read.
    """
    if not request.url.path.startswith(API_PATHS):
        return await request_validation_exception_handler(request, error)
    first = error.errors()[0] if error.errors() else {}
    where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("body", "query"))
    message = first.get("msg", "invalid value")
    if first.get("type") == "json_invalid" or not where:
        return JSONResponse(status_code=422, content={"detail": f"The request body must be a JSON object: {message}."})
    got = first.get("input")
    return JSONResponse(status_code=422, content={"detail": f"{where}: {message}; got {got!r:.60}."})
