"""Samplers by the names AUTOMATIC1111 and ComfyUI write, on the embedded model (issue 19).

Every sampler runs on the embedded model, reruns to the same pixels (the
stochastic ones draw their noise from the seeded generators), and a name in
another tool's spelling lands on the sampler diffusers' table gives it.
"""

import numpy as np
import pytest

from pipelines.engine import Engine
from pipelines.requests import MAX_SEED, RequestError, Text2ImgRequest
from pipelines.samplers import SAMPLER_NAMES, SamplerNotAvailable, make_scheduler, sampler_from

# The names Atelier had before issue 19, with the options their stored records were made with.
OLD = {
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": False}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "Euler": ("EulerDiscreteScheduler", {"use_karras_sigmas": False}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "DDIM": ("DDIMScheduler", {"clip_sample": False}),
    "UniPC": ("UniPCMultistepScheduler", {"solver_type": "bh2"}),
    "LCM": ("LCMScheduler", {}),
}


@pytest.fixture(scope="module")
def engine():
    return Engine()


@pytest.fixture(scope="module")
def base_config(engine):
    return engine.load("embedded").base.scheduler.config


def pixels(image):
    return np.asarray(image, dtype=np.int16)


def run(engine, sampler, seed=7, steps=3):
    request = Text2ImgRequest(
        prompt="a red circle on a blue background", sampler=sampler, seed=seed, num_inference_steps=steps,
        width=64, height=64,
    )  # fmt: skip
    return engine.run(request).images[0]


def test_the_old_names_keep_their_schedulers(base_config):
    for name, (class_name, options) in OLD.items():
        scheduler = make_scheduler(name, base_config)
        assert type(scheduler).__name__ == class_name, name
        for key, value in options.items():
            assert scheduler.config[key] == value, (name, key)
        # Nothing else is forced on them: the model's own exponential / beta choices stand as before.
        assert not scheduler.config.get("use_exponential_sigmas"), name
    assert SAMPLER_NAMES[: len(OLD)] == tuple(OLD)


@pytest.mark.parametrize(
    ("name", "class_name", "options"),
    [
        ("DPM++ 2M SDE Karras", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}),
        ("DPM++ 2M SDE", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": False}),
        ("DPM++ SDE Karras", "DPMSolverSinglestepScheduler", {"use_karras_sigmas": True}),
        ("DPM2", "KDPM2DiscreteScheduler", {"use_karras_sigmas": False}),
        ("DPM2 a Karras", "KDPM2AncestralDiscreteScheduler", {"use_karras_sigmas": True}),
        ("Heun Exponential", "HeunDiscreteScheduler", {"use_exponential_sigmas": True, "use_karras_sigmas": False}),
        ("LMS Karras", "LMSDiscreteScheduler", {"use_karras_sigmas": True}),
        ("DEIS", "DEISMultistepScheduler", {}),
        ("UniPC BH1", "UniPCMultistepScheduler", {"solver_type": "bh1"}),
        ("Euler a SGM Uniform", "EulerAncestralDiscreteScheduler", {"timestep_spacing": "trailing"}),
        ("Euler SGM Uniform", "EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
    ],
)  # fmt: skip
def test_new_names_follow_diffusers_table(base_config, name, class_name, options):
    scheduler = make_scheduler(name, base_config)
    assert type(scheduler).__name__ == class_name
    for key, value in options.items():
        assert scheduler.config[key] == value, key
    # The model's own betas are kept.
    assert scheduler.config["beta_schedule"] == base_config["beta_schedule"]
    assert scheduler.config["prediction_type"] == "v_prediction"


@pytest.mark.parametrize("sampler", [name for name in SAMPLER_NAMES if name not in OLD])
def test_every_new_sampler_runs_on_the_embedded_model_and_reruns_identically(engine, sampler):
    first, again = run(engine, sampler), run(engine, sampler)
    assert first.size == (64, 64)
    assert np.array_equal(pixels(first), pixels(again))
    if not sampler.startswith("UniPC"):
        # A picture, not a flat or NaN-black square. diffusers' UniPC (Atelier's "UniPC" since before
        # issue 19 too) ends in NaN on the embedded zero-terminal-SNR v-prediction model; tiny SD is fine.
        assert 10 < pixels(first).std()


def test_stochastic_samplers_follow_the_seed(engine):
    for sampler in ("DPM++ 2M SDE Karras", "DPM2 a", "Euler a"):
        assert not np.array_equal(pixels(run(engine, sampler, seed=1)), pixels(run(engine, sampler, seed=2)))


def test_a_64_bit_seed_runs_and_reruns_with_the_noise_comfyui_draws(engine):
    top = run(engine, "DPM++ 2M SDE", seed=MAX_SEED)
    assert np.array_equal(pixels(top), pixels(run(engine, "DPM++ 2M SDE", seed=MAX_SEED)))
    # torch's CPU generator (where Atelier and ComfyUI both draw noise) seeds its Mersenne Twister
    # from the seed's low 32 bits, so a 64-bit seed's image is its low half's, as in ComfyUI.
    assert np.array_equal(pixels(top), pixels(run(engine, "DPM++ 2M SDE", seed=MAX_SEED % 2**32)))


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        # AUTOMATIC1111 before 1.9: one string.
        (("DPM++ 2M SDE Karras",), "DPM++ 2M SDE Karras"),
        (("DPM++ 2M",), "DPM++ 2M"),
        (("LMS Karras",), "LMS Karras"),
        (("DPM2 a",), "DPM2 a"),
        # AUTOMATIC1111 1.9 on: sampler and "Schedule type"; Automatic is the sampler's own default.
        (("DPM++ 2M", "Karras"), "DPM++ 2M Karras"),
        (("DPM++ 2M SDE", "Exponential"), "DPM++ 2M SDE Exponential"),
        (("DPM++ 2M SDE", "Automatic"), "DPM++ 2M SDE Exponential"),
        (("DPM++ 2M", "Automatic"), "DPM++ 2M Karras"),
        (("Euler a", "Automatic"), "Euler a"),
        (("Euler", "SGM Uniform"), "Euler SGM Uniform"),
        (("Heun", "Uniform"), "Heun"),
        # ComfyUI: sampler_name and scheduler.
        (("dpmpp_2m_sde_gpu", "karras"), "DPM++ 2M SDE Karras"),
        (("euler_ancestral", "normal"), "Euler a"),
        (("dpmpp_2m", "karras"), "DPM++ 2M Karras"),
        (("dpmpp_sde", "exponential"), "DPM++ SDE Exponential"),
        (("euler", "sgm_uniform"), "Euler SGM Uniform"),
        (("euler", "simple"), "Euler SGM Uniform"),
        (("uni_pc", "normal"), "UniPC BH1"),
        (("uni_pc_bh2", "normal"), "UniPC"),
        (("dpm_2_ancestral", "karras"), "DPM2 a Karras"),
        (("lms", "karras"), "LMS Karras"),
        (("deis", "exponential"), "DEIS Exponential"),
    ],
)
def test_other_tools_names(written, expected):
    assert sampler_from(*written) == expected
    assert expected in SAMPLER_NAMES
    Text2ImgRequest(prompt="p", sampler=expected)  # a request takes it


@pytest.mark.parametrize(
    ("written", "message"),
    [
        (("DPM adaptive",), "sampler 'DPM adaptive' has no diffusers equivalent here; allowed: DPM++ 2M, "),
        (("euler", "beta"), "scheduler 'beta' (ComfyUI) has no diffusers equivalent here; allowed: normal, karras, "),
        (("Euler a", "Karras"), "sampler 'Euler a' with scheduler 'Karras' has no diffusers equivalent here"),
        (("dpmpp_3m_sde_gpu", "karras"), "sampler 'dpmpp_3m_sde_gpu' has no diffusers equivalent here; allowed: "),
        ((None,), "sampler must be a name such as 'DPM++ 2M Karras'; got None."),
    ],
)
def test_names_without_an_equivalent_are_said(written, message):
    with pytest.raises(SamplerNotAvailable) as raised:
        sampler_from(*written)
    assert str(raised.value).startswith(message)


def test_a_request_refuses_a_name_it_does_not_know():
    with pytest.raises(RequestError, match="sampler must be one of DPM"):
        Text2ImgRequest(prompt="p", sampler="dpmpp_2m_sde_gpu")
