"""LoRA files: listed with their sha256, applied with their weights, cleared back to the exact pixels.

The LoRAs are made here, the way a trainer makes them: PEFT LoRA layers on a
copy of the model's UNet attention projections, random non-zero weights,
saved with diffusers' ``save_lora_weights``.
"""

import copy
import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoPipelineForImage2Image, StableDiffusionPipeline, StableDiffusionXLPipeline
from peft import LoraConfig, inject_adapter_in_model
from peft.utils import get_peft_model_state_dict
from PIL import Image
from safetensors.torch import save_file

from pipelines import lora
from pipelines.engine import Engine
from pipelines.requests import RequestError, Text2ImgRequest

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def _lora_layers(module, targets, seed, scale):
    """PEFT LoRA layers on a copy of ``module``, with random non-zero A and B (trained ones are not zero)."""
    module = copy.deepcopy(module)
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=targets), module)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    return get_peft_model_state_dict(module)


def make_lora(path, pipe, *, seed, scale=0.3, text_encoder=False):
    """A LoRA file for ``pipe``'s UNet (and text encoder), saved as a trainer saves one."""
    layers = {"unet_lora_layers": _lora_layers(pipe.unet, UNET_TARGETS, seed, scale)}
    if text_encoder:
        layers["text_encoder_lora_layers"] = _lora_layers(pipe.text_encoder, TEXT_TARGETS, seed + 1, scale)
    type(pipe).save_lora_weights(str(path.parent), weight_name=path.name, **layers)
    return path


def drop(pipe, adapters):
    """Delete adapters a test added, so the module's pipeline holds only the shared ones."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted")
        pipe.delete_adapters(adapters)


def pixels(pipe, prompt="a red circle on a blue background"):
    output = pipe(
        prompt, num_inference_steps=2, width=64, height=64, generator=torch.Generator().manual_seed(0), output_type="np"
    )
    return output.images[0]


@dataclass
class Tiny:
    pipe: StableDiffusionPipeline  # the one the LoRAs are applied to
    baseline: np.ndarray  # its pixels before any LoRA was loaded
    folder: Path  # LoRAs made for it
    maker: StableDiffusionPipeline  # an untouched copy to make more LoRAs from


@pytest.fixture(scope="module")
def sd(tiny_sd_folder, tmp_path_factory):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_folder)
    pipe.set_progress_bar_config(disable=True)
    maker = StableDiffusionPipeline.from_pretrained(tiny_sd_folder)
    folder = tmp_path_factory.mktemp("loras")
    make_lora(folder / "style.safetensors", maker, seed=1)
    make_lora(folder / "texture.safetensors", maker, seed=2)
    make_lora(folder / "with-text.safetensors", maker, seed=3, text_encoder=True)
    save_file({"weight": torch.randn(4, 4)}, folder / "not-a-lora.safetensors")
    (folder / "garbage.safetensors").write_bytes(b"this is not a safetensors file at all")
    (folder / "notes.txt").write_text("not listed")
    return Tiny(pipe=pipe, baseline=pixels(pipe), folder=folder, maker=maker)


@pytest.fixture(autouse=True)
def no_lora_left_on(request):
    yield
    if "sd" in request.fixturenames:
        lora.clear(request.getfixturevalue("sd").pipe)


# -- the folder ---------------------------------------------------------------------


def test_available_lists_each_file_by_name_with_its_sha256(sd):
    folder = sd.folder
    files = lora.available(folder)
    assert [f.name for f in files] == ["garbage", "not-a-lora", "style", "texture", "with-text"]
    for f in files:
        assert f.sha256 == hashlib.sha256(f.path.read_bytes()).hexdigest()
    by_name = {f.name: f for f in files}
    assert by_name["style"].problem is None and not by_name["style"].text_encoder
    assert by_name["with-text"].text_encoder
    assert "not a LoRA" in by_name["not-a-lora"].problem and "no LoRA weights" in by_name["not-a-lora"].problem
    assert "not a LoRA" in by_name["garbage"].problem and "safetensors" in by_name["garbage"].problem
    assert lora.available(folder / "missing") == []


def test_the_sha256_follows_the_file_when_it_changes(tmp_path):
    path = tmp_path / "a.safetensors"
    save_file({"unet.x.lora_A.weight": torch.zeros(2, 2)}, path)
    first = lora.find("a", tmp_path).sha256
    assert lora.find("a", tmp_path).sha256 == first  # cached by path, mtime and size
    save_file({"unet.x.lora_A.weight": torch.ones(2, 2)}, path)  # same size, new contents
    assert lora.find("a", tmp_path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest() != first


@pytest.mark.parametrize(
    ("keys", "family"),
    [
        ({"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": (4, 768)}, "sd"),
        ({"lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 1024)}, "sd"),
        ({"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": (4, 2048)}, "sdxl"),
        ({"lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 1280)}, "sdxl"),
        ({"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": (4, 3072)}, "flux"),
        ({"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": (4, 32)}, None),
    ],
)
def test_the_family_is_guessed_from_the_keys(tmp_path, keys, family):
    save_file({key: torch.zeros(shape) for key, shape in keys.items()}, tmp_path / "x.safetensors")
    assert lora.find("x", tmp_path).family == family


# -- applying -----------------------------------------------------------------------


def test_a_lora_at_weight_1_changes_the_image_and_at_weight_0_gives_the_baseline(sd):
    pipe, baseline, folder = sd.pipe, sd.baseline, sd.folder
    lora.apply(pipe, [("style", 1.0)], folder)
    changed = pixels(pipe)
    assert np.abs(changed - baseline).max() > 0.05
    lora.apply(pipe, [("style", 0.0)], folder)
    assert np.array_equal(pixels(pipe), baseline)
    lora.apply(pipe, [("style", 1.0)], folder)
    assert np.array_equal(pixels(pipe), changed)  # the same adapter again, not a fresh random one


def test_two_loras_at_once_each_with_its_own_weight(sd):
    pipe, baseline, folder = sd.pipe, sd.baseline, sd.folder
    lora.apply(pipe, [("style", 0.5), ("texture", 1.5)], folder)
    both = pixels(pipe)
    lora.apply(pipe, [("style", 0.5)], folder)
    style = pixels(pipe)
    lora.apply(pipe, [("texture", 1.5)], folder)
    texture = pixels(pipe)
    lora.apply(pipe, [("style", 1.5), ("texture", 0.5)], folder)
    swapped = pixels(pipe)
    for other in (baseline, style, texture, swapped):
        assert np.abs(both - other).max() > 0.01
    # At weight 0 the second adds exactly nothing.
    lora.apply(pipe, [("style", 0.5), ("texture", 0.0)], folder)
    assert np.array_equal(pixels(pipe), style)


def test_clear_restores_the_exact_pixels_from_before_any_lora(sd):
    pipe, baseline, folder = sd.pipe, sd.baseline, sd.folder
    lora.apply(pipe, [("style", 1.0), ("texture", -1.0)], folder)
    assert not np.array_equal(pixels(pipe), baseline)
    lora.clear(pipe)
    assert np.array_equal(pixels(pipe), baseline)
    lora.apply(pipe, [("texture", 1.0)], folder)
    assert lora.apply(pipe, [], folder) == []  # no LoRAs is a clear too
    assert np.array_equal(pixels(pipe), baseline)
    # And they come back on when asked for again.
    lora.apply(pipe, [("style", 1.0)], folder)
    assert not np.array_equal(pixels(pipe), baseline)


def test_each_file_is_loaded_once_and_shared_by_every_task_pipeline(sd, tmp_path, monkeypatch):
    pipe, baseline = sd.pipe, sd.baseline
    make_lora(tmp_path / "once.safetensors", sd.maker, seed=8)
    make_lora(tmp_path / "twice.safetensors", sd.maker, seed=9)
    loads = []
    load = pipe.load_lora_weights
    monkeypatch.setattr(pipe, "load_lora_weights", lambda *a, **k: (loads.append(k["adapter_name"]), load(*a, **k)))
    img2img = AutoPipelineForImage2Image.from_pipe(pipe)  # shares the UNet and text encoder
    img2img.set_progress_bar_config(disable=True)
    picture = Image.fromarray((baseline * 255).round().astype(np.uint8))

    def repaint():
        output = img2img(
            "a red circle",
            image=picture,
            strength=0.6,
            num_inference_steps=3,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        )
        return output.images[0]

    plain = repaint()
    for _ in range(3):
        lora.apply(pipe, [("once", 1.0), ("twice", 0.5)], tmp_path)
        lora.apply(img2img, [("twice", 1.0)], tmp_path)
    names = [lora.adapter_name(lora.find(name, tmp_path)) for name in ("once", "twice")]
    assert loads == names
    assert set(names) <= set(pipe.get_list_adapters()["unet"]) == set(img2img.get_list_adapters()["unet"])
    lora.apply(pipe, [("once", 1.0)], tmp_path)
    assert not np.array_equal(repaint(), plain)  # applied through the base, seen by img2img
    lora.clear(img2img)  # cleared through img2img, gone from the base too
    assert np.array_equal(repaint(), plain)
    assert np.array_equal(pixels(pipe), baseline)
    drop(pipe, names)


def test_a_changed_file_is_loaded_again_and_the_old_version_dropped(sd, tmp_path):
    pipe, baseline = sd.pipe, sd.baseline
    path = make_lora(tmp_path / "evolving.safetensors", sd.maker, seed=10)
    lora.apply(pipe, [("evolving", 1.0)], tmp_path)
    first = pixels(pipe)
    old = lora.adapter_name(lora.find("evolving", tmp_path))
    make_lora(path, sd.maker, seed=11)
    records = lora.apply(pipe, [("evolving", 1.0)], tmp_path)
    assert records[0]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    new = lora.adapter_name(lora.find("evolving", tmp_path))
    adapters = pipe.get_list_adapters()["unet"]
    assert old not in adapters and new in adapters
    assert not np.array_equal(pixels(pipe), first)
    drop(pipe, [new])
    lora.clear(pipe)
    assert np.array_equal(pixels(pipe), baseline)


def test_names_that_differ_only_in_punctuation_are_two_loras(sd, tmp_path):
    make_lora(tmp_path / "soft-light.safetensors", sd.maker, seed=12)
    make_lora(tmp_path / "soft_light.safetensors", sd.maker, seed=13)
    lora.apply(sd.pipe, [("soft-light", 1.0), ("soft_light", 1.0)], tmp_path)
    both = pixels(sd.pipe)
    lora.apply(sd.pipe, [("soft-light", 1.0)], tmp_path)
    assert not np.array_equal(pixels(sd.pipe), both)
    drop(sd.pipe, [lora.adapter_name(lora.find(name, tmp_path)) for name in ("soft-light", "soft_light")])


def test_the_records_name_each_lora_its_sha256_and_weight(sd):
    pipe, folder = sd.pipe, sd.folder
    expected = [
        {
            "name": "texture",
            "sha256": hashlib.sha256((folder / "texture.safetensors").read_bytes()).hexdigest(),
            "weight": 0.25,
        },
        {
            "name": "style",
            "sha256": hashlib.sha256((folder / "style.safetensors").read_bytes()).hexdigest(),
            "weight": -1.0,
        },
    ]
    asked = [("texture", 0.25), ("style", -1)]
    assert lora.records(asked, folder) == expected
    assert lora.apply(pipe, asked, folder) == expected


# -- refusals -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "message"),
    [
        (
            [("nope", 1.0)],
            "LoRA 'nope' does not exist; it must be one of garbage, not-a-lora, style, texture, with-text.",
        ),
        ([("../style", 1.0)], "LoRA '../style' does not exist"),
        ([("style", 2.5)], "the weight of LoRA 'style' must be a number from -2 to 2; got 2.5."),
        ([("style", float("nan"))], "the weight of LoRA 'style' must be a number from -2 to 2; got nan."),
        ([("style", "1")], "the weight of LoRA 'style' must be a number from -2 to 2; got '1'."),
        ([("style", True)], "the weight of LoRA 'style' must be a number from -2 to 2; got True."),
        ([("style", 1.0), ("style", 0.5)], "LoRA 'style' is listed twice; give it one weight."),
        ([("style", 1.0)] * 9, "at most 8 LoRAs can be used at once; got 9."),
        (
            [("not-a-lora", 1.0)],
            "not-a-lora.safetensors is not a LoRA: it has no LoRA weights (lora_A/lora_B or lora_down/lora_up).",
        ),
        ([("garbage", 1.0)], "garbage.safetensors is not a LoRA: it cannot be read as safetensors"),
    ],
)
def test_bad_requests_are_refused_in_one_sentence_and_change_nothing(sd, asked, message):
    pipe, folder = sd.pipe, sd.folder
    lora.apply(pipe, [("style", 1.0)], folder)
    before = pixels(pipe)
    with pytest.raises(lora.LoraError) as caught:
        lora.apply(pipe, asked, folder)
    assert str(caught.value).startswith(message)
    assert isinstance(caught.value, RequestError)  # the studio shows it like any input error
    assert str(caught.value).count(". ") == 0 and str(caught.value).endswith(".")
    assert np.array_equal(pixels(pipe), before)  # refused before anything was switched


def test_an_empty_folder_says_so(tmp_path):
    with pytest.raises(
        lora.LoraError,
        match=r"LoRA 'style' does not exist; it must be a \.safetensors file in .* \(there are none yet\)\.",
    ):
        lora.records([("style", 1.0)], tmp_path)


def test_a_lora_for_another_model_is_refused_and_leaves_no_lora_on(sd, tiny_sdxl_folder, tmp_path):
    pipe, baseline, folder = sd.pipe, sd.baseline, sd.folder
    xl = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_folder)
    make_lora(tmp_path / "for-xl.safetensors", xl, seed=4)
    lora.apply(pipe, [("style", 1.0)], folder)
    with pytest.raises(
        lora.LoraError,
        match=r"^LoRA 'for-xl' does not fit this model; its layers were made for another kind of model\.$",
    ):
        lora.apply(pipe, [("for-xl", 1.0)], tmp_path)
    assert lora.adapter_name(lora.find("for-xl", tmp_path)) not in pipe.get_list_adapters()["unet"]
    assert np.array_equal(pixels(pipe), baseline)


def test_text_encoder_layers_load_weigh_and_clear_back_to_the_exact_pixels(sd):
    """Most trained LoRAs carry text-encoder layers too; they load here whatever transformers asks of PEFT."""
    pipe, baseline, folder = sd.pipe, sd.baseline, sd.folder
    lora.apply(pipe, [("style", 1.0)], folder)
    unet_only = pixels(pipe)
    lora.apply(pipe, [("with-text", 1.0)], folder)
    full = pixels(pipe)
    assert not np.array_equal(full, baseline) and not np.array_equal(full, unet_only)
    assert lora.adapter_name(lora.find("with-text", folder)) in pipe.get_list_adapters()["text_encoder"]
    lora.apply(pipe, [("with-text", 0.5)], folder)
    half = pixels(pipe)
    assert not np.array_equal(half, full) and not np.array_equal(half, baseline)
    lora.apply(pipe, [("with-text", 0.0)], folder)
    assert np.array_equal(pixels(pipe), baseline)
    lora.apply(pipe, [("with-text", 1.0)], folder)
    assert np.array_equal(pixels(pipe), full)  # loaded once, switched on again
    lora.clear(pipe)
    assert np.array_equal(pixels(pipe), baseline)


def _kohya_text_encoder_lora(path, encoder, *, rank, alpha, seed):
    """A text-encoder-only LoRA in kohya's format (lora_te_*, lora_down / lora_up, an alpha per layer),
    and the weights it should add to each projection: alpha / rank * up @ down."""
    generator = torch.Generator().manual_seed(seed)
    tensors, deltas = {}, {}
    for name, module in encoder.named_modules():
        if name.endswith(("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")):
            key = "lora_te_" + ("text_model." + name.removeprefix("text_model.")).replace(".", "_")
            down = torch.randn(rank, module.in_features, generator=generator) * 0.3
            up = torch.randn(module.out_features, rank, generator=generator) * 0.3
            tensors |= {
                f"{key}.lora_down.weight": down,
                f"{key}.lora_up.weight": up,
                f"{key}.alpha": torch.tensor(float(alpha)),
            }
            deltas[name] = alpha / rank * up @ down
    save_file(tensors, str(path))
    return deltas


def test_a_kohya_text_encoder_lora_adds_alpha_over_rank_times_up_down(sd, tmp_path):
    """Checked against the arithmetic, not against a loader: the encoder with the LoRA on equals a copy of it
    whose projections had ``weight * alpha / rank * up @ down`` added by hand."""
    pipe = sd.pipe
    deltas = _kohya_text_encoder_lora(tmp_path / "words.safetensors", sd.maker.text_encoder, rank=4, alpha=2, seed=9)
    merged = copy.deepcopy(sd.maker.text_encoder)
    with torch.no_grad():
        for name, module in merged.named_modules():
            if name in deltas:
                module.weight += 0.7 * deltas[name]
    tokens = pipe.tokenizer(["a red circle on a blue background"], padding="max_length", return_tensors="pt").input_ids
    lora.apply(pipe, [("words", 0.7)], tmp_path)
    with torch.no_grad():
        ours = pipe.text_encoder(tokens)[0]
        expected = merged(tokens)[0]
        plain = sd.maker.text_encoder(tokens)[0]
    assert not torch.allclose(ours, plain, atol=1e-3)
    assert torch.allclose(ours, expected, atol=1e-5)
    lora.clear(pipe)
    drop(pipe, [lora.adapter_name(lora.find("words", tmp_path))])


def test_the_prompt_cache_knows_text_encoder_loras(tmp_path):
    """A cached prompt embedding made without a text-encoder LoRA (or at another weight) is not reused with it."""
    engine = Engine(loras_dir=tmp_path)
    make_lora(tmp_path / "words.safetensors", engine.load("embedded").base, seed=4, text_encoder=True)
    common = {
        "prompt": "a red circle on a blue background",
        "width": 64,
        "height": 64,
        "num_inference_steps": 20,
        "guidance_scale": 5.0,
        "seed": 2,
    }

    def run(**fields):
        return np.asarray(engine.run(Text2ImgRequest(**common, **fields)).images[0])

    plain, full, half = run(), run(loras=[["words", 1.0]]), run(loras=[["words", 0.5]])
    assert not np.array_equal(full, half) and not np.array_equal(full, plain)
    assert np.array_equal(run(loras=[["words", 1.0]]), full)
    assert np.array_equal(run(), plain)


# -- other models -----------------------------------------------------------------------


def test_sdxl_two_text_encoders_one_unet(tiny_sdxl_folder, tmp_path):
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_folder)
    pipe.set_progress_bar_config(disable=True)
    baseline = pixels(pipe)
    make_lora(tmp_path / "xl-style.safetensors", pipe, seed=5)
    make_lora(tmp_path / "xl-light.safetensors", pipe, seed=6)
    lora.apply(pipe, [("xl-style", 1.0)], tmp_path)
    one = pixels(pipe)
    assert np.abs(one - baseline).max() > 0.05
    lora.apply(pipe, [("xl-style", 1.0), ("xl-light", 0.7)], tmp_path)
    assert not np.array_equal(pixels(pipe), one)
    lora.apply(pipe, [("xl-style", 0.0), ("xl-light", 0.0)], tmp_path)
    assert np.array_equal(pixels(pipe), baseline)
    lora.clear(pipe)
    assert np.array_equal(pixels(pipe), baseline)


def test_sdxl_lora_with_both_text_encoders(tiny_sdxl_folder, tmp_path):
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_folder)
    pipe.set_progress_bar_config(disable=True)
    baseline = pixels(pipe)
    layers = {
        "unet_lora_layers": _lora_layers(pipe.unet, UNET_TARGETS, 7, 0.3),
        "text_encoder_lora_layers": _lora_layers(pipe.text_encoder, TEXT_TARGETS, 8, 0.3),
        "text_encoder_2_lora_layers": _lora_layers(pipe.text_encoder_2, TEXT_TARGETS, 9, 0.3),
    }
    StableDiffusionXLPipeline.save_lora_weights(str(tmp_path), weight_name="xl-words.safetensors", **layers)
    lora.apply(pipe, [("xl-words", 1.0)], tmp_path)
    adapter = lora.adapter_name(lora.find("xl-words", tmp_path))
    listed = pipe.get_list_adapters()
    assert all(adapter in listed[part] for part in ("unet", "text_encoder", "text_encoder_2"))
    assert not np.array_equal(pixels(pipe), baseline)
    lora.apply(pipe, [("xl-words", 0.0)], tmp_path)
    assert np.array_equal(pixels(pipe), baseline)


def test_a_request_names_its_loras_and_the_record_keeps_them(tmp_path):
    """Through Engine.run as the studio calls it: weights from the request, name and sha256 in the environment,
    and the next request without LoRAs gives the plain model's pixels again."""
    from pipelines.requests import RequestError, Text2ImgRequest

    engine = Engine(loras_dir=tmp_path)
    make_lora(tmp_path / "brand.safetensors", engine.load("embedded").base, seed=11, scale=0.5)
    common = {
        "prompt": "a red circle on a blue background",
        "width": 64,
        "height": 64,
        "num_inference_steps": 20,
        "guidance_scale": 5.0,
        "seed": 2,
    }
    plain = engine.run(Text2ImgRequest(**common))
    styled = engine.run(Text2ImgRequest(**common, loras=[["brand", 1.0]]))
    assert not np.array_equal(np.asarray(styled.images[0]), np.asarray(plain.images[0]))
    digest = hashlib.sha256((tmp_path / "brand.safetensors").read_bytes()).hexdigest()
    assert styled.environment["loras"] == [{"name": "brand", "sha256": digest, "weight": 1.0}]
    again = engine.run(Text2ImgRequest(**common))
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(plain.images[0]))
    assert "loras" not in again.environment
    # Stored and read back, the request is the same (pairs survive JSON as lists).
    stored = Text2ImgRequest.from_dict(
        json.loads(json.dumps(Text2ImgRequest(**common, loras=[["brand", 0.5]]).to_dict()))
    )
    assert stored.loras == (("brand", 0.5),)
    with pytest.raises(lora.LoraError, match="missing"):
        engine.check(Text2ImgRequest(**common, loras=[["missing", 1.0]]))
    with pytest.raises(RequestError, match="loras must name each LoRA once"):
        Text2ImgRequest(**common, loras=[["brand", 1.0], ["brand", 0.5]])


def test_flux_text_encoder_layers_are_refused_with_the_reason(tiny_flux_folder, tmp_path):
    """FLUX's LoRA loader hands text-encoder layers to transformers, which asks for a newer PEFT than PyPI has today."""
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(tiny_flux_folder)
    layers = {
        "transformer_lora_layers": _lora_layers(pipe.transformer, UNET_TARGETS, 3, 0.3),
        "text_encoder_lora_layers": _lora_layers(pipe.text_encoder, TEXT_TARGETS, 4, 0.3),
    }
    FluxPipeline.save_lora_weights(str(tmp_path), weight_name="flux-words.safetensors", **layers)
    if lora.text_encoder_problem() is None:  # a PEFT new enough for transformers: diffusers' own loader takes them
        lora.apply(pipe, [("flux-words", 1.0)], tmp_path)
        assert pipe.get_list_adapters()["text_encoder"]
        return
    with pytest.raises(
        lora.LoraError,
        match=r"^LoRA 'flux-words' has text-encoder layers, which this install cannot load: transformers .* needs peft .* or newer",
    ):
        lora.apply(pipe, [("flux-words", 1.0)], tmp_path)
    assert not pipe.get_list_adapters().get("transformer")
