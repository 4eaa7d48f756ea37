"""Fooocus, InvokeAI 2 and 5, and NovelAI PNGs, written as each tool writes them."""

from __future__ import annotations

import io
import json
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from webui.imports import Catalog, Reference, import_file

CATALOG = Catalog.of(
    models=[("Juggernaut XL", "/models/juggernautXL_v8Rundiffusion.safetensors")],
    loras=["sd_xl_offset_example-lora_1.0", "add_detail"],
)


def png(**text: str) -> bytes:
    info = PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), "olive").save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


# --- Fooocus -------------------------------------------------------------------

# Fooocus modules/async_worker.py `save_and_log` builds these (label, key, value) entries, and
# modules/meta_parser.py `FooocusMetadataParser.to_string` adds full prompts, model stems and hashes,
# LoRAs as [stem, weight, hash], and dumps them with sorted keys.
FOOOCUS = {
    "adm_guidance": "(1.5, 0.8, 0.3)",
    "base_model": "juggernautXL_v8Rundiffusion",
    "base_model_hash": "aeb7e9e689",
    "full_negative_prompt": ["(worst quality, low quality:1.4)", "unrealistic"],
    "full_prompt": ["a red fox in the snow, cinematic", "a red fox in the snow, intricate, highly detailed"],
    "guidance_scale": 4.0,
    "lora_combined_1": "sd_xl_offset_example-lora_1.0 : 0.1",
    "loras": [["sd_xl_offset_example-lora_1.0", 0.1, "4852686128"]],
    "metadata_scheme": "fooocus",
    "negative_prompt": "unrealistic",
    "performance": "Speed",
    "prompt": "a red fox in the snow",
    "prompt_expansion": "a red fox in the snow, intricate, highly detailed",
    "refiner_model": "None",
    "refiner_switch": 0.5,
    "resolution": "(1152, 896)",
    "sampler": "dpmpp_2m",
    "scheduler": "karras",
    "seed": "2938475561",
    "sharpness": 2.0,
    "steps": 30,
    "styles": "['Fooocus V2', 'Fooocus Enhance', 'Fooocus Sharp']",
    "vae": "Default (model)",
    "version": "Fooocus v2.5.5",
}


def test_fooocus_scheme_png() -> None:
    """modules/private_logger.py `log`: `pnginfo.add_text('parameters', ...)` and `add_text('fooocus_scheme', ...)`."""
    imported = import_file(png(parameters=json.dumps(FOOOCUS, sort_keys=True), fooocus_scheme="fooocus"), CATALOG)

    request = imported.request
    assert imported.source == "fooocus"
    assert (request.prompt, request.negative_prompt) == ("a red fox in the snow", "unrealistic")
    assert (request.seed, request.num_inference_steps, request.guidance_scale) == (2938475561, 30, 4.0)
    assert (request.width, request.height, request.sampler) == (1152, 896, "DPM++ 2M Karras")
    assert request.model == "/models/juggernautXL_v8Rundiffusion.safetensors"
    assert request.loras == (("sd_xl_offset_example-lora_1.0", 0.1),)
    assert (request.refiner, imported.task) == (None, "txt2img")
    assert imported.unmapped == {
        "adm_guidance": "(1.5, 0.8, 0.3)",
        "full_negative_prompt": '["(worst quality, low quality:1.4)", "unrealistic"]',
        "full_prompt": '["a red fox in the snow, cinematic", "a red fox in the snow, intricate, highly detailed"]',
        "performance": "Speed",
        "prompt_expansion": "a red fox in the snow, intricate, highly detailed",
        "sharpness": "2.0",
        "styles": "['Fooocus V2', 'Fooocus Enhance', 'Fooocus Sharp']",
        "version": "Fooocus v2.5.5",
    }


def test_fooocus_a1111_scheme_png() -> None:
    """Fooocus's `a1111` scheme writes A1111's infotext (meta_parser.py `A1111MetadataParser.to_string`)."""
    text = (
        "a red fox in the snow\nNegative prompt: unrealistic\n"
        "Steps: 30, Sampler: Euler a, Seed: 77, Size: 1152x896, CFG scale: 4, Sharpness: 2, Version: Fooocus v2.5.5"
    )
    imported = import_file(png(parameters=text, fooocus_scheme="a1111"))

    assert imported.source == "fooocus"
    assert (imported.request.seed, imported.request.sampler, imported.request.width) == (77, "Euler a", 1152)
    assert imported.unmapped == {"Sharpness": "2", "Version": "Fooocus v2.5.5"}


# --- InvokeAI 2.x ------------------------------------------------------------------

# ldm/invoke/args.py `metadata_dumps` and ldm/invoke/pngwriter.py `PngWriter.save_image_and_prompt_to_png`
# (`info.add_text('Dream', dream_prompt)`, `info.add_text('sd-metadata', json.dumps(metadata))`).
SD_METADATA = {
    "model": "stable diffusion",
    "model_weights": "stable-diffusion-1.5",
    "model_hash": "cc6cb27103417325ff94f52b7a5d2dde45a7515b25c255d8e396c90014281516",
    "app_id": "invoke-ai/InvokeAI",
    "app_version": "2.3.5",
    "image": {
        "prompt": [{"prompt": "a watercolor of a harbor [people, boats]", "weight": 1.0}],
        "steps": 50,
        "cfg_scale": 7.5,
        "threshold": 0,
        "perlin": 0,
        "height": 512,
        "width": 768,
        "seed": 3357757885,
        "seamless": False,
        "hires_fix": False,
        "type": "txt2img",
        "postprocessing": None,
        "sampler": "k_euler_a",
        "variations": [],
    },
}
DREAM = '"a watercolor of a harbor [people, boats]" -s 50 -S 3357757885 -W 768 -H 512 -C 7.5 -A k_euler_a'


def test_invokeai2_sd_metadata() -> None:
    imported = import_file(png(Dream=DREAM, **{"sd-metadata": json.dumps(SD_METADATA)}))

    request = imported.request
    assert imported.source == "invokeai"
    assert (request.prompt, request.negative_prompt) == ("a watercolor of a harbor", "people, boats")
    assert (request.seed, request.num_inference_steps, request.guidance_scale) == (3357757885, 50, 7.5)
    assert (request.width, request.height, request.sampler) == (768, 512, "Euler a")
    assert imported.unmapped == {
        "model_weights": "stable-diffusion-1.5",
        "model_hash": SD_METADATA["model_hash"],
        "app_id": "invoke-ai/InvokeAI",
        "app_version": "2.3.5",
    }


def test_invokeai2_dream_alone_and_img2img() -> None:
    imported = import_file(png(Dream=DREAM + " -f 0.6 -I init.png"))
    assert (imported.request.prompt, imported.request.seed, imported.request.sampler) == (
        "a watercolor of a harbor",
        3357757885,
        "Euler a",
    )
    assert imported.unmapped == {"Dream": "-f 0.6 -I init.png"}

    meta = json.loads(json.dumps(SD_METADATA))
    meta["image"].update(type="img2img", strength=0.6, init_image_path="outputs/init.png", fit=True)
    imported = import_file(png(**{"sd-metadata": json.dumps(meta)}))
    assert (imported.task, imported.task_fields) == ("img2img", {"strength": 0.6})
    assert imported.needs == [Reference("image", "outputs/init.png", "image", None)]
    assert imported.unmapped["image.fit"] == "true"


# --- InvokeAI 3.x - 5.x ------------------------------------------------------------


# invokeai/app/invocations/metadata.py CoreMetadataInvocation's fields, as InvokeAI 5 writes them
# (ModelIdentifierField {key, hash, name, base, type}; LoRAMetadataField {model, weight};
# ControlNetMetadataField {image, processed_image, control_model, control_weight, begin/end_step_percent ...}).
def _model(name: str, kind: str = "main", base: str = "sdxl") -> dict[str, Any]:
    return {"key": f"key-{name}", "hash": f"blake3:{len(name)}", "name": name, "base": base, "type": kind}


INVOKEAI5 = {
    "generation_mode": "sdxl_img2img",
    "positive_prompt": "a cozy cabin in the woods, snow",
    "negative_prompt": "people",
    "width": 1024,
    "height": 1024,
    "seed": 2044101587,
    "rand_device": "cpu",
    "cfg_scale": 6,
    "cfg_rescale_multiplier": 0,
    "steps": 32,
    "scheduler": "euler_a",
    "model": _model("Juggernaut XL"),
    "loras": [{"model": _model("add_detail", "lora"), "weight": 0.55}, {"model": _model("other", "lora"), "weight": 1}],
    "controlnets": [
        {
            "image": {"image_name": "b7c1-source.png"},
            "processed_image": {"image_name": "b7c1-canny.png"},
            "control_model": _model("controlnet-canny-sdxl-1.0", "controlnet"),
            "control_weight": 0.7,
            "begin_step_percent": 0.1,
            "end_step_percent": 0.8,
            "control_mode": "balanced",
            "resize_mode": "just_resize",
        }
    ],
    "strength": 0.65,
    "init_image": "0f3d-init.png",
    "refiner_model": _model("sd_xl_refiner_1.0", "main", "sdxl-refiner"),
    "refiner_start": 0.75,
    "refiner_steps": 20,
    "seamless_x": False,
    "seamless_y": False,
    "app_version": "5.6.0",
}


def test_invokeai5_img2img_with_loras_controlnet_and_refiner() -> None:
    imported = import_file(png(invokeai_metadata=json.dumps(INVOKEAI5)), CATALOG)

    request = imported.request
    assert (request.prompt, request.negative_prompt, request.seed) == (
        "a cozy cabin in the woods, snow",
        "people",
        2044101587,
    )
    assert (request.num_inference_steps, request.guidance_scale, request.sampler) == (32, 6.0, "Euler a")
    assert request.model == "/models/juggernautXL_v8Rundiffusion.safetensors"
    assert request.loras == (("add_detail", 0.55),)
    assert (request.refiner, request.refiner_switch) == (None, 0.75)
    assert imported.task == "controlnet"
    assert imported.task_fields == {
        "strength": 0.65,
        "controls": [
            {
                "preprocessor": "none",
                "conditioning_scale": 0.7,
                "guidance_start": 0.1,
                "guidance_end": 0.8,
                "controlnet": "sdxl-canny",
            }  # diffusers/controlnet-canny-sdxl-1.0 in Atelier's list
        ],  # fmt: skip
    }
    assert [ref.name for ref in imported.needs] == ["0f3d-init.png", "b7c1-canny.png"]
    assert imported.unmapped == {
        "model.key": "key-Juggernaut XL",
        "model.hash": "blake3:13",
        "model.base": "sdxl",
        "model.type": "main",
        "loras.1": json.dumps(INVOKEAI5["loras"][1], sort_keys=True),
        "controlnets.0.control_mode": "balanced",
        "controlnets.0.resize_mode": "just_resize",
        "refiner_model": "sd_xl_refiner_1.0",
        "refiner_model.key": "key-sd_xl_refiner_1.0",
        "refiner_model.hash": "blake3:17",
        "refiner_model.base": "sdxl-refiner",
        "refiner_model.type": "main",
        "refiner_steps": "20",
        "app_version": "5.6.0",
    }


# --- NovelAI -------------------------------------------------------------------


def test_novelai_comment() -> None:
    """The chunks AUTOMATIC1111's modules/images.py `read_info_from_image` reads from NovelAI's PNGs."""
    comment = {
        "prompt": "1girl, silver hair, night sky, masterpiece",
        "steps": 28,
        "height": 1216,
        "width": 832,
        "scale": 5.0,
        "uncond_scale": 1.0,
        "cfg_rescale": 0.0,
        "seed": 1876493321,
        "n_samples": 1,
        "noise_schedule": "native",
        "sampler": "k_euler_ancestral",
        "strength": 0.7,
        "noise": 0.0,
        "sm": False,
        "sm_dyn": False,
        "uc": "lowres, bad anatomy",
        "request_type": "PromptGenerateRequest",
        "signed_hash": "nYw4vP==",
    }
    imported = import_file(
        png(
            Title="NovelAI generated image",
            Description="1girl, silver hair, night sky, masterpiece",
            Software="NovelAI",
            Source="Stable Diffusion XL C1E1DE52",
            Comment=json.dumps(comment),
        )
    )

    request = imported.request
    assert imported.source == "novelai"
    assert (request.prompt, request.negative_prompt) == (
        "1girl, silver hair, night sky, masterpiece",
        "lowres, bad anatomy",
    )
    assert (request.seed, request.num_inference_steps, request.guidance_scale) == (1876493321, 28, 5.0)
    assert (request.width, request.height, request.sampler) == (832, 1216, "Euler a")
    assert imported.unmapped == {"Source": "Stable Diffusion XL C1E1DE52", "signed_hash": "nYw4vP=="}
    assert imported.inputs == (Reference("checkpoint", "Stable Diffusion XL C1E1DE52", "model", None),)
