"""ComfyUI graphs read by following links from the sampler.

Each fixture is a PNG written as ComfyUI's SaveImage writes one (nodes.py,
`SaveImage.save_images`: `PngInfo.add_text("prompt", json.dumps(prompt))`
and one `add_text` per `extra_pnginfo` entry, i.e. `workflow`), holding the
API-form graph of one of ComfyUI's example workflows (comfyanonymous.github.io
ComfyUI_examples: img2img, inpaint, controlnet, lora, sdxl, flux, 2_pass_txt2img),
with node types and input names as the node classes declare them (nodes.py,
comfy_extras/nodes_custom_sampler.py, nodes_flux.py, nodes_model_advanced.py).
"""

from __future__ import annotations

import io
import json
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from pipelines.requests import MAX_SEED, Img2ImgRequest, InpaintRequest
from webui.imports import Catalog, ImportedRequest, Reference, import_file

CATALOG = Catalog.of(
    models=[
        ("SD 1.5", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
        ("SDXL refiner", "/models/sd_xl_refiner_1.0.safetensors"),
    ],
    loras=["detail_tweaker", "film_grain"],
)


def comfy_png(prompt: dict[str, Any]) -> bytes:
    metadata = PngInfo()
    metadata.add_text("prompt", json.dumps(prompt))
    metadata.add_text("workflow", json.dumps({"last_node_id": len(prompt), "nodes": [], "links": []}))
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "gray").save(buffer, format="PNG", pnginfo=metadata, compress_level=4)
    return buffer.getvalue()


def node(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs}


def base_graph(**sampler: Any) -> dict[str, Any]:
    """ComfyUI's default graph (the example every install opens with), with `sampler` changes."""
    return {
        "3": node("KSampler", **{"seed": 8566257, "steps": 20, "cfg": 8, "sampler_name": "euler", "scheduler": "normal",
                  "denoise": 1, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
                  "latent_image": ["5", 0], **sampler}),
        "4": node("CheckpointLoaderSimple", ckpt_name="v1-5-pruned-emaonly.safetensors"),
        "5": node("EmptyLatentImage", width=512, height=512, batch_size=1),
        "6": node("CLIPTextEncode", text="beautiful scenery nature glass bottle landscape", clip=["4", 1]),
        "7": node("CLIPTextEncode", text="text, watermark", clip=["4", 1]),
        "8": node("VAEDecode", samples=["3", 0], vae=["4", 2]),
        "9": node("SaveImage", filename_prefix="ComfyUI", images=["8", 0]),
    }  # fmt: skip


def read(graph: dict[str, Any], catalog: Catalog | None = CATALOG) -> ImportedRequest:
    return import_file(comfy_png(graph), catalog)


def test_default_graph_is_text_to_image_with_the_checkpoint_named() -> None:
    imported = read(base_graph())

    assert (imported.source, imported.task, imported.task_fields) == ("comfyui", "txt2img", {})
    request = imported.request
    assert (request.prompt, request.negative_prompt) == (
        "beautiful scenery nature glass bottle landscape",
        "text, watermark",
    )
    assert (request.seed, request.num_inference_steps, request.guidance_scale, request.sampler) == (
        8566257,
        20,
        8.0,
        "Euler",
    )
    assert (request.width, request.height, request.model) == (512, 512, "embedded")
    assert imported.unmapped == {"CheckpointLoaderSimple#4.ckpt_name": "v1-5-pruned-emaonly.safetensors"}
    assert imported.inputs == (Reference("checkpoint", "v1-5-pruned-emaonly.safetensors", "model", None),)
    assert imported.needs == []


def test_a_64_bit_seed_goes_to_the_request_as_is_where_atelier_allows_it() -> None:
    seed = 156680208700286  # ComfyUI draws seeds up to 2**64 - 1 (nodes.py KSampler "seed" max)
    imported = read(base_graph(seed=seed))
    if seed <= MAX_SEED:
        assert imported.request.seed == seed
    else:  # until seeds are 64-bit here: listed as written, never replaced silently
        assert imported.unmapped["KSampler#3.seed"] == str(seed)


def test_img2img_vae_encode_with_denoise_becomes_strength() -> None:
    """ComfyUI_examples/img2img: LoadImage -> VAEEncode -> KSampler(denoise 0.87)."""
    graph = base_graph(denoise=0.87, latent_image=["12", 0])
    del graph["5"]
    graph["10"] = node("LoadImage", image="example.png", upload="image")
    graph["12"] = node("VAEEncode", pixels=["10", 0], vae=["4", 2])
    imported = read(graph)

    assert (imported.task, imported.task_fields) == ("img2img", {"strength": 0.87})
    # KSampler runs 20 steps of a 22-step schedule (int(20 / 0.87)); diffusers runs int(22 * 0.87) = 19 of 22.
    assert imported.request.num_inference_steps == 22
    assert imported.unmapped == {"CheckpointLoaderSimple#4.ckpt_name": "v1-5-pruned-emaonly.safetensors"}
    assert imported.needs == [Reference("image", "example.png", "image", None)]
    remade = imported.complete({"image": Image.new("RGB", (512, 512), "red")})
    assert isinstance(remade, Img2ImgRequest)
    assert (remade.strength, remade.seed, remade.prompt) == (0.87, 8566257, imported.request.prompt)


def test_img2img_ksampler_advanced_start_step_becomes_strength() -> None:
    graph = advanced_graph(start_at_step=5)
    imported = read(graph)

    assert (imported.task, imported.task_fields) == ("img2img", {"strength": 0.75})
    assert (imported.request.seed, imported.request.num_inference_steps) == (42, 20)
    assert not [key for key in imported.unmapped if key.startswith("KSamplerAdvanced")]


def advanced_graph(**changes: Any) -> dict[str, Any]:
    graph = base_graph(latent_image=["12", 0])
    graph["3"] = node("KSamplerAdvanced", add_noise="enable", noise_seed=42, steps=20, cfg=8, sampler_name="euler",
                      scheduler="normal", start_at_step=0, end_at_step=10000, return_with_leftover_noise="disable",
                      model=["4", 0], positive=["6", 0], negative=["7", 0], latent_image=["12", 0])  # fmt: skip
    graph["3"]["inputs"].update(changes)
    del graph["5"]
    graph["10"] = node("LoadImage", image="photo.png", upload="image")
    graph["12"] = node("VAEEncode", pixels=["10", 0], vae=["4", 2])
    return graph


def test_inpaint_vae_encode_for_inpaint_with_the_mask_from_the_alpha() -> None:
    """ComfyUI_examples/inpaint: LoadImage's image and its alpha mask -> VAEEncodeForInpaint, an inpainting checkpoint."""
    graph = base_graph(latent_image=["26", 0])
    del graph["5"]
    graph["4"]["inputs"]["ckpt_name"] = "512-inpainting-ema.safetensors"
    graph["20"] = node("LoadImage", image="yosemite_inpaint_example.png", upload="image")
    graph["26"] = node("VAEEncodeForInpaint", grow_mask_by=6, pixels=["20", 0], vae=["4", 2], mask=["20", 1])
    imported = read(graph)

    assert (imported.task, imported.task_fields) == ("inpaint", {"strength": 1.0})
    assert imported.request.num_inference_steps == 20
    assert imported.unmapped == {
        "CheckpointLoaderSimple#4.ckpt_name": "512-inpainting-ema.safetensors",
        "VAEEncodeForInpaint#26.grow_mask_by": "6",  # a box dilation; ours grows by a distance
    }
    assert imported.needs == [
        Reference("image", "yosemite_inpaint_example.png", "image", None),
        Reference("mask", "yosemite_inpaint_example.png (alpha channel)", "mask_image", None),
    ]
    remade = imported.complete(
        {"image": Image.new("RGB", (64, 64), "blue"), "mask_image": Image.new("L", (64, 64), 255)}
    )
    assert isinstance(remade, InpaintRequest) and remade.strength == 1.0


def test_inpaint_set_latent_noise_mask_with_a_mask_file() -> None:
    graph = base_graph(denoise=0.5, latent_image=["31", 0])
    del graph["5"]
    graph["20"] = node("LoadImage", image="room.png", upload="image")
    graph["21"] = node("LoadImageMask", image="room_mask.png", channel="red", upload="image")
    graph["30"] = node("VAEEncode", pixels=["20", 0], vae=["4", 2])
    graph["31"] = node("SetLatentNoiseMask", samples=["30", 0], mask=["21", 0])
    imported = read(graph)

    assert (imported.task, imported.task_fields) == ("inpaint", {"strength": 0.5})
    assert imported.request.num_inference_steps == 40
    assert [ref.name for ref in imported.needs] == ["room.png", "room_mask.png (red channel)"]
    assert imported.unmapped == {"CheckpointLoaderSimple#4.ckpt_name": "v1-5-pruned-emaonly.safetensors"}


def test_controlnet_apply_advanced_with_a_canny_node() -> None:
    """ComfyUI_examples/controlnet: ControlNetLoader + a Canny of a LoadImage -> ControlNetApplyAdvanced."""
    graph = base_graph(positive=["14", 0], negative=["14", 1])
    graph["11"] = node("LoadImage", image="pose_source.png", upload="image")
    graph["12"] = node("Canny", low_threshold=0.4, high_threshold=0.8, image=["11", 0])
    graph["13"] = node("ControlNetLoader", control_net_name="control_v11p_sd15_canny_fp16.safetensors")
    graph["14"] = node("ControlNetApplyAdvanced", strength=0.8, start_percent=0.0, end_percent=0.75,
                       positive=["6", 0], negative=["7", 0], control_net=["13", 0], image=["12", 0])  # fmt: skip
    imported = read(graph)

    assert imported.task == "controlnet"
    assert imported.request.negative_prompt == "text, watermark"  # through the ControlNet's second output
    assert imported.task_fields == {
        "controls": [
            {"preprocessor": "canny", "conditioning_scale": 0.8, "guidance_start": 0.0, "guidance_end": 0.75,
             "controlnet": "sd15-canny"}
        ]
    }  # fmt: skip
    assert imported.unmapped == {
        "CheckpointLoaderSimple#4.ckpt_name": "v1-5-pruned-emaonly.safetensors",
        "Canny#12.low_threshold": "0.4",  # ComfyUI's are fractions of 1, ours pixel levels
        "Canny#12.high_threshold": "0.8",
    }
    assert (
        Reference("controlnet", "control_v11p_sd15_canny_fp16.safetensors", "controls.0.controlnet", "sd15-canny")
        in imported.inputs
    )
    assert imported.needs == [Reference("control image", "pose_source.png", "controls.0.image", None)]


def test_controlnet_not_in_atelier_is_named_and_must_be_picked() -> None:
    graph = base_graph(positive=["14", 0])
    graph["11"] = node("LoadImage", image="depth.png", upload="image")
    graph["13"] = node("ControlNetLoader", control_net_name="diffusers_xl_depth_full.safetensors")
    graph["14"] = node("ControlNetApply", strength=1.0, conditioning=["6", 0], control_net=["13", 0], image=["11", 0])
    imported = read(graph)

    assert imported.task_fields["controls"] == [
        {"preprocessor": "none", "conditioning_scale": 1.0, "guidance_start": 0.0, "guidance_end": 1.0}
    ]
    assert imported.unmapped["ControlNetLoader#13.control_net_name"] == "diffusers_xl_depth_full.safetensors"
    try:
        imported.complete({"controls.0.image": Image.new("RGB", (64, 64))})
    except ValueError as error:
        assert "controls.0.controlnet needs a ControlNet from Atelier's list" in str(error)
    else:
        raise AssertionError("a ControlNet that is not in Atelier's list must be asked for")


def test_lora_chain_picks_the_loras_atelier_has() -> None:
    """ComfyUI_examples/lora: LoraLoader after LoraLoader between the checkpoint and the sampler and text encoders."""
    graph = base_graph(model=["11", 0])
    graph["6"]["inputs"]["clip"] = graph["7"]["inputs"]["clip"] = ["11", 1]
    graph["10"] = node("LoraLoader", lora_name="sd15\\detail_tweaker.safetensors", strength_model=0.7,
                       strength_clip=0.7, model=["4", 0], clip=["4", 1])  # fmt: skip
    graph["11"] = node("LoraLoader", lora_name="epi_noiseoffset2.safetensors", strength_model=1.0, strength_clip=0.5,
                       model=["10", 0], clip=["10", 1])  # fmt: skip
    graph["12"] = node("LoraLoaderModelOnly", lora_name="film_grain.safetensors", strength_model=0.4, model=["4", 0])
    graph["3"]["inputs"]["model"] = ["13", 0]
    graph["13"] = node("FreeU_V2", b1=1.3, b2=1.4, s1=0.9, s2=0.2, model=["11", 0])
    imported = read(graph)

    assert imported.request.loras == (("detail_tweaker", 0.7),)
    assert imported.unmapped == {
        "CheckpointLoaderSimple#4.ckpt_name": "v1-5-pruned-emaonly.safetensors",
        "LoraLoader#11.lora_name": "epi_noiseoffset2.safetensors",
        "LoraLoader#11.strength_model": "1.0",
        "LoraLoader#11.strength_clip": "0.5",
        "FreeU_V2#13": '{"b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2}',
        # Not on the sampler's model path: listed as a node that sets something.
        "LoraLoaderModelOnly#12": '{"lora_name": "film_grain.safetensors", "strength_model": 0.4}',
    }
    assert [(ref.name, ref.picked) for ref in imported.inputs if ref.kind == "lora"] == [
        ("epi_noiseoffset2.safetensors", None),
        ("sd15\\detail_tweaker.safetensors", "detail_tweaker"),
    ]


def test_lora_with_another_clip_strength_lists_it() -> None:
    graph = base_graph(model=["10", 0])
    graph["10"] = node("LoraLoader", lora_name="film_grain.safetensors", strength_model=0.6, strength_clip=1.0,
                       model=["4", 0], clip=["4", 1])  # fmt: skip
    imported = read(graph)

    assert imported.request.loras == (("film_grain", 0.6),)
    assert imported.unmapped["LoraLoader#10.strength_clip"] == "1.0"


def sdxl_graph() -> dict[str, Any]:
    """ComfyUI_examples/sdxl: base KSamplerAdvanced to step 20 of 25, the refiner from step 20."""
    return {
        "4": node("CheckpointLoaderSimple", ckpt_name="sd_xl_base_1.0.safetensors"),
        "5": node("EmptyLatentImage", width=1024, height=1024, batch_size=1),
        "6": node("CLIPTextEncode", text="evening sunset scenery blue sky nature, glass bottle", clip=["4", 1]),
        "7": node("CLIPTextEncode", text="text, watermark", clip=["4", 1]),
        "10": node("KSamplerAdvanced", add_noise="enable", noise_seed=721897303308196 % (MAX_SEED + 1), steps=25,
                   cfg=8, sampler_name="euler", scheduler="normal", start_at_step=0, end_at_step=20,
                   return_with_leftover_noise="enable", model=["4", 0], positive=["6", 0], negative=["7", 0],
                   latent_image=["5", 0]),
        "11": node("KSamplerAdvanced", add_noise="disable", noise_seed=0, steps=25, cfg=8, sampler_name="euler",
                   scheduler="normal", start_at_step=20, end_at_step=10000, return_with_leftover_noise="disable",
                   model=["12", 0], positive=["15", 0], negative=["16", 0], latent_image=["10", 0]),
        "12": node("CheckpointLoaderSimple", ckpt_name="sd_xl_refiner_1.0.safetensors"),
        "15": node("CLIPTextEncode", text="evening sunset scenery blue sky nature, glass bottle", clip=["12", 1]),
        "16": node("CLIPTextEncode", text="text, watermark", clip=["12", 1]),
        "17": node("VAEDecode", samples=["11", 0], vae=["12", 2]),
        "19": node("SaveImage", filename_prefix="ComfyUI", images=["17", 0]),
    }  # fmt: skip


def test_sdxl_base_and_refiner_pair() -> None:
    imported = read(sdxl_graph())

    request = imported.request
    assert (request.refiner, request.refiner_switch) == ("/models/sd_xl_refiner_1.0.safetensors", 0.8)
    assert (request.num_inference_steps, request.width, request.height, request.sampler) == (25, 1024, 1024, "Euler")
    assert imported.unmapped == {"CheckpointLoaderSimple#4.ckpt_name": "sd_xl_base_1.0.safetensors"}
    assert (
        Reference("refiner", "sd_xl_refiner_1.0.safetensors", "refiner", "/models/sd_xl_refiner_1.0.safetensors")
        in imported.inputs
    )


def test_sdxl_refiner_not_in_atelier_is_listed() -> None:
    graph = sdxl_graph()
    graph["11"]["inputs"]["cfg"] = 5
    graph["16"]["inputs"]["text"] = "blurry"
    imported = read(graph, Catalog())

    assert imported.request.refiner is None
    assert imported.request.refiner_switch == 0.8
    assert imported.unmapped == {
        "CheckpointLoaderSimple#4.ckpt_name": "sd_xl_base_1.0.safetensors",
        "CheckpointLoaderSimple#12.ckpt_name": "sd_xl_refiner_1.0.safetensors",
        "KSamplerAdvanced#11.cfg": "5",
        "CLIPTextEncode#16.text": "blurry",
    }


def flux_graph() -> dict[str, Any]:
    """ComfyUI_examples/flux (flux1-dev): UNETLoader, DualCLIPLoader, FluxGuidance, SamplerCustomAdvanced."""
    return {
        "6": node("CLIPTextEncode", text="a cute anime girl with massive fluffy fennec ears", clip=["11", 0]),
        "8": node("VAEDecode", samples=["13", 0], vae=["10", 0]),
        "9": node("SaveImage", filename_prefix="ComfyUI", images=["8", 0]),
        "10": node("VAELoader", vae_name="ae.safetensors"),
        "11": node("DualCLIPLoader", clip_name1="t5xxl_fp16.safetensors", clip_name2="clip_l.safetensors", type="flux"),
        "12": node("UNETLoader", unet_name="flux1-dev.safetensors", weight_dtype="default"),
        "13": node("SamplerCustomAdvanced", noise=["25", 0], guider=["22", 0], sampler=["16", 0], sigmas=["17", 0],
                   latent_image=["27", 0]),
        "16": node("KSamplerSelect", sampler_name="euler"),
        "17": node("BasicScheduler", scheduler="simple", steps=20, denoise=1, model=["30", 0]),
        "22": node("BasicGuider", model=["30", 0], conditioning=["26", 0]),
        "25": node("RandomNoise", noise_seed=219670278747233 % (MAX_SEED + 1)),
        "26": node("FluxGuidance", guidance=3.5, conditioning=["6", 0]),
        "27": node("EmptySD3LatentImage", width=1024, height=1024, batch_size=1),
        "30": node("ModelSamplingFlux", max_shift=1.15, base_shift=0.5, width=1024, height=1024, model=["12", 0]),
    }  # fmt: skip


def test_flux_sampler_custom_advanced() -> None:
    imported = read(flux_graph(), Catalog.of(models=[("FLUX.1 dev", "our-team/FLUX.1-dev")]))

    request = imported.request
    assert (request.prompt, request.negative_prompt) == ("a cute anime girl with massive fluffy fennec ears", "")
    assert request.seed == 219670278747233 % (MAX_SEED + 1)
    assert (request.num_inference_steps, request.guidance_scale, request.sampler) == (20, 3.5, "Euler")
    assert (request.width, request.height) == (1024, 1024)
    assert (
        request.model == "our-team/FLUX.1-dev"
    )  # a model list entry named by a hub id; matched by its repository name, "flux1-dev" as ComfyUI writes it
    assert imported.task == "txt2img"
    assert imported.unmapped == {
        "DualCLIPLoader#11.clip_name1": "t5xxl_fp16.safetensors",
        "DualCLIPLoader#11.clip_name2": "clip_l.safetensors",
        "DualCLIPLoader#11.type": "flux",
        "VAELoader#10": '{"vae_name": "ae.safetensors"}',
    }
    kinds = {(ref.kind, ref.name) for ref in imported.inputs}
    assert {("checkpoint", "flux1-dev.safetensors"), ("text encoder", "clip_l.safetensors")} <= kinds


def test_hires_two_pass_reads_the_first_and_lists_the_second() -> None:
    """ComfyUI_examples/2_pass_txt2img: KSampler -> LatentUpscale -> KSampler(denoise 0.5)."""
    graph = base_graph()
    graph["10"] = node("LatentUpscale", upscale_method="nearest-exact", width=1152, height=1152, crop="disabled",
                       samples=["3", 0])  # fmt: skip
    graph["11"] = node("KSampler", seed=469771404043268 % (MAX_SEED + 1), steps=14, cfg=8, sampler_name="dpmpp_2m",
                       scheduler="simple", denoise=0.5, model=["4", 0], positive=["6", 0], negative=["7", 0],
                       latent_image=["10", 0])  # fmt: skip
    graph["8"]["inputs"]["samples"] = ["11", 0]
    imported = read(graph)

    assert (imported.task, imported.request.seed, imported.request.width) == ("txt2img", 8566257, 512)
    assert imported.unmapped == {
        "CheckpointLoaderSimple#4.ckpt_name": "v1-5-pruned-emaonly.safetensors",
        "hires fix: LatentUpscale#10": '{"crop": "disabled", "height": 1152, "upscale_method": "nearest-exact", "width": 1152}',
        "hires fix: KSampler#11": json.dumps(
            {
                "cfg": 8,
                "denoise": 0.5,
                "sampler_name": "dpmpp_2m",
                "scheduler": "simple",
                "seed": 469771404043268 % (MAX_SEED + 1),
                "steps": 14,
            },
            sort_keys=True,
        ),  # fmt: skip
    }
