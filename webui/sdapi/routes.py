"""The `/sdapi/v1` routes: thin handlers that authenticate, map, queue through the studio and answer as A1111.

Every generation goes the tabs' way: a validated request, the studio's
queue (`Studio.enqueue` through the GPU workers: its checks, the fair order
between users, the queue limits), the gallery. Input a client can fix is
refused with 422 and a one-sentence `detail` naming the field, before
anything is written; a full queue is 503.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import APIRouter, Body, Depends, HTTPException, Request
from fastapi.responses import JSONResponse

from pipelines import controlnets, lora
from pipelines.controlnets import ControlNetNotFound
from pipelines.errors import ModelError
from pipelines.limits import RequestError
from pipelines.samplers import SAMPLER_NAMES
from pipelines.sources import resolve_source
from storage import StorageError
from webui.errors import QueueFull, StudioError
from webui.imports import MetadataError, read_file_text
from webui.imports.a1111 import parse_a1111
from webui.models import ModelListError, find, studio_models
from webui.sdapi import controlnet, mapping
from webui.sdapi.auth import ApiAuth
from webui.sdapi.jobs import ApiJobs
from webui.sdapi.responses import generation_response
from webui.sdapi.schemas import (
    GenerationResponse,
    Img2ImgBody,
    PngInfoBody,
    PngInfoResponse,
    ProgressResponse,
    Txt2ImgBody,
)
from webui.sdapi.uploads import decode_bytes
from webui.services import Access
from webui.studio import Studio
from webui.workers import JobFailed

PREFIX = "/sdapi/v1"


@contextmanager
def answers() -> Iterator[None]:
    """What the studio refuses, as the HTTP answer A1111 clients understand: a status and a `detail`."""
    try:
        yield
    except lora.LoraError as error:  # found in the prompt's <lora:...> tags
        raise HTTPException(status_code=422, detail=f"prompt: {error}") from None
    except (RequestError, ModelError, ControlNetNotFound) as error:
        raise HTTPException(status_code=422, detail=mapping.a1111_message(str(error))) from None
    except ModelListError as error:  # the studio's own models.json, not the client's doing
        raise HTTPException(status_code=500, detail=str(error)) from None
    except QueueFull as error:
        raise HTTPException(status_code=503, detail=str(error), headers={"Retry-After": "30"}) from None
    except (JobFailed, StudioError, StorageError) as error:
        raise HTTPException(status_code=500, detail=str(error)) from None


class SdApi:
    """The routes' shared state: the studio, who is asking, each user's chosen model, the calls in flight."""

    def __init__(self, studio: Studio, access: Access, *, accounts: bool) -> None:
        self.studio = studio
        self.settings = studio.settings
        self.auth = ApiAuth(access, accounts=accounts, single_user=studio.settings.user)
        self.jobs = ApiJobs(studio.workers, studio.gallery)
        self._models: dict[str, str] = {}  # user -> the source POST options picked
        self._lock = threading.Lock()

    def models(self):
        return studio_models(self.settings)

    def current_model(self, user: str) -> str:
        with self._lock:
            return self._models.get(user, self.settings.model)

    def pick_model(self, user: str, source: str) -> None:
        """The model this user's later API calls use (POST options); kept in memory, as A1111 keeps its setting."""
        with self._lock:
            self._models[user] = source

    def context(self, user: str) -> mapping.Context:
        return mapping.Context(models=self.models(), current_model=self.current_model(user))

    def generate(self, plan: mapping.Plan, body: Any, user: str) -> dict[str, Any]:
        with answers():
            records = self.jobs.run(plan.requests, user=user)
        return generation_response(records, plan, body, self.studio.gallery)


def build_router(studio: Studio, access: Access, *, accounts: bool) -> APIRouter:
    api = SdApi(studio, access, accounts=accounts)
    router = APIRouter(tags=["AUTOMATIC1111-compatible API"])
    user_of = api.auth

    # -- generating (sync handlers: each waits for its jobs in a worker thread) --------------

    @router.post(f"{PREFIX}/txt2img", response_model=GenerationResponse)
    def txt2img(body: Txt2ImgBody, user: str = Depends(user_of)) -> dict[str, Any]:
        """Text to image (with ControlNet units in alwayson_scripts), queued fairly, kept in the gallery."""
        with answers():
            plan = mapping.txt2img(body, api.context(user))
        return api.generate(plan, body, user)

    @router.post(f"{PREFIX}/img2img", response_model=GenerationResponse)
    def img2img(body: Img2ImgBody, user: str = Depends(user_of)) -> dict[str, Any]:
        """Image to image; with `mask`, inpainting (white regenerated, every other pixel kept exactly)."""
        with answers():
            plan = mapping.img2img(body, api.context(user))
        return api.generate(plan, body, user)

    @router.post(f"{PREFIX}/interrupt")
    def interrupt(user: str = Depends(user_of)) -> dict[str, Any]:
        """Stop your own API generations: a waiting batch at once, a running one at its next step."""
        return {"interrupted": api.jobs.interrupt(user)}

    @router.get(f"{PREFIX}/progress", response_model=ProgressResponse)
    def progress(skip_current_image: bool = False, user: str = Depends(user_of)) -> dict[str, Any]:
        """Progress of your own API generation in flight, with its latest preview."""
        return api.jobs.progress(user, skip_current_image=skip_current_image)

    # -- what there is -------------------------------------------------------------------------

    @router.get(f"{PREFIX}/sd-models")
    def sd_models(user: str = Depends(user_of)) -> list[dict[str, Any]]:
        """The studio's model list; a title goes into sd_model_checkpoint."""
        with answers():
            models = api.models()
        return [
            {"title": m.name, "model_name": m.name, "hash": None, "sha256": None, "filename": m.source, "config": None}
            for m in models
        ]

    @router.get(f"{PREFIX}/samplers")
    def samplers(user: str = Depends(user_of)) -> list[dict[str, Any]]:
        return [{"name": name, "aliases": [], "options": {}} for name in SAMPLER_NAMES]

    @router.get(f"{PREFIX}/schedulers")
    def schedulers(user: str = Depends(user_of)) -> list[dict[str, Any]]:
        """The schedules Atelier's samplers take: automatic (A1111's default for the sampler), uniform, karras."""
        offered = ["automatic", "uniform"] + [
            name for name, label in mapping.SCHEDULERS.items() if any(s.endswith(f" {label}") for s in SAMPLER_NAMES)
        ]
        return [
            {"name": n, "label": mapping.SCHEDULERS[n], "aliases": None, "default_rho": -1, "need_inner_model": False}
            for n in dict.fromkeys(offered)
        ]

    @router.get(f"{PREFIX}/loras")
    def loras(user: str = Depends(user_of)) -> list[dict[str, Any]]:
        """The LoRA folder's files: write <lora:name:weight> in the prompt."""
        return [
            {"name": f.name, "alias": f.name, "path": str(f.path), "metadata": {}}
            for f in lora.available(api.settings.loras_folder)
            if f.problem is None
        ]

    @router.get(f"{PREFIX}/scripts")
    def scripts(user: str = Depends(user_of)) -> dict[str, list[str]]:
        return {"txt2img": ["controlnet"], "img2img": ["controlnet"]}

    @router.get(f"{PREFIX}/upscalers")
    def upscalers(user: str = Depends(user_of)) -> list[dict[str, Any]]:
        return [{"name": "None", "model_name": None, "model_path": None, "model_url": None, "scale": 1}]

    @router.get(f"{PREFIX}/sd-vae")
    def sd_vae(user: str = Depends(user_of)) -> list[dict[str, Any]]:
        return []

    @router.get(f"{PREFIX}/memory")
    def memory(user: str = Depends(user_of)) -> dict[str, Any]:
        return {"ram": _ram(), "cuda": _cuda()}

    # -- settings ------------------------------------------------------------------------------

    @router.get(f"{PREFIX}/options")
    def get_options(user: str = Depends(user_of)) -> dict[str, Any]:
        """The settings A1111 clients read: the model your API calls use, and PNG output."""
        source = api.current_model(user)
        with answers():
            entry = find(api.models(), source)
        return {
            "sd_model_checkpoint": entry.name if entry is not None else source,
            "sd_checkpoint_hash": None,
            "samples_format": "png",
            "CLIP_stop_at_last_layers": 1,
            "sd_vae": "Automatic",
        }

    @router.post(f"{PREFIX}/options")
    def set_options(options: dict[str, Any] = Body(...), user: str = Depends(user_of)) -> dict[str, Any]:
        """sd_model_checkpoint picks the model your later API calls use; other keys are listed as not supported."""
        applied: dict[str, Any] = {}
        if "sd_model_checkpoint" in options:
            with answers():
                entry = mapping.find_model(api.models(), options["sd_model_checkpoint"], "sd_model_checkpoint")
                resolve_source(entry.source)
            api.pick_model(user, entry.source)
            applied["sd_model_checkpoint"] = entry.name
        ignored = {key: "Atelier has no such setting." for key in options if key != "sd_model_checkpoint"}
        return {"applied": applied, "not_supported": ignored}

    @router.post(f"{PREFIX}/png-info", response_model=PngInfoResponse)
    def png_info(body: PngInfoBody, user: str = Depends(user_of)) -> dict[str, Any]:
        """The generation text a PNG carries (A1111's `parameters`, Atelier's own...), parsed as A1111 parses it."""
        if not body.image.strip():
            return {"info": "", "items": {}, "parameters": {}}
        with answers():
            data = decode_bytes(body.image, "image")
        try:
            # PNG text chunks, or a JPEG/WebP's EXIF UserComment, as A1111's png-info reads both.
            chunks = read_file_text(data)
        except MetadataError as error:
            raise HTTPException(status_code=422, detail=f"image: {error}") from None
        info = chunks.pop("parameters", "")
        return {"info": info, "items": chunks, "parameters": parse_a1111(info) if info else {}}

    # -- the ControlNet extension's own listing routes, which its clients call -------------------

    @router.get("/controlnet/model_list")
    def controlnet_models(user: str = Depends(user_of)) -> dict[str, list[str]]:
        return {"model_list": list(controlnets.REGISTRY)}

    @router.get("/controlnet/module_list")
    def controlnet_modules(user: str = Depends(user_of)) -> dict[str, list[str]]:
        return {"module_list": list(controlnet.MODULES)}

    @router.get("/controlnet/version")
    def controlnet_version(user: str = Depends(user_of)) -> dict[str, int]:
        return {"version": 2}

    supported = sorted(
        {f"{method} {route.path}" for route in router.routes for method in getattr(route, "methods", ())}
    )

    @router.api_route(
        f"{PREFIX}/{{rest:path}}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"], include_in_schema=False
    )
    def not_supported(rest: str, request: Request) -> JSONResponse:
        detail = f"{request.method} {PREFIX}/{rest} is not supported by Atelier; see `supported` or /docs."
        return JSONResponse(status_code=404, content={"detail": detail, "supported": supported})

    return router


def _ram() -> dict[str, Any]:
    """This process's resident memory and the machine's, from /proc (Linux); an error elsewhere, as A1111 says."""
    try:
        with open("/proc/self/statm") as statm:
            used = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError) as error:
        return {"error": str(error)}
    return {"free": total - used, "used": used, "total": total}


def _cuda() -> dict[str, Any]:
    torch = sys.modules.get("torch")  # the engine brought torch in if anything ran; no import just to say "none"
    if torch is None or not torch.cuda.is_available():
        return {"error": "unavailable"}
    free, total = torch.cuda.mem_get_info()
    stats = torch.cuda.memory_stats()
    pair = {kind: {"current": stats.get(f"{kind}_bytes.all.current", 0), "peak": stats.get(f"{kind}_bytes.all.peak", 0)}
            for kind in ("allocated", "reserved", "active")}  # fmt: skip
    return {
        "system": {"free": free, "used": total - free, "total": total},
        **pair,
        "events": {"retries": stats.get("num_alloc_retries", 0), "oom": stats.get("num_ooms", 0)},
    }
