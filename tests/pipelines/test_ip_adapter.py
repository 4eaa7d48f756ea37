"""IP-Adapter with tiny components: a random CLIP vision model and adapter weights shaped for the tiny UNets.

The weight file is written in the original IP-Adapter layout that
``load_ip_adapter`` reads (``image_proj.*`` and ``ip_adapter.<n>.to_k_ip``/
``to_v_ip``, n = 1, 3, 5, ... over the UNet's cross-attentions; see
``_convert_ip_adapter_attn_to_diffusers`` in diffusers/loaders/unet.py), so the
real loader, processors and pipelines run.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from pipelines import ip_adapter
from pipelines.devices import Switches
from pipelines.engine import Engine
from pipelines.ip_adapter import IPAdapterError

PROJECTION = 16  # the tiny image encoder's embedding width
CALL = {"prompt": "a red circle", "width": 64, "height": 64, "num_inference_steps": 2, "guidance_scale": 5.0}


def noise_image(seed: int) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(40, 40, 3) * 255).astype("uint8"))


REFERENCE, OTHER_REFERENCE = noise_image(0), noise_image(1)
INIT = noise_image(2).resize((64, 64))


def save_image_encoder(folder, projection_dim=PROJECTION):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(5)
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        image_size=32,
        patch_size=4,
        projection_dim=projection_dim,
    )
    CLIPVisionModelWithProjection(config).save_pretrained(folder / "image_encoder")


def adapter_state(unet_config, *, cross_attention_dim=None, seed=7):
    """Plain IP-Adapter weights for a UNet config, sized the way diffusers sizes its processors."""
    generator = torch.Generator().manual_seed(seed)
    width = cross_attention_dim or unet_config.cross_attention_dim
    channels = list(unet_config.block_out_channels)
    state = {
        "image_proj.proj.weight": torch.randn(4 * width, PROJECTION, generator=generator),
        "image_proj.proj.bias": torch.randn(4 * width, generator=generator),
        "image_proj.norm.weight": torch.ones(width),
        "image_proj.norm.bias": torch.zeros(width),
    }
    layer = 1
    for name in cross_attention_names(unet_config):
        if name.startswith("mid_block"):
            hidden = channels[-1]
        elif name.startswith("up_blocks"):
            hidden = channels[::-1][int(name.split(".")[1])]
        else:
            hidden = channels[int(name.split(".")[1])]
        for key in ("to_k_ip", "to_v_ip"):
            state[f"ip_adapter.{layer}.{key}.weight"] = torch.randn(hidden, width, generator=generator)
        layer += 2
    return state


def cross_attention_names(unet_config):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
    return [name for name in unet.attn_processors if name.endswith("attn2.processor")]


def adapter_folder(path, unet_config, *, weight_name="ip-adapter_sd15.safetensors", **state_options):
    path.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state(unet_config, **state_options), str(path / weight_name))
    save_image_encoder(path)
    return path


def run(pipe, **extra):
    generator = torch.Generator("cpu").manual_seed(3)
    arguments = {**CALL, **extra}
    if "image" in arguments:
        del arguments["width"], arguments["height"]
    return pipe(**arguments, generator=generator, output_type="np").images[0]


@pytest.fixture
def sd(tiny_sd_folder):
    engine = Engine()
    return engine, str(tiny_sd_folder)


def test_reference_image_steers_and_scale_zero_is_the_baseline(sd, tmp_path):
    engine, model = sd
    pipe = engine.pipeline(model, "txt2img")
    baseline = run(pipe)
    ip_adapter.detach(pipe)  # what a run without a reference image does first: nothing, when nothing is attached
    assert np.array_equal(run(pipe), baseline)
    weights = ip_adapter.find("sd", adapter_folder(tmp_path / "ipa", pipe.unet.config))

    ip_adapter.attach(pipe, weights, 1.0)
    steered = run(pipe, ip_adapter_image=REFERENCE)
    assert np.abs(steered - baseline).max() > 0.05
    assert np.abs(run(pipe, ip_adapter_image=OTHER_REFERENCE) - steered).max() > 0.01

    ip_adapter.attach(pipe, weights, 0.0)
    assert np.array_equal(run(pipe, ip_adapter_image=REFERENCE), baseline)

    ip_adapter.detach(pipe)
    assert ip_adapter.attached(pipe) is None
    assert np.array_equal(run(pipe), baseline)

    ip_adapter.attach(pipe, weights, 1.0)  # back on after a detach: the same steering
    assert np.array_equal(run(pipe, ip_adapter_image=REFERENCE), steered)


def test_without_a_reference_image_an_attached_adapter_must_be_detached(sd, tmp_path):
    """Why detach exists: with the adapter in the UNet, a run without a reference image fails in diffusers."""
    engine, model = sd
    pipe = engine.pipeline(model, "txt2img")
    ip_adapter.attach(pipe, ip_adapter.find("sd", adapter_folder(tmp_path / "ipa", pipe.unet.config)), 0.0)
    with pytest.raises((TypeError, ValueError)):
        run(pipe)


def test_pipelines_from_the_same_base_share_one_load(sd, tmp_path):
    engine, model = sd
    base = engine.pipeline(model, "txt2img")
    img2img = engine.pipeline(model, "img2img")  # derived before the adapter was loaded
    before = run(img2img, image=INIT, strength=0.8)
    weights = ip_adapter.find("sd", adapter_folder(tmp_path / "ipa", base.unet.config))

    ip_adapter.attach(base, weights, 1.0)
    processors = base.unet.attn_processors
    ip_adapter.attach(img2img, weights, 1.0)
    # The same processor objects: nothing was loaded a second time, and the image encoder is the base's.
    assert all(img2img.unet.attn_processors[name] is processors[name] for name in processors)
    assert img2img.image_encoder is base.image_encoder is not None
    assert np.abs(run(img2img, image=INIT, strength=0.8, ip_adapter_image=REFERENCE) - before).max() > 0.05
    inpaint = engine.pipeline(model, "inpaint")  # derived after: shares it too
    ip_adapter.attach(inpaint, weights, 1.0)
    assert inpaint.image_encoder is base.image_encoder

    ip_adapter.detach(img2img)  # off for one is off for all: they share the UNet
    assert ip_adapter.attached(base) is None
    assert np.array_equal(run(img2img, image=INIT, strength=0.8), before)
    ip_adapter.attach(base, weights, 0.5)
    assert all(base.unet.attn_processors[name] is processors[name] for name in processors)


def test_changed_weights_load_again(sd, tmp_path):
    engine, model = sd
    pipe = engine.pipeline(model, "txt2img")
    folder = adapter_folder(tmp_path / "ipa", pipe.unet.config)
    ip_adapter.attach(pipe, ip_adapter.find("sd", folder), 1.0)
    first = run(pipe, ip_adapter_image=REFERENCE)
    save_file(adapter_state(pipe.unet.config, seed=8), str(folder / "ip-adapter_sd15.safetensors"))
    changed = ip_adapter.find("sd", folder)
    ip_adapter.attach(pipe, changed, 1.0)
    assert ip_adapter.attached(pipe) == changed
    assert np.abs(run(pipe, ip_adapter_image=REFERENCE) - first).max() > 0.01


def test_math_attention_is_kept_on_and_off(tiny_sd_folder, tmp_path):
    """diffusers' own unload_ip_adapter would put SDPA back; the "math" switch must survive the adapter."""
    from diffusers.models.attention_processor import AttnProcessor, IPAdapterAttnProcessor

    engine = Engine(switches=Switches(attention="math"))
    pipe = engine.pipeline(str(tiny_sd_folder), "txt2img")
    originals = pipe.unet.attn_processors
    baseline = run(pipe)
    ip_adapter.attach(pipe, ip_adapter.find("sd", adapter_folder(tmp_path / "ipa", pipe.unet.config)), 0.0)
    assert {type(p) for p in pipe.unet.attn_processors.values()} == {AttnProcessor, IPAdapterAttnProcessor}
    assert np.array_equal(run(pipe, ip_adapter_image=REFERENCE), baseline)
    ip_adapter.detach(pipe)
    assert all(pipe.unet.attn_processors[name] is originals[name] for name in originals)
    assert np.array_equal(run(pipe), baseline)


def test_sdxl(tiny_sdxl_folder, tmp_path):
    engine = Engine()
    pipe = engine.pipeline(str(tiny_sdxl_folder), "txt2img")
    baseline = run(pipe)
    folder = adapter_folder(tmp_path / "ipa", pipe.unet.config, weight_name="ip-adapter_sdxl.safetensors")
    weights = ip_adapter.find("sdxl", folder)
    assert weights.weight_name == "ip-adapter_sdxl.safetensors"
    ip_adapter.attach(pipe, weights, 1.0)
    steered = run(pipe, ip_adapter_image=REFERENCE)
    assert np.abs(steered - baseline).max() > 0.05
    assert np.abs(run(pipe, ip_adapter_image=OTHER_REFERENCE) - steered).max() > 0.01
    ip_adapter.attach(pipe, weights, 0.0)
    assert np.array_equal(run(pipe, ip_adapter_image=REFERENCE), baseline)
    ip_adapter.detach(pipe)
    assert np.array_equal(run(pipe), baseline)


# -- where the weights are --------------------------------------------------------


def test_missing_hub_weights_say_what_to_download(tmp_path):
    available, reason = ip_adapter.availability("sd", cache_dir=tmp_path / "empty-cache")
    assert not available
    assert "h94/IP-Adapter" in reason and "hf download h94/IP-Adapter models/ip-adapter_sd15.safetensors" in reason
    assert "models/image_encoder/model.safetensors" in reason
    available, reason = ip_adapter.availability("sdxl", cache_dir=tmp_path / "empty-cache")
    assert not available and "sdxl_models/ip-adapter_sdxl.safetensors" in reason
    available, reason = ip_adapter.availability("flux")
    assert not available and "FLUX" in reason
    assert not ip_adapter.availability("flux", tmp_path)[0]


def test_weights_in_the_hub_cache_are_found_and_load(sd, tmp_path):
    """The cache's own layout (refs/main -> snapshots/<commit>/...), so no network and no download."""
    engine, model = sd
    pipe = engine.pipeline(model, "txt2img")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--h94--IP-Adapter"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    adapter_folder(snapshot / "models", pipe.unet.config)
    available, reason = ip_adapter.availability("sd", cache_dir=tmp_path / "cache")
    assert available, reason
    weights = ip_adapter.find("sd", cache_dir=tmp_path / "cache")
    assert weights.record() == {"name": "h94/IP-Adapter/models/ip-adapter_sd15.safetensors", "revision": commit}
    assert weights.root == snapshot
    baseline = run(pipe)
    ip_adapter.attach(pipe, weights, 1.0)
    assert np.abs(run(pipe, ip_adapter_image=REFERENCE) - baseline).max() > 0.05


def test_incomplete_local_folders_are_explained(tmp_path):
    assert ip_adapter.availability("sd", tmp_path / "nowhere") == (
        False,
        f"IP-Adapter folder {str(tmp_path / 'nowhere')!r} does not exist.",
    )
    folder = tmp_path / "ipa"
    folder.mkdir()
    available, reason = ip_adapter.availability("sd", folder)
    assert not available and "no .safetensors weight file" in reason
    (folder / "a.safetensors").write_bytes(b"")
    (folder / "b.safetensors").write_bytes(b"")
    available, reason = ip_adapter.availability("sd", folder)
    assert not available and "several .safetensors files (a.safetensors, b.safetensors)" in reason
    (folder / "b.safetensors").unlink()
    available, reason = ip_adapter.availability("sd", folder)
    assert not available and "image_encoder/config.json and model.safetensors" in reason
    save_image_encoder(folder)
    available, reason = ip_adapter.availability("sd", folder)
    assert available and str(folder.resolve()) in reason


def test_folder_revision_follows_the_contents(sd, tmp_path):
    engine, model = sd
    folder = adapter_folder(tmp_path / "ipa", engine.pipeline(model, "txt2img").unet.config)
    first = ip_adapter.find("sd", folder).revision
    assert len(first) == 64 and ip_adapter.find("sd", folder).revision == first
    save_file(
        adapter_state(engine.pipeline(model, "txt2img").unet.config, seed=9),
        str(folder / "ip-adapter_sd15.safetensors"),
    )
    assert ip_adapter.find("sd", folder).revision != first


# -- bad weights: a clear error, and the pipeline as it was ----------------------------------------------


def _bad_folder(tmp_path, write):
    folder = tmp_path / "bad"
    folder.mkdir()
    save_image_encoder(folder)
    write(folder / "ip-adapter_sd15.safetensors")
    return folder


def _broken_encoder(unet_config):
    def write(path):
        save_file(adapter_state(unet_config), str(path))
        (path.parent / "image_encoder" / "model.safetensors").write_bytes(b"cut short by a failed download")

    return write


def _sdxl_sized(unet_config):
    return lambda path: save_file(adapter_state(unet_config, cross_attention_dim=64), str(path))


def _without_norm(unet_config):
    state = {k: v for k, v in adapter_state(unet_config).items() if k != "image_proj.norm.weight"}
    return lambda path: save_file(state, str(path))


def _half_plus(unet_config):
    """An "IP-Adapter Plus" with only its latents: diffusers swaps the processors, then fails on the projection."""
    state = {k: v for k, v in adapter_state(unet_config).items() if not k.startswith("image_proj.")}
    state["image_proj.latents"] = torch.zeros(1, 4, 32)
    return lambda path: save_file(state, str(path))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda config: lambda path: path.write_bytes(b"not a safetensors file"), "is not a readable safetensors file"),
        (
            lambda config: lambda path: save_file({"lora_unet.down.weight": torch.zeros(2, 2)}, str(path)),
            "is not an IP-Adapter",
        ),
        (_sdxl_sized, "does not fit this model: it was made for a text width of 64 and this model's is 32"),
        (_without_norm, r"is incomplete: it has no image_proj.norm.weight of shape \(32,\)"),
        (_half_plus, r"could not be loaded \(KeyError: 'proj_in.weight'\)"),
        (_broken_encoder, "could not be loaded"),
    ],
    ids=["garbage", "other-keys", "other-family", "incomplete", "half-loaded", "broken-encoder"],
)
def test_a_bad_weight_file_is_a_clear_error_and_changes_nothing(sd, tmp_path, make, message):
    engine, model = sd
    pipe = engine.pipeline(model, "txt2img")
    originals = pipe.unet.attn_processors
    baseline = run(pipe)
    weights = ip_adapter.find("sd", _bad_folder(tmp_path, make(pipe.unet.config)))
    with pytest.raises(IPAdapterError, match=message):
        ip_adapter.attach(pipe, weights, 1.0)
    assert all(pipe.unet.attn_processors[name] is originals[name] for name in originals)
    assert pipe.image_encoder is None and pipe.unet.encoder_hid_proj is None
    assert np.array_equal(run(pipe), baseline)


def test_an_image_encoder_of_another_width_is_refused(sd, tmp_path):
    engine, model = sd
    pipe = engine.pipeline(model, "txt2img")
    folder = adapter_folder(tmp_path / "ipa", pipe.unet.config)
    config = folder / "image_encoder" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "projection_dim": 24}))
    with pytest.raises(IPAdapterError, match="takes image embeddings of 16 numbers and the encoder makes 24"):
        ip_adapter.attach(pipe, ip_adapter.find("sd", folder), 1.0)


@pytest.mark.parametrize("scale", [-0.1, 2.5, float("nan"), True, "1"])
def test_scale_out_of_range_is_refused(scale):
    with pytest.raises(IPAdapterError, match="ip_adapter_scale must be a number from 0 to 2"):
        ip_adapter.check_scale(scale)


# -- through the engine, as a request asks for it -----------------------------------


def test_a_request_with_a_reference_image_through_the_engine(tiny_sd_folder, tmp_path):
    from pipelines.engine import Engine
    from pipelines.requests import ImageRef, Img2ImgRequest, Text2ImgRequest

    engine = Engine()
    folder = adapter_folder(tmp_path / "adapter", engine.load(str(tiny_sd_folder)).base.unet.config)
    engine.ip_adapter_folders["sd"] = str(folder)
    common = {
        "prompt": "a red square",
        "model": str(tiny_sd_folder),
        "width": 64,
        "height": 64,
        "num_inference_steps": 2,
        "seed": 4,
    }
    baseline = engine.run(Text2ImgRequest(**common))
    steered = engine.run(Text2ImgRequest(**common, ip_adapter_image=ImageRef.of(noise_image(1)), ip_adapter_scale=1.0))
    assert not np.array_equal(np.asarray(steered.images[0]), np.asarray(baseline.images[0]))
    assert steered.environment["ip_adapter"]["revision"] and "ip_adapter" not in baseline.environment
    # The next run without a reference is the baseline again, whichever task it is.
    again = engine.run(Text2ImgRequest(**common))
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(baseline.images[0]))
    photo = ImageRef.of(noise_image(2).resize((64, 64)))
    image_to_image = engine.run(
        Img2ImgRequest(
            prompt="a red square",
            model=str(tiny_sd_folder),
            image=photo,
            ip_adapter_image=ImageRef.of(noise_image(1)),
            num_inference_steps=2,
        )
    )
    assert image_to_image.environment["ip_adapter"] == steered.environment["ip_adapter"]
    assert engine.loads == 1


def test_a_reference_image_without_weights_is_refused_before_running(tiny_sd_folder, tmp_path, monkeypatch):
    from pipelines.engine import Engine
    from pipelines.ip_adapter import IPAdapterError
    from pipelines.requests import ImageRef, Text2ImgRequest

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    request = Text2ImgRequest(
        prompt="a red square",
        model=str(tiny_sd_folder),
        width=64,
        height=64,
        ip_adapter_image=ImageRef.of(noise_image(1)),
    )
    with pytest.raises(IPAdapterError, match="IP-Adapter weights h94/IP-Adapter"):
        Engine().check(request)
