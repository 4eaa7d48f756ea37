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

from fastapi import Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from storage import Users
from webui.sdapi.routes import build_router
from webui.studio import Studio

API_PATHS = ("/sdapi/", "/controlnet/")


def app_kwargs(studio: Studio, users: Users, *, accounts: bool) -> dict[str, Any]:
    """FastAPI arguments for Gradio's app: the routes, /docs, and A1111-style answers to malformed bodies."""
    return {
        "routes": build_router(studio, users, accounts=accounts).routes,
        "docs_url": "/docs",
        "exception_handlers": {RequestValidationError: _malformed},
    }


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
