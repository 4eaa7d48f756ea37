"""Finished gallery records -> the response A1111 gives: base64 PNGs, the request back, and `info` as JSON.

The images are the gallery's own files, byte for byte, so they carry the
same metadata (an A1111 `parameters` chunk and Atelier's `atelier` chunk)
and the same sha256 as the records. `info` has the keys A1111's
`Processed.js()` writes (modules/processing.py), filled from what ran, plus
Atelier's `generation_id(s)` and `not_supported`.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

from PIL import Image

from storage import Gallery, GenerationRecord
from storage.pngmeta import a1111_parameters
from webui.models import ModelEntry
from webui.sdapi.mapping import Plan
from webui.sdapi.schemas import GenerationBody, Img2ImgBody

VERSION = "atelier"


def png_base64(image: Image.Image) -> str:
    with io.BytesIO() as buffer:
        image.save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode("ascii")


def generation_response(
    records: list[GenerationRecord], plan: Plan, body: GenerationBody, gallery: Gallery
) -> dict[str, Any]:
    outputs = [(record, image) for record in records for image in record.outputs]
    images = (
        [base64.b64encode(gallery.path(image.path).read_bytes()).decode("ascii") for _, image in outputs]
        if body.send_images
        else []
    )
    parameters = body.model_dump()
    if isinstance(body, Img2ImgBody) and not body.include_init_images:
        parameters["init_images"] = parameters["mask"] = None
    info = _info(records, outputs, plan, body)
    ids = [record.id for record in records]
    return {
        "images": images,
        "parameters": parameters,
        "info": json.dumps(info),
        "generation_id": ids[0] if ids else None,
        "generation_ids": ids,
    }


def _info(records: list[GenerationRecord], outputs: list, plan: Plan, body: GenerationBody) -> dict[str, Any]:
    first = plan.requests[0]
    params = records[0].params if records else first.to_dict()
    seeds = [image.seed for _, image in outputs]
    subseeds = []
    for record, image in outputs:
        variation = record.params.get("variation_seed")
        subseeds.append(-1 if variation is None else variation + (image.seed - record.seed))
    prompts = [record.prompt for record, _ in outputs]
    negatives = [record.negative_prompt for record, _ in outputs]
    model: ModelEntry | None = plan.model
    revision = records[0].model_revision if records else None
    return {
        "prompt": prompts[0] if prompts else first.prompt,
        "all_prompts": prompts,
        "negative_prompt": negatives[0] if negatives else first.negative_prompt,
        "all_negative_prompts": negatives,
        "seed": seeds[0] if seeds else first.seed,
        "all_seeds": seeds,
        "subseed": subseeds[0] if subseeds else -1,
        "all_subseeds": subseeds,
        "subseed_strength": float(params.get("variation_strength") or 0.0),
        "width": params["width"],
        "height": params["height"],
        "sampler_name": params["sampler"],
        "cfg_scale": params["guidance_scale"],
        "steps": params["num_inference_steps"],
        "batch_size": params["batch_size"],
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": model.name if model is not None else params["model"],
        "sd_model_hash": revision[:10] if revision else None,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": params.get("strength"),
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": [a1111_parameters(record.params, seed=image.seed) for record, image in outputs],
        "styles": [],
        "job_timestamp": records[0].created_at.strftime("%Y%m%d%H%M%S") if records else "",
        "clip_skip": 1,
        "is_using_inpainting_conditioning": False,
        "version": VERSION,
        "generation_id": records[0].id if records else None,
        "generation_ids": [record.id for record in records],
        "statuses": [record.status for record in records],
        "not_supported": plan.not_supported,
    }
