"""Live previews: what they show, at what size, from which decoder, and how often."""

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderTiny, StableDiffusionPipeline

from pipelines import previews
from pipelines.embedded.world import classify
from pipelines.engine import Engine
from pipelines.previews import DenoisedTap, LatentPreviewer, PreviewPacer
from pipelines.samplers import make_scheduler

PROMPTS = [
    ("a red circle on a blue background", 1),
    ("a white square on a green background", 2),
    ("a yellow triangle on a black background", 3),
    ("an orange circle on a purple background", 4),
]


@pytest.fixture(scope="module")
def embedded():
    return Engine().load("embedded").base


@pytest.fixture(scope="module")
def previewer(embedded):
    return LatentPreviewer.for_pipeline(embedded)


def sample(pipe, prompt, seed, *, sampler="DPM++ 2M", steps=20, batch=1):
    """Final latents of a run, and the scheduler it ran with."""
    pipe.scheduler = make_scheduler(sampler, pipe.scheduler.config)
    output = pipe(
        [prompt] * batch,
        num_inference_steps=steps,
        guidance_scale=5.0,
        width=64,
        height=64,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
    )
    return output.images


def decoded(pipe, latents):
    with torch.no_grad():
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return pipe.image_processor.postprocess(image, output_type="pil")[0]


# -- what the embedded model's previews show ----------------------------------------------


def test_the_embedded_model_previews_through_its_own_small_vae(previewer):
    assert previewer.kind == "vae"
    assert "not SD's or SDXL's" in previewer.note  # why not TAESD, in the note the UI can show


def test_the_preview_of_the_final_latents_is_the_decoded_image(embedded, previewer):
    for prompt, seed in PROMPTS:
        latents = sample(embedded, prompt, seed)
        image, preview = decoded(embedded, latents), previewer.preview(latents)
        assert preview.size == image.size == (64, 64)
        difference = np.abs(np.asarray(preview, dtype=int) - np.asarray(image, dtype=int))
        assert difference.max() <= 1 and difference.mean() < 0.05, prompt  # rounding only
        assert (classify(preview).background, classify(preview).colour) == (
            classify(image).background,
            classify(image).colour,
        )


@pytest.mark.parametrize("sampler", ["DPM++ 2M", "Euler", "UniPC"])
def test_a_quarter_of_the_way_in_the_denoised_estimate_already_shows_the_background(embedded, previewer, sampler):
    """x0 is what the picture will be; x_t at step 5 of 20 is still mostly noise."""
    read_x0, read_xt = [], []
    pipe = embedded
    for prompt, seed in PROMPTS:
        at_step_5 = {}

        def on_step_end(pipeline, step, timestep, tensors):
            if step == 4:
                at_step_5["x0"], at_step_5["xt"] = tap.latest.clone(), tensors["latents"].clone()
            return tensors

        pipe.scheduler = make_scheduler(sampler, pipe.scheduler.config)
        tap = DenoisedTap(pipe.scheduler)
        assert tap.latest is None
        output = pipe(
            prompt,
            num_inference_steps=20,
            guidance_scale=5.0,
            width=64,
            height=64,
            generator=torch.Generator().manual_seed(seed),
            output_type="latent",
            callback_on_step_end=on_step_end,
        )
        final = classify(decoded(pipe, output.images)).background
        assert at_step_5["x0"].shape == output.images.shape
        read_x0.append(classify(previewer.preview(at_step_5["x0"])).background == final)
        read_xt.append(classify(previewer.preview(at_step_5["xt"])).background == final)
    assert all(read_x0), read_x0
    assert sum(read_xt) < len(read_xt), read_xt


def test_the_preview_has_the_output_size_or_the_one_asked_and_picks_the_image_of_a_batch(embedded, previewer):
    latents = sample(embedded, "a red circle on a blue background", 5, steps=6, batch=2)
    assert latents.shape[-2:] == (16, 16)
    first, second = previewer.preview(latents), previewer.preview(latents, index=1)
    assert first.size == second.size == (64, 64)
    assert first.tobytes() != second.tobytes()
    assert previewer.preview(latents[1:]).tobytes() == second.tobytes()
    assert previewer.preview(latents, (128, 96)).size == (128, 96)


# -- the linear map ---------------------------------------------------------------------------


def test_the_linear_map_is_fitted_to_the_vae_and_beats_a_flat_colour(embedded):
    """Least squares on round trips of synthetic pictures; checked on pictures it was not fitted on.

    The embedded VAE is far from linear (hence ``vae`` for it), but the fit
    still halves the error of the best single colour.
    """
    linear = LatentPreviewer.for_pipeline(embedded, method="linear")
    assert linear.kind == "linear" and linear.linear.weight.shape == (4, 3)
    assert 0 < linear.linear.rms_error < 0.5
    vae = embedded.vae
    pictures = previews._fitting_pictures(12, 32, seed=99)
    with torch.no_grad():
        latents = vae.encode(pictures).latent_dist.mode()
        truth = vae.decode(latents).sample.clamp(-1, 1)
    scaled = latents * vae.config.scaling_factor
    images = [
        np.asarray(embedded.image_processor.postprocess(truth[i : i + 1], output_type="pil")[0], dtype=float)
        for i in range(12)
    ]
    fitted = np.mean(
        [np.abs(np.asarray(linear.preview(scaled, index=i), dtype=float) - images[i]).mean() for i in range(12)]
    )
    mean_colour = np.mean([image.reshape(-1, 3).mean(axis=0) for image in images], axis=0)
    flat = np.mean([np.abs(mean_colour - image).mean() for image in images])
    assert fitted < 0.6 * flat, (fitted, flat)
    preview = linear.preview(scaled)
    assert preview.size == (32, 32)
    # Nearest-neighbour upscaling: each latent pixel is a flat 4x4 block.
    block = np.asarray(preview)[:4, :4].reshape(-1, 3)
    assert (block == block[0]).all()


# -- TAESD --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_sd(tiny_sd_folder):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_taesd_is_unavailable_here_and_says_why(embedded, tiny_sd, tmp_path):
    folder, reason = previews.find_taesd(embedded.vae)
    assert folder is None
    assert reason == (
        "TAESD is not used: this model's VAE (scaling factor 0.86602, 4 latent channels) "
        "is not SD's or SDXL's, which TAESD was made for."
    )
    # The tiny SD's VAE has SD's latent scaling, so only the cache stands in the way.
    folder, reason = previews.find_taesd(tiny_sd.vae, cache_dir=tmp_path)
    assert folder is None
    assert (
        reason
        == "TAESD is not used: madebyollin/taesd is not in the local Hugging Face cache, and previews never download it."
    )
    with pytest.raises(ValueError, match="madebyollin/taesd is not in the local Hugging Face cache"):
        LatentPreviewer.for_pipeline(tiny_sd, method="taesd", cache_dir=tmp_path)
    fallback = LatentPreviewer.for_pipeline(tiny_sd, cache_dir=tmp_path)
    assert fallback.kind == "vae" and fallback.note.startswith(reason)


def _cache_taesd(cache, repo):
    """A TAESD laid out in a Hugging Face cache the way a download leaves it (random weights)."""
    commit = "0" * 40
    root = cache / f"models--{repo.replace('/', '--')}"
    torch.manual_seed(0)
    AutoencoderTiny().save_pretrained(root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    return root / "snapshots" / commit


def test_a_cached_taesd_is_used_for_sd_latents(tiny_sd, tmp_path):
    snapshot = _cache_taesd(tmp_path, "madebyollin/taesd")
    assert json.loads((snapshot / "config.json").read_text())["_class_name"] == "AutoencoderTiny"
    previewer = LatentPreviewer.for_pipeline(tiny_sd, cache_dir=tmp_path)
    assert previewer.kind == "taesd" and "madebyollin/taesd" in previewer.note
    latents = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    preview = previewer.preview(latents)
    assert preview.size == (64, 64)  # the tiny SD's output size, whatever TAESD's own factor
    with torch.no_grad():
        taesd = previewer.decoder.decode(latents).sample[0]  # TAESD takes the latents as the sampler has them
    expected = ((taesd.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(previewer.preview(latents, (256, 256))), expected)
    # SDXL latents ask for taesdxl, which this cache does not have.
    folder, reason = previews.find_taesd(_with_scaling(tiny_sd.vae, 0.13025), cache_dir=tmp_path)
    assert folder is None and "madebyollin/taesdxl is not in the local Hugging Face cache" in reason


def _with_scaling(vae, factor):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_config({**vae.config, "scaling_factor": factor})


# -- pacing ---------------------------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_the_pacer_previews_every_few_steps_but_not_the_last():
    clock = Clock()
    pacer = PreviewPacer(every=5, budget=1.0, clock=clock)
    due = []
    for step in range(20):
        clock.now += 1.0
        if pacer.maybe(step, 20, lambda: "image") is not None:
            due.append(step + 1)
    assert due == [5, 10, 15]  # the 20th is the finished image


def test_the_pacer_keeps_previews_within_the_budget():
    clock = Clock()
    pacer = PreviewPacer(every=1, budget=0.05, clock=clock)

    def expensive():  # a preview costs a third of a step, as the embedded VAE on one CPU thread
        clock.now += 0.33
        return "image"

    for step in range(40):
        clock.now += 1.0
        pacer.maybe(step, 40, expensive)
    assert pacer.made > 0 and pacer.skipped > 0
    assert pacer.made * 0.33 <= 0.05 * clock.now
    with pytest.raises(ValueError):
        PreviewPacer(every=0)


def test_the_engine_sends_previews_while_it_samples_and_they_change_nothing():
    """Engine.run(preview=...) as the studio calls it: a few pictures during the run, and the same result pixels
    as a run nobody watched (the preview only reads the sampler's estimate)."""
    from pipelines.engine import Engine
    from pipelines.requests import Text2ImgRequest

    engine = Engine()
    request = Text2ImgRequest(
        prompt="a yellow square on a purple background",
        width=64,
        height=64,
        num_inference_steps=20,
        guidance_scale=5.0,
        seed=6,
        sampler="Euler",
    )
    shown = []
    watched = engine.run(request, preview=shown.append)
    unwatched = engine.run(request)
    assert 1 <= len(shown) <= 3  # every 5 steps, never the last, within the time budget
    assert all(image.size == (64, 64) for image in shown)
    assert np.array_equal(np.asarray(watched.images[0]), np.asarray(unwatched.images[0]))
