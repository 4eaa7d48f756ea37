"""Reading other tools' PNG metadata back into our requests; PNGs are built here as each tool writes them."""

from __future__ import annotations

import io
import json
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from pipelines.requests import Text2ImgRequest, request_from_dict
from storage.files import encode_png
from storage.pngmeta import png_text_chunks
from webui.imports import MAX_CHUNK_CHARS, ImportedRequest, MetadataError, import_chunks, import_png

DEFAULTS = Text2ImgRequest(prompt="x")


def png(**text: str) -> bytes:
    info = PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), "purple").save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def fields(imported: ImportedRequest) -> dict[str, Any]:
    data = imported.request.to_dict()
    return {key: data[key] for key in data if key not in ("task", "batch_size")}


# --- AUTOMATIC1111 -----------------------------------------------------------

A1111_KARRAS = (
    "a lighthouse at dusk, (oil painting:1.2)\n"
    "dramatic sky\n"
    "Negative prompt: blurry, lowres\n"
    "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234567, Size: 512x768, "
    'Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, Lora hashes: "detail: 0b9c, style: 1a2b", '
    "Version: v1.10.1"
)


def test_a1111_with_negative_prompt_and_schedule_type() -> None:
    imported = import_png(png(parameters=A1111_KARRAS))

    assert imported.source == "automatic1111"
    assert fields(imported) == {
        "prompt": "a lighthouse at dusk, (oil painting:1.2)\ndramatic sky",
        "negative_prompt": "blurry, lowres",
        "seed": 1234567,
        "num_inference_steps": 28,
        "guidance_scale": 6.5,
        "width": 512,
        "height": 768,
        "sampler": "DPM++ 2M Karras",
        "model": "embedded",
        "variation_seed": None,
        "variation_strength": 0.0,
        "ip_adapter_image": None,
        "ip_adapter_scale": 0.6,
        "loras": [],
        "refiner": None,
        "refiner_switch": 0.8,
    }
    assert imported.unmapped == {
        "Model": "v1-5-pruned-emaonly",
        "Model hash": "6ce0161689",
        "Clip skip": "2",
        "Lora hashes": "detail: 0b9c, style: 1a2b",
        "Version": "v1.10.1",
    }


def test_a1111_without_negative_prompt_old_sampler_name_and_hires_fix() -> None:
    text = (
        "a red fox in snow\n"
        "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 512x512, Model: sd_xl_base_1.0, "
        "Denoising strength: 0.7, Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent"
    )
    imported = import_chunks({"parameters": text})

    assert fields(imported) == {
        **fields(import_chunks({"parameters": "a red fox in snow"})),
        "seed": 42,
        "guidance_scale": 7.0,
        "sampler": "Euler a",
    }
    assert imported.request.negative_prompt == ""
    assert imported.unmapped == {
        "Model": "sd_xl_base_1.0",
        "Denoising strength": "0.7",
        "Hires upscale": "2",
        "Hires steps": "10",
        "Hires upscaler": "Latent",
    }


def test_a1111_prompt_only_keeps_every_default() -> None:
    imported = import_chunks({"parameters": "just words\nover two lines"})
    assert imported.request == DEFAULTS.replace(prompt="just words\nover two lines")
    assert imported.unmapped == {}


@pytest.mark.parametrize(
    ("sampler", "schedule", "ours"),
    [
        ("DPM++ 2M Karras", None, "DPM++ 2M Karras"),  # before v1.9
        ("DPM++ 2M", None, "DPM++ 2M"),
        ("DPM++ 2M", "Karras", "DPM++ 2M Karras"),
        ("DPM++ 2M", "Automatic", "DPM++ 2M Karras"),  # v1.9+: Karras is DPM++ 2M's own default
        ("DPM++ 2M", "Uniform", "DPM++ 2M"),
        ("Euler", None, "Euler"),
        ("Euler a", "Automatic", "Euler a"),
        ("DDIM", None, "DDIM"),
        ("UniPC", None, "UniPC"),
        ("LCM", None, "LCM"),
        ("DPM++ 2M", "Exponential", "DPM++ 2M Exponential"),  # diffusers' published table, every schedule
        ("DPM++ SDE", "Karras", "DPM++ SDE Karras"),
        ("Heun", None, "Heun"),
        ("Euler a", "Karras", None),  # no Karras Euler a in diffusers' table
        ("DPM adaptive", None, None),  # no diffusers scheduler at all
    ],
)
def test_a1111_sampler_names(sampler: str, schedule: str | None, ours: str | None) -> None:
    settings = f"Steps: 20, Sampler: {sampler}, " + (f"Schedule type: {schedule}, " if schedule else "") + "Seed: 1"
    imported = import_chunks({"parameters": f"a cat\n{settings}"})

    if ours is None:
        assert imported.request.sampler == DEFAULTS.sampler
        assert imported.unmapped == {"Sampler": sampler, **({"Schedule type": schedule} if schedule else {})}
    else:
        assert imported.request.sampler == ours
        assert imported.unmapped == {}


def test_a1111_values_out_of_our_range_are_listed_not_clamped() -> None:
    text = f"a cat\nSteps: 500, Sampler: Euler, CFG scale: 45, Seed: {2**64}, Size: 1000x1001"
    imported = import_chunks({"parameters": text})

    assert imported.request == DEFAULTS.replace(prompt="a cat", sampler="Euler")
    assert imported.unmapped == {"Steps": "500", "CFG scale": "45", "Seed": str(2**64), "Size": "1000x1001"}
    # Seeds are 64-bit (issue 19): one past 2**32 is a seed like any other.
    assert (
        import_chunks({"parameters": "a cat\nSteps: 20, Sampler: Euler, Seed: 99999999999"}).request.seed == 99999999999
    )


def test_a1111_model_that_is_a_local_diffusers_folder_is_used(tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text("{}")
    text = f"a cat\nSteps: 20, Sampler: Euler, Seed: 1, Model: {tmp_path}"

    assert import_chunks({"parameters": text}).request.model == str(tmp_path)
    embedded = "a cat\nSteps: 20, Sampler: Euler, Model: embedded"
    assert import_chunks({"parameters": embedded}).request.model == "embedded"


def test_a1111_variation_seed_and_a_refiner_round_trip_through_our_parameters_text(tmp_path: Path) -> None:
    """What we write in the `parameters` chunk, A1111's names for variations and the refiner, reads back the same."""
    from storage.pngmeta import a1111_parameters

    (tmp_path / "model_index.json").write_text("{}")
    made = Text2ImgRequest(
        prompt="a cat",
        seed=10,
        batch_size=2,
        variation_seed=40,
        variation_strength=0.25,
        refiner=str(tmp_path),
        refiner_switch=0.7,
    )
    second = import_chunks({"parameters": a1111_parameters(made.to_dict(), seed=11)}).request  # image 1 of the batch
    assert (second.seed, second.variation_seed, second.variation_strength) == (11, 41, 0.25)
    assert (second.refiner, second.refiner_switch) == (str(tmp_path), 0.7)
    # A1111 names its refiner by checkpoint title: not a source we can load, so it is listed, not guessed.
    foreign = import_chunks(
        {"parameters": "a cat\nSteps: 20, Seed: 3, Refiner: sd_xl_refiner_1.0 [7440042bbd], Refiner switch at: 0.8"}
    )
    assert foreign.request.refiner is None
    assert foreign.unmapped["Refiner"] == "sd_xl_refiner_1.0 [7440042bbd]"


# --- ComfyUI -----------------------------------------------------------------


def comfy_graph(**sampler: Any) -> dict[str, Any]:
    """The API-form graph ComfyUI's default workflow writes, with a LoRA on the model."""
    return {
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": 156680208700286,
                "steps": 20,
                "cfg": 8,
                "sampler_name": "dpmpp_2m",
                "scheduler": "karras",
                "denoise": 1,
                "model": ["10", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
                **sampler,
            },
        },
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 640, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a castle on a hill, sunrise", "clip": ["10", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["10", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
        "10": {
            "class_type": "LoraLoader",
            "inputs": {
                "lora_name": "detail.safetensors",
                "strength_model": 0.8,
                "strength_clip": 1,
                "model": ["4", 0],
                "clip": ["4", 1],
            },
        },
    }


def test_comfyui_ksampler_with_linked_prompts_latent_and_checkpoint() -> None:
    graph = comfy_graph(seed=1234)
    imported = import_png(png(prompt=json.dumps(graph), workflow=json.dumps({"nodes": [], "links": []})))

    assert imported.source == "comfyui"
    assert fields(imported) == {
        "prompt": "a castle on a hill, sunrise",
        "negative_prompt": "text, watermark",
        "seed": 1234,
        "num_inference_steps": 20,
        "guidance_scale": 8.0,
        "width": 512,
        "height": 640,
        "sampler": "DPM++ 2M Karras",
        "model": "embedded",
        "variation_seed": None,
        "variation_strength": 0.0,
        "ip_adapter_image": None,
        "ip_adapter_scale": 0.6,
        "loras": [],
        "refiner": None,
        "refiner_switch": 0.8,
    }
    assert imported.unmapped == {
        "CheckpointLoaderSimple#4.ckpt_name": "v1-5-pruned-emaonly.safetensors",
        # Not in Atelier's LoRA folder: listed, and named among the inputs.
        "LoraLoader#10.lora_name": "detail.safetensors",
        "LoraLoader#10.strength_model": "0.8",
        "LoraLoader#10.strength_clip": "1",
    }


@pytest.mark.parametrize(
    ("sampler_name", "scheduler", "ours"),
    [
        ("dpmpp_2m", "karras", "DPM++ 2M Karras"),
        ("dpmpp_2m", "normal", "DPM++ 2M"),
        ("euler_ancestral", "normal", "Euler a"),
        ("euler", "normal", "Euler"),
        ("ddim", "ddim_uniform", "DDIM"),
        ("uni_pc", "normal", "UniPC BH1"),  # ComfyUI's uni_pc is the bh1 solver
        ("uni_pc_bh2", "normal", "UniPC"),
        ("lcm", "sgm_uniform", "LCM"),
        ("euler", "karras", "Euler Karras"),  # diffusers' published table, every schedule
        ("dpmpp_2m_sde", "karras", "DPM++ 2M SDE Karras"),
        ("dpmpp_2m", "exponential", "DPM++ 2M Exponential"),
        ("euler_ancestral", "karras", None),  # no Karras Euler a in diffusers' table
        ("dpm_adaptive", "normal", None),  # no diffusers scheduler at all
    ],
)
def test_comfyui_sampler_names(sampler_name: str, scheduler: str, ours: str | None) -> None:
    graph = comfy_graph(sampler_name=sampler_name, scheduler=scheduler, seed=1)
    imported = import_chunks({"prompt": json.dumps(graph)})
    unmapped = {key: value for key, value in imported.unmapped.items() if key.startswith("KSampler")}

    if ours is None:
        assert imported.request.sampler == DEFAULTS.sampler
        assert unmapped == {"KSampler#3.sampler_name": sampler_name, "KSampler#3.scheduler": scheduler}
    else:
        assert imported.request.sampler == ours
        assert unmapped == {}


def test_comfyui_values_we_cannot_use_are_listed() -> None:
    graph = comfy_graph(seed=2**64, denoise=0.6, steps="20")
    graph["5"]["inputs"].update(width=1000, height=1001, batch_size=4)
    imported = import_chunks({"prompt": json.dumps(graph)})

    assert imported.request.seed == DEFAULTS.seed
    assert (imported.request.width, imported.request.height) == (DEFAULTS.width, DEFAULTS.height)
    assert imported.request.num_inference_steps == DEFAULTS.num_inference_steps
    assert {key: value for key, value in imported.unmapped.items() if "#10" not in key} == {
        "KSampler#3.seed": str(2**64),
        "KSampler#3.steps": "20",
        "KSampler#3.denoise": "0.6",
        "EmptyLatentImage#5.width": "1000",
        "EmptyLatentImage#5.height": "1001",
        "EmptyLatentImage#5.batch_size": "4",
        "CheckpointLoaderSimple#4.ckpt_name": "v1-5-pruned-emaonly.safetensors",
    }
    # ComfyUI's seeds are 64-bit (issue 19): the largest is kept, never replaced by a default.
    assert import_chunks({"prompt": json.dumps(comfy_graph(seed=2**64 - 1))}).request.seed == 2**64 - 1


def test_comfyui_two_pass_graph_reads_the_first_pass_and_lists_the_second() -> None:
    graph = comfy_graph(seed=7)
    graph["11"] = {
        "class_type": "LatentUpscale",
        "inputs": {
            "upscale_method": "nearest-exact",
            "width": 1024,
            "height": 1280,
            "crop": "disabled",
            "samples": ["3", 0],
        },
    }
    graph["12"] = {
        "class_type": "KSamplerAdvanced",
        "inputs": {"add_noise": "enable", "noise_seed": 8, "steps": 10, "cfg": 8, "sampler_name": "euler",
                   "scheduler": "normal", "start_at_step": 0, "end_at_step": 10000,
                   "return_with_leftover_noise": "disable", "model": ["4", 0], "positive": ["6", 0],
                   "negative": ["7", 0], "latent_image": ["11", 0]},
    }  # fmt: skip
    imported = import_chunks({"prompt": json.dumps(graph)})

    assert (imported.request.seed, imported.request.width, imported.request.height) == (7, 512, 640)
    assert json.loads(imported.unmapped["hires fix: KSamplerAdvanced#12"])["noise_seed"] == 8
    assert json.loads(imported.unmapped["hires fix: LatentUpscale#11"])["width"] == 1024


def test_comfyui_graph_with_two_first_passes_is_refused() -> None:
    graph = comfy_graph()
    graph["13"] = {**graph["3"], "inputs": {**graph["3"]["inputs"], "seed": 2}}
    with pytest.raises(MetadataError, match="has 2 sampler nodes and 2 of them start from an empty latent or an image"):
        import_chunks({"prompt": json.dumps(graph)})


def test_comfyui_ksampler_advanced_alone() -> None:
    graph = comfy_graph()
    graph["3"]["class_type"] = "KSamplerAdvanced"
    inputs = graph["3"]["inputs"]
    del inputs["seed"], inputs["denoise"]
    inputs.update(add_noise="enable", noise_seed=99, start_at_step=0, end_at_step=10000,
                  return_with_leftover_noise="disable")  # fmt: skip
    imported = import_chunks({"prompt": json.dumps(graph)})

    assert imported.request.seed == 99
    assert not [key for key in imported.unmapped if key.startswith("KSamplerAdvanced")]


def test_comfyui_prompt_through_a_controlnet_node() -> None:
    graph = comfy_graph(positive=["20", 0])
    graph["20"] = {
        "class_type": "ControlNetApply",
        "inputs": {"strength": 0.9, "conditioning": ["6", 0], "control_net": ["21", 0], "image": ["22", 0]},
    }
    imported = import_chunks({"prompt": json.dumps(graph)})

    assert imported.request.prompt == "a castle on a hill, sunrise"
    assert imported.task == "controlnet"
    assert imported.task_fields["controls"] == [
        {"preprocessor": "none", "conditioning_scale": 0.9, "guidance_start": 0.0, "guidance_end": 1.0}
    ]


# --- InvokeAI ----------------------------------------------------------------

INVOKEAI = {
    "generation_mode": "txt2img",
    "positive_prompt": "a cozy cabin in the woods",
    "negative_prompt": "people",
    "width": 768,
    "height": 512,
    "seed": 3318046045,
    "rand_device": "cpu",
    "cfg_scale": 7.5,
    "cfg_rescale_multiplier": 0,
    "steps": 30,
    "scheduler": "dpmpp_2m_k",
    "clip_skip": 0,
    "model": {"key": "f0ab", "hash": "blake3:9e1f", "name": "Dreamshaper 8", "base": "sd-1", "type": "main"},
    "loras": [],
    "seamless_x": False,
    "app_version": "4.2.4",
}


def test_invokeai_metadata() -> None:
    imported = import_png(png(invokeai_metadata=json.dumps(INVOKEAI)))

    assert imported.source == "invokeai"
    assert fields(imported) == {
        "prompt": "a cozy cabin in the woods",
        "negative_prompt": "people",
        "seed": 3318046045,
        "num_inference_steps": 30,
        "guidance_scale": 7.5,
        "width": 768,
        "height": 512,
        "sampler": "DPM++ 2M Karras",
        "model": "embedded",
        "variation_seed": None,
        "variation_strength": 0.0,
        "ip_adapter_image": None,
        "ip_adapter_scale": 0.6,
        "loras": [],
        "refiner": None,
        "refiner_switch": 0.8,
    }
    assert imported.unmapped == {
        "model": "Dreamshaper 8",
        "model.key": "f0ab",
        "model.hash": "blake3:9e1f",
        "model.base": "sd-1",
        "model.type": "main",
        "app_version": "4.2.4",
    }


def test_invokeai_3_model_and_other_modes_are_listed() -> None:
    meta = {**INVOKEAI, "model": {"model_name": "sd-1.5", "base_model": "sd-1"}, "generation_mode": "img2img",
            "clip_skip": 2, "strength": 0.75, "scheduler": "euler_k"}  # fmt: skip
    imported = import_chunks({"invokeai_metadata": json.dumps(meta)})

    assert imported.request.sampler == DEFAULTS.sampler
    assert (imported.task, imported.task_fields) == ("img2img", {"strength": 0.75})
    assert imported.unmapped == {
        "scheduler": "euler_k",
        "model": "sd-1.5",
        "model.base_model": "sd-1",
        "clip_skip": "2",
        "app_version": "4.2.4",
    }


@pytest.mark.parametrize(
    ("scheduler", "ours"),
    [("dpmpp_2m", "DPM++ 2M"), ("dpmpp_2m_k", "DPM++ 2M Karras"), ("euler", "Euler"), ("euler_a", "Euler a"),
     ("ddim", "DDIM"), ("unipc", "UniPC"), ("lcm", "LCM"), ("heun", None), ("unipc_k", None)],
)  # fmt: skip
def test_invokeai_scheduler_names(scheduler: str, ours: str | None) -> None:
    imported = import_chunks({"invokeai_metadata": json.dumps({"positive_prompt": "a", "scheduler": scheduler})})
    assert imported.request.sampler == (ours or DEFAULTS.sampler)
    assert imported.unmapped == ({} if ours else {"scheduler": scheduler})


def test_invokeai_wrong_types_are_listed() -> None:
    meta = {"positive_prompt": "a", "seed": "12", "steps": True, "cfg_scale": [7, 5], "width": None, "model": 5}
    imported = import_chunks({"invokeai_metadata": json.dumps(meta)})

    assert imported.request == DEFAULTS.replace(prompt="a")
    assert imported.unmapped == {"seed": "12", "steps": "true", "cfg_scale": "[7, 5]", "model": "5"}


# --- Atelier -----------------------------------------------------------------


def test_atelier_png_gives_back_the_request_for_that_image() -> None:
    request = Text2ImgRequest(
        prompt="a teal square", negative_prompt="noise", seed=10, num_inference_steps=12, guidance_scale=5.5,
        width=256, height=192, sampler="UniPC", batch_size=3, model="org/some-model",
    )  # fmt: skip
    data = encode_png(Image.new("RGB", (32, 32), "teal"), text=png_text_chunks(request.to_dict(), seed=12))

    imported = import_png(io.BytesIO(data))

    assert imported.source == "atelier"  # the `atelier` chunk wins over the `parameters` one it also has
    assert imported.request == request.replace(seed=12, batch_size=1)  # image 2 of the batch, alone
    assert imported.unmapped == {}


def test_to_json_is_our_field_names_plus_source_and_unmapped() -> None:
    imported = import_chunks({"parameters": A1111_KARRAS})
    data = json.loads(imported.to_json())

    assert data.pop("source") == "automatic1111"
    assert data.pop("unmapped") == imported.unmapped
    assert data.pop("inputs") == [
        {"kind": "checkpoint", "name": "v1-5-pruned-emaonly", "field": "model", "picked": None}
    ]
    assert request_from_dict(data) == imported.request


# --- Bad and hostile input ---------------------------------------------------


def test_png_without_known_metadata() -> None:
    with pytest.raises(MetadataError) as raised:
        import_png(png(Software="GIMP", prompt="not json, just words"))
    assert str(raised.value) == (
        "The file carries no generation metadata Atelier can read "
        "(Atelier, AUTOMATIC1111, ComfyUI, Fooocus, InvokeAI or NovelAI)."
    )


@pytest.mark.parametrize(
    ("chunks", "message"),
    [
        ({"parameters": "\nSteps: 20, Sampler: Euler, Seed: 1"}, "AUTOMATIC1111 metadata, prompt must not be empty"),
        ({"prompt": '{"3": {"class_type": "KSampler",'}, "ComfyUI metadata is not valid JSON"),
        ({"invokeai_metadata": "[1, 2]"}, "InvokeAI metadata must be a JSON object, not list"),
        ({"invokeai_metadata": "[" * 100_000 + "]" * 100_000}, "InvokeAI metadata is not valid JSON"),
        ({"invokeai_metadata": '{"seed": 1' + "0" * 5000 + "}"}, "InvokeAI metadata is not valid JSON"),
        ({"invokeai_metadata": '{"positive_prompt": {"a": 1}}'}, "prompt must be text; got dict"),
        ({"atelier": '{"task": ["txt2img"], "prompt": "a"}'}, "task must be text"),
        ({"atelier": '{"task": "txt2img", "prompt": "a", "eta": 1}'}, "Text2ImgRequest has no field eta"),
        ({"atelier": '{"task": "txt2img", "prompt": "a", "image_seed": "3"}'}, "image_seed must be a whole number"),
        ({"atelier": '{"task": "txt2img", "prompt": "a", "guidance_scale": NaN}'}, "guidance_scale must be a number"),
        ({"prompt": '{"1": 5}'}, "Node '1' of the file's ComfyUI graph has no class_type"),
        ({"prompt": '{"1": {"class_type": "KSampler", "inputs": []}}'}, "has no inputs object"),
        ({"prompt": '{"1": {"class_type": "CLIPTextEncode", "inputs": {"text": "a"}}}'}, "has no sampler node"),
        ({"parameters": "a" * (MAX_CHUNK_CHARS + 1)}, "Atelier reads at most 1,000,000"),
    ],
)
def test_bad_metadata_is_one_clear_sentence(chunks: dict[str, str], message: str) -> None:
    with pytest.raises(MetadataError) as raised:
        import_chunks(chunks)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_comfyui_link_cycles_and_wrong_links_end() -> None:
    graph = comfy_graph(positive=["20", 0], negative=[{"x": 1}, 0], latent_image="5", model=["404", 0])
    graph["20"] = {"class_type": "ConditioningCombine", "inputs": {"conditioning": ["21", 0]}}
    graph["21"] = {"class_type": "ConditioningSetArea", "inputs": {"conditioning": ["20", 0]}}
    with pytest.raises(MetadataError, match="does not take its positive input from a text encoder"):
        import_chunks({"prompt": json.dumps(graph)})

    graph["20"]["inputs"]["conditioning"] = ["6", 0]
    imported = import_chunks({"prompt": json.dumps(graph)})
    assert imported.request.prompt == "a castle on a hill, sunrise"
    assert imported.request.negative_prompt == ""
    assert imported.unmapped["KSampler#3.latent_image"] == "5"


def test_hostile_a1111_settings_line_is_read_in_linear_time() -> None:
    for line in ("a " * 490_000, "a-" * 490_000, 'k: "' + "x" * 990_000, "x" + " " * 990_000 + "y: 1, z: 2, w: 3"):
        started = time.perf_counter()
        try:
            import_chunks({"parameters": "a prompt\n" + line})
        except MetadataError:
            pass  # too long a prompt, for most of them
        assert time.perf_counter() - started < 2, line[:10]


def test_long_unmapped_values_are_shortened() -> None:
    imported = import_chunks({"parameters": "a cat\nSteps: 20, Sampler: Euler, Seed: 1, Note: " + "n" * 5000})
    assert imported.unmapped["Note"] == "n" * 1000 + "… (5,000 characters)"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not an image Atelier can read"),
        (b"\x89PNG\r\n\x1a\n garbage", "not an image Atelier can read"),
        ("jpeg", "The file carries no generation metadata"),  # a JPEG without EXIF
        ("gif", "is a GIF image; Atelier reads metadata from PNG, JPEG and WebP files"),
        ("truncated", "The PNG is damaged"),
        ("huge", "Atelier reads at most 67,108,864 pixels"),
    ],
)
def test_files_that_are_not_readable_pngs(data: bytes | str, message: str) -> None:
    if data in ("jpeg", "gif"):
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buffer, format=data.upper())
        data = buffer.getvalue()
    elif data == "truncated":
        whole = encode_png(Image.effect_noise((256, 256), 50).convert("RGB"), text={"parameters": "a"})
        data = whole[: len(whole) // 2]
    elif data == "huge":
        # A valid header claiming 10,000 x 10,000 pixels; nothing is decoded.
        whole = png()
        header = bytearray(whole[:33])
        header[16:24] = (10_000).to_bytes(4, "big") * 2
        header[29:33] = zlib.crc32(bytes(header[12:29])).to_bytes(4, "big")
        data = bytes(header) + whole[33:]
    with pytest.raises(MetadataError, match=message):
        import_png(data)  # type: ignore[arg-type]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MetadataError, match="does not exist"):
        import_png(tmp_path / "nope.png")


def test_oversized_compressed_chunk() -> None:
    info = PngInfo()
    info.add_text("parameters", "a" * 2_000_000, zip=True)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG", pnginfo=info)
    with pytest.raises(MetadataError, match="Decompressed data too large"):
        import_png(buffer.getvalue())
