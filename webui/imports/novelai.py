"""NovelAI's PNG text chunks: `Software` "NovelAI", `Source` (the model), `Description` (the prompt) and
`Comment`, a JSON object of the request (`prompt`, `uc` the negative prompt, `steps`, `scale`, `seed`,
`width`, `height`, `sampler`, `noise_schedule`, `strength` and `noise` for image to image).

NovelAI's generator is not public; the layout is the one AUTOMATIC1111 reads
(modules/images.py `read_info_from_image`, the `Software == "NovelAI"`
branch). Its models are NovelAI's own, so the model is named, never mapped.
"""

from __future__ import annotations

from collections.abc import Mapping

from webui.imports import samplers
from webui.imports.common import Builder, Catalog, ImportedRequest, as_float, as_int, empty, json_object

# Settings at what every run here does: one image a request, no CFG rescale, no SMEA.
_PLAIN = {"n_samples": 1, "cfg_rescale": 0, "sm": False, "sm_dyn": False, "uncond_scale": 1.0}
_PLAIN_REQUESTS = ("PromptGenerateRequest", None)


def read_novelai(chunks: Mapping[str, str], catalog: Catalog | None = None) -> ImportedRequest:
    meta = json_object(chunks["Comment"], "novelai")
    prompt = meta.pop("prompt", None)
    description = chunks.get("Description")
    built = Builder("novelai", prompt if isinstance(prompt, str) and prompt.strip() else description, catalog)
    negative = meta.pop("uc", None)
    if not empty(negative):
        built.set({"uc": negative}, negative_prompt=negative)
    built.take(
        meta,
        (("seed", "seed", as_int), ("steps", "num_inference_steps", as_int), ("scale", "guidance_scale", as_float)),
    )
    built.take_size(meta)
    if "sampler" in meta:
        found = {"sampler": meta.pop("sampler"), "noise_schedule": meta.pop("noise_schedule", None)}
        built.set(found, sampler=samplers.novelai(found["sampler"], found["noise_schedule"]))
    request_type = meta.pop("request_type", None)
    strength = as_float(meta.get("strength"))
    if request_type == "Img2ImgRequest" and strength is not None and 0 < strength <= 1:
        meta.pop("strength")
        built.task, built.task_fields["strength"] = "img2img", strength
        built.refer("image", "the image it started from", "image")
    elif request_type not in _PLAIN_REQUESTS:
        built.list({"request_type": request_type})
    if request_type != "Img2ImgRequest":
        meta.pop("strength", None)  # NovelAI writes its img2img defaults on every request
        meta.pop("noise", None)
    source = chunks.get("Source")
    if source:
        built.list({"Source": source})
        built.refer("checkpoint", source, "model")
    built.list({key: value for key, value in meta.items() if not (empty(value) or _PLAIN.get(key) == value)})
    return built.done()
