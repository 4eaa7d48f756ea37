"""Hostile metadata: cycles, missing links, huge numbers, wrong types. Each gives a request or one sentence."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.webui.imports import test_comfyui as examples
from webui.imports import Catalog, ImportedRequest, MetadataError, import_chunks

IDS = [str(number) for number in range(1, 9)]
KINDS = [
    "KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced", "CLIPTextEncode", "CLIPTextEncodeSDXL",
    "CLIPTextEncodeFlux", "ConditioningZeroOut", "EmptyLatentImage", "EmptySD3LatentImage", "VAEEncode",
    "VAEEncodeForInpaint", "SetLatentNoiseMask", "InpaintModelConditioning", "LoadImage", "LoadImageMask",
    "CheckpointLoaderSimple", "UNETLoader", "LoraLoader", "LoraLoaderModelOnly", "CLIPSetLastLayer", "DualCLIPLoader",
    "ControlNetApply", "ControlNetApplyAdvanced", "ControlNetLoader", "Canny", "FluxGuidance", "BasicGuider",
    "CFGGuider", "RandomNoise", "KSamplerSelect", "BasicScheduler", "ModelSamplingFlux", "LatentUpscale",
    "VAEDecode", "SaveImage", "ConditioningCombine",
]  # fmt: skip
INPUTS = [
    "seed", "noise_seed", "steps", "cfg", "sampler_name", "scheduler", "denoise", "add_noise", "start_at_step",
    "end_at_step", "return_with_leftover_noise", "model", "positive", "negative", "latent_image", "text", "text_g",
    "text_l", "t5xxl", "clip_l", "guidance", "clip", "conditioning", "width", "height", "batch_size", "pixels",
    "mask", "samples", "image", "channel", "ckpt_name", "unet_name", "lora_name", "strength_model", "strength_clip",
    "stop_at_clip_layer", "control_net", "control_net_name", "strength", "start_percent", "end_percent", "noise",
    "guider", "sampler", "sigmas", "grow_mask_by", "max_shift", "base_shift", "type", "clip_name1",
]  # fmt: skip

values = st.one_of(
    st.lists(st.one_of(st.sampled_from(IDS + ["404", ""]), st.integers(-2, 10)), min_size=2, max_size=2),  # links
    st.builds(lambda node, out: [node, out], st.sampled_from(IDS), st.integers(-1, 3)),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["euler", "karras", "dpmpp_2m", "enable", "disable", "flux", "a.safetensors", "simple"]),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
nodes = st.fixed_dictionaries(
    {"class_type": st.sampled_from(KINDS), "inputs": st.dictionaries(st.sampled_from(INPUTS), values, max_size=8)}
)
graphs = st.dictionaries(st.sampled_from(IDS), nodes, min_size=1, max_size=8)

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=20)),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=12,
)
CATALOG = Catalog.of(models=[("m", "/models/m.safetensors")], loras=["a", "detail"])


def outcome(chunks: dict[str, str]) -> ImportedRequest | None:
    try:
        imported = import_chunks(chunks, CATALOG)
    except MetadataError as error:
        message = str(error)
        assert message and "\n" not in message and message.endswith((".", ")")), message
        return None
    json.loads(imported.to_json())  # what the CLI prints and the UI shows
    assert imported.task in ("txt2img", "img2img", "inpaint", "controlnet")
    return imported


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs)
def test_hostile_comfyui_graphs(graph: dict[str, Any]) -> None:
    outcome({"prompt": json.dumps(graph)})


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 60))
def test_long_cycles_and_chains_end(length: int) -> None:
    graph: dict[str, Any] = {
        "1": {"class_type": "KSampler", "inputs": {"positive": ["2", 0], "model": ["2", 0], "latent_image": ["2", 0]}}
    }
    for number in range(2, length + 2):  # each links to the next, and the last back to the first
        onward = [str(number + 1 if number <= length else 2), 0]
        graph[str(number)] = {"class_type": "ConditioningCombine", "inputs": {"conditioning": onward, "model": onward}}
    outcome({"prompt": json.dumps(graph)})


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["invokeai_metadata", "sd-metadata", "parameters", "Comment", "atelier"]), json_values)
def test_hostile_json_for_every_reader(key: str, value: Any) -> None:
    chunks = {key: json.dumps(value)}
    if key == "Comment":
        chunks["Software"] = "NovelAI"
    outcome(chunks)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["invokeai_metadata", "parameters", "Comment"]),
    st.dictionaries(
        st.sampled_from(
            [
                "positive_prompt",
                "prompt",
                "seed",
                "steps",
                "cfg_scale",
                "scale",
                "width",
                "height",
                "scheduler",
                "sampler",
                "model",
                "loras",
                "controlnets",
                "generation_mode",
                "strength",
                "refiner_model",
                "refiner_start",
                "resolution",
                "uc",
                "request_type",
                "base_model",
                "refiner_model",
                "noise_schedule",
            ]
        ),  # fmt: skip
        json_values,
        max_size=10,
    ),
)
def test_hostile_fields_with_the_right_names(key: str, meta: dict[str, Any]) -> None:
    chunks = {key: json.dumps(meta), "Software": "NovelAI", "Description": "a prompt"}
    outcome(chunks)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["parameters", "Dream"]), st.text(max_size=300))
def test_hostile_text(key: str, text: str) -> None:
    outcome({key: text})


def _examples() -> list[dict[str, Any]]:
    """The example graphs of test_comfyui.py, each a shape that reads: mutated below, deep paths run."""
    graphs = [examples.base_graph(), examples.sdxl_graph(), examples.flux_graph(), examples.advanced_graph()]
    controlnet = examples.base_graph(positive=["14", 0], negative=["14", 1])
    controlnet["11"] = examples.node("LoadImage", image="a.png")
    controlnet["12"] = examples.node("Canny", low_threshold=0.4, high_threshold=0.8, image=["11", 0])
    controlnet["13"] = examples.node("ControlNetLoader", control_net_name="control_v11p_sd15_canny.pth")
    controlnet["14"] = examples.node("ControlNetApplyAdvanced", strength=0.8, start_percent=0.0, end_percent=0.7,
                                     positive=["6", 0], negative=["7", 0], control_net=["13", 0], image=["12", 0])  # fmt: skip
    inpaint = examples.base_graph(latent_image=["26", 0], model=["10", 0])
    inpaint["10"] = examples.node("LoraLoader", lora_name="detail.safetensors", strength_model=0.5, strength_clip=0.5,
                                  model=["4", 0], clip=["4", 1])  # fmt: skip
    inpaint["20"] = examples.node("LoadImage", image="b.png")
    inpaint["26"] = examples.node("VAEEncodeForInpaint", grow_mask_by=6, pixels=["20", 0], vae=["4", 2], mask=["20", 1])
    hires = examples.base_graph()
    hires["10"] = examples.node("LatentUpscale", upscale_method="nearest-exact", width=1024, height=1024, crop="disabled",
                                samples=["3", 0])  # fmt: skip
    hires["11"] = examples.node("KSampler", seed=1, steps=10, cfg=8, sampler_name="euler", scheduler="normal",
                                denoise=0.5, model=["4", 0], positive=["6", 0], negative=["7", 0],
                                latent_image=["10", 0])  # fmt: skip
    return graphs + [controlnet, inpaint, hires]


EXAMPLES = _examples()
mutations = st.lists(
    st.tuples(st.sampled_from(["set", "delete_input", "delete_node", "relink"]), st.integers(0, 10**6), values),
    min_size=1,
    max_size=6,
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(EXAMPLES))), mutations)
def test_mutated_example_graphs(which: int, changes: list[tuple[str, int, Any]]) -> None:
    graph = json.loads(json.dumps(EXAMPLES[which]))
    for action, pick, value in changes:
        if not graph:
            break
        node_id = sorted(graph)[pick % len(graph)]
        inputs = graph[node_id]["inputs"]
        names = sorted(inputs)
        if action == "delete_node":
            del graph[node_id]
        elif names and action == "delete_input":
            del inputs[names[pick % len(names)]]
        elif names and action == "set":
            inputs[names[pick % len(names)]] = value
        elif names and action == "relink":  # point a link anywhere, the node itself included: cycles
            inputs[names[pick % len(names)]] = [sorted(graph)[(pick // 7) % len(graph)], pick % 3]
    outcome({"prompt": json.dumps(graph)})
