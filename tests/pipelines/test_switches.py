"""Memory and speed switches, and how many models stay resident."""

import numpy as np
import pytest
import torch

from pipelines.devices import Switches
from pipelines.engine import Engine
from pipelines.errors import ModelError
from pipelines.requests import Text2ImgRequest

REQUEST = {
    "prompt": "a red circle on a blue background",
    "width": 64,
    "height": 64,
    "num_inference_steps": 20,
    "guidance_scale": 5.0,
    "seed": 3,
}


def pixels(engine, **fields):
    return np.asarray(engine.run(Text2ImgRequest(**{**REQUEST, **fields})).images[0], dtype=int)


def test_least_recently_used_model_leaves_first(tiny_sd_folder, tiny_sdxl_folder):
    engine = Engine(max_models=2)
    embedded_first = pixels(engine)
    engine.load(str(tiny_sd_folder))
    engine.load("embedded")  # used again: now the most recent
    engine.load(str(tiny_sdxl_folder))  # a third model: the tiny SD one goes
    assert engine.resident() == ["embedded", str(tiny_sdxl_folder)]
    assert engine.loads == 3
    # Loaded again after leaving, a model gives the same pixels.
    engine.load(str(tiny_sd_folder))
    assert engine.resident() == [str(tiny_sdxl_folder), str(tiny_sd_folder)]
    assert np.array_equal(pixels(engine), embedded_first)
    assert engine.loads == 5


def test_one_resident_model_swaps_on_every_switch(tiny_sd_folder):
    engine = Engine(max_models=1)
    engine.load("embedded")
    engine.load(str(tiny_sd_folder))
    assert engine.resident() == [str(tiny_sd_folder)]


@pytest.mark.parametrize(
    "switches", [Switches(attention="math"), Switches(vae_tiling="on"), Switches(vae_tiling="off")]
)
def test_switches_are_recorded_and_keep_the_picture(switches):
    baseline = pixels(Engine())
    engine = Engine(switches=switches)
    assert np.abs(pixels(engine) - baseline).max() <= 2
    environment = engine.environment()
    assert {
        key: environment[key] for key in ("attention", "vae_tiling", "cpu_offload", "compile")
    } == switches.fingerprint()


def test_vae_tiling_decodes_a_large_image_in_tiles(tiny_sd_folder):
    engine = Engine(switches=Switches(vae_tiling="on"))
    image = engine.run(
        Text2ImgRequest(
            prompt="a red square",
            model=str(tiny_sd_folder),
            width=640,
            height=576,
            num_inference_steps=1,
            guidance_scale=1.0,
        )
    ).images[0]
    assert image.size == (640, 576)
    assert engine.load(str(tiny_sd_folder)).base.vae.use_tiling


def test_compile_is_recorded():
    """Compiling the UNet is measured by hand (same pixels; the first image took 123 s on this CPU), not run here."""
    assert Engine(switches=Switches(compile=True)).environment()["compile"] is True


@pytest.mark.parametrize(
    "switches, message",
    [
        (Switches(cpu_offload=True), "cpu_offload needs a CUDA GPU"),
        (Switches(attention="fast"), "attention must be one of sdpa, math, xformers"),
        (Switches(vae_tiling="sometimes"), "vae_tiling must be one of auto, on, off"),
    ],
)
def test_bad_switches_are_one_sentence(switches, message):
    with pytest.raises(ModelError, match=message):
        Engine(switches=switches)


def test_gpu_levers_at_their_defaults_leave_the_record_as_it_was():
    """Records made before the GPU levers existed must still compare equal to a rerun at the defaults."""
    assert set(Switches().fingerprint()) == {"attention", "vae_tiling", "cpu_offload", "compile"}


def test_gpu_levers_keep_the_picture_and_are_recorded(tiny_sdxl_folder):
    request = {"model": str(tiny_sdxl_folder), "sampler": "Euler"}
    baseline = pixels(Engine(), **request)
    switches = Switches(channels_last=True, fuse_qkv=True, vae_upcast="off")
    engine = Engine(switches=switches)
    assert np.abs(pixels(engine, **request) - baseline).max() <= 2
    unet = engine.load(str(tiny_sdxl_folder)).base.unet
    assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    attention = unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1
    assert attention.fused_projections and hasattr(attention, "to_qkv")
    assert engine.load(str(tiny_sdxl_folder)).base.vae.config.force_upcast is False
    environment = engine.environment()
    assert (environment["channels_last"], environment["fuse_qkv"], environment["vae_upcast"]) == (True, True, "off")
    assert "compile_scope" not in environment  # at its default


@pytest.mark.parametrize(
    "switches, message",
    [
        (Switches(compile_scope="partial"), "compile_scope must be one of whole, regional; got 'partial'"),
        (Switches(compile_mode="fast"), "compile_mode must be one of default, max-autotune-no-cudagraphs"),
        (Switches(vae_upcast="always"), "vae_upcast must be one of auto, off; got 'always'"),
        (Switches(fuse_qkv=True, attention="math"), "fuse_qkv works with attention 'sdpa' only; got attention 'math'"),
    ],
)
def test_bad_gpu_levers_are_one_sentence(switches, message):
    with pytest.raises(ModelError, match=message):
        Engine(switches=switches)
