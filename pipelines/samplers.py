"""Samplers by the names people know from other studios.

Each name maps to a diffusers scheduler class and the options that make it
that sampler. A fresh scheduler is built from the model's own scheduler config
for every run, so one run's step state never leaks into the next and the
model's beta schedule is kept.

The names are AUTOMATIC1111's, in its older one-string form ("DPM++ 2M SDE
Karras"), and the mapping is the table diffusers publishes in its
schedulers overview (docs/source/en/api/schedulers/overview.md): Karras is
``use_karras_sigmas``, exponential ``use_exponential_sigmas``, SGM uniform
(and ComfyUI's "simple") ``timestep_spacing="trailing"``, "DPM++ 2M SDE"
``algorithm_type="sde-dpmsolver++"``, "DPM++ SDE" the single-step
DPM-Solver. ``sampler_from`` reads the other ways a name is written: A1111's
newer sampler plus "Schedule type", and ComfyUI's ``sampler_name`` plus
``scheduler``.

The stochastic samplers (Euler a, DPM2 a, DPM++ 2M SDE) draw their step noise
from the run's seeded generators, one per image, so they rerun identically.
k-diffusion's "DPM++ SDE" draws from a Brownian tree (diffusers'
DPMSolverSDEScheduler, which needs torchsde); the table diffusers publishes
maps the name to the deterministic single-step solver instead, and so does
this module.

This module imports no torch until a scheduler is built.
"""

from __future__ import annotations

from typing import Any

# The sigma schedules a sampler name may end with, and the options that make them. The model's own
# choices are switched off explicitly, so "Karras" never quietly becomes Karras-and-exponential.
_PLAIN = {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False}
SCHEDULES: dict[str, dict[str, Any]] = {
    "Karras": {**_PLAIN, "use_karras_sigmas": True},
    "Exponential": {**_PLAIN, "use_exponential_sigmas": True},
    "SGM Uniform": {**_PLAIN, "timestep_spacing": "trailing"},
}

# name -> (diffusers scheduler class, extra config). Options a model's own
# config may set differently (Karras sigmas) are stated explicitly.
_SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    # The first seven are the names Atelier has always had: their options stay as they were, so
    # every stored record reruns to the same pixels.
    "DPM++ 2M": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False},
    ),
    "DPM++ 2M Karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "Euler": ("EulerDiscreteScheduler", {"use_karras_sigmas": False}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    # Latents are not images: clipping them to [-1, 1] (DDIM's default) spoils any model whose config does not say otherwise.
    "DDIM": ("DDIMScheduler", {"clip_sample": False}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    # LCM only gives clean images with LCM-distilled weights or an LCM LoRA; it
    # is offered because those are common, and runs (noisily) on any model.
    "LCM": ("LCMScheduler", {}),
}

# Samplers added for issue 19, each with the schedules its diffusers class supports.
_SAMPLER_FAMILIES: dict[str, tuple[str, dict[str, Any], tuple[str, ...]]] = {
    "DPM++ 2M": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2},
        ("Exponential", "SGM Uniform"),  # plain and Karras are above
    ),
    "DPM++ 2M SDE": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
        ("", "Karras", "Exponential", "SGM Uniform"),
    ),
    "DPM++ SDE": (
        "DPMSolverSinglestepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2},
        ("", "Karras", "Exponential", "SGM Uniform"),
    ),
    "DPM2": ("KDPM2DiscreteScheduler", {}, ("", "Karras", "Exponential", "SGM Uniform")),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}, ("", "Karras", "Exponential", "SGM Uniform")),
    "Euler": ("EulerDiscreteScheduler", {}, ("Karras", "Exponential", "SGM Uniform")),
    # diffusers' ancestral Euler has no sigma options, only the spacing.
    "Euler a": ("EulerAncestralDiscreteScheduler", {}, ("SGM Uniform",)),
    "Heun": ("HeunDiscreteScheduler", {}, ("", "Karras", "Exponential", "SGM Uniform")),
    "LMS": ("LMSDiscreteScheduler", {}, ("", "Karras", "Exponential", "SGM Uniform")),
    "DEIS": ("DEISMultistepScheduler", {}, ("", "Karras", "Exponential", "SGM Uniform")),
    "UniPC": ("UniPCMultistepScheduler", {}, ("Karras", "Exponential", "SGM Uniform")),
    # A1111's and ComfyUI's "UniPC" / "uni_pc" are the bh1 variant; Atelier's "UniPC" has always been bh2.
    "UniPC BH1": ("UniPCMultistepScheduler", {"solver_type": "bh1"}, ("", "Karras", "Exponential", "SGM Uniform")),
    "DDIM": ("DDIMScheduler", {"clip_sample": False}, ("SGM Uniform",)),
}


def _add_families() -> None:
    for base, (class_name, options, schedules) in _SAMPLER_FAMILIES.items():
        for schedule in schedules:
            name = f"{base} {schedule}" if schedule else base
            if schedule and name in _SAMPLERS:
                raise AssertionError(f"sampler {name!r} is listed twice")
            _SAMPLERS.setdefault(name, (class_name, {**options, **(SCHEDULES[schedule] if schedule else _PLAIN)}))


_add_families()

SAMPLER_NAMES: tuple[str, ...] = tuple(_SAMPLERS)

# Flow-matching models (FLUX) are trained for one sampler; "Euler" is its name here.
FLOW_MATCHING_SAMPLERS = ("Euler",)

# ComfyUI's KSampler `sampler_name` -> the base name here (comfy/samplers.py KSAMPLER_NAMES). The _gpu
# variants differ from their plain ones only in where the Brownian noise is drawn.
COMFYUI_SAMPLERS = {
    "euler": "Euler",
    "euler_ancestral": "Euler a",
    "heun": "Heun",
    "dpm_2": "DPM2",
    "dpm_2_ancestral": "DPM2 a",
    "lms": "LMS",
    "dpmpp_sde": "DPM++ SDE",
    "dpmpp_sde_gpu": "DPM++ SDE",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_2m_sde_gpu": "DPM++ 2M SDE",
    "deis": "DEIS",
    "ddim": "DDIM",
    "uni_pc": "UniPC BH1",
    "uni_pc_bh2": "UniPC",
    "lcm": "LCM",
}
# ComfyUI's `scheduler` -> the schedule suffix here; "normal" is the model's own spacing. diffusers'
# table maps "simple" to trailing spacing, the same as SGM uniform.
COMFYUI_SCHEDULES = {"normal": "", "karras": "Karras", "exponential": "Exponential", "sgm_uniform": "SGM Uniform"}
COMFYUI_SCHEDULES["simple"] = "SGM Uniform"
# A1111's "Schedule type" labels (1.9 on; modules/sd_schedulers.py) -> the suffix here.
A1111_SCHEDULES = {
    "Uniform": "",
    "Normal": "",
    "Karras": "Karras",
    "Exponential": "Exponential",
    "SGM Uniform": "SGM Uniform",
    "Simple": "SGM Uniform",
}
# "Automatic" is each sampler's own default schedule (A1111 1.9 on: modules/sd_samplers_kdiffusion.py).
A1111_AUTOMATIC = {"DPM++ 2M": "Karras", "DPM++ SDE": "Karras", "DPM++ 2M SDE": "Exponential"}


class SamplerNotAvailable(ValueError):
    """The model cannot use this sampler; the message names the ones it can."""


def sampler_from(name: str, schedule: str | None = None) -> str:
    """The sampler name here for one written by AUTOMATIC1111 or ComfyUI.

    ``name`` alone is a name here or A1111's one-string form ("DPM++ 2M SDE
    Karras"); with ``schedule`` it is A1111's sampler and "Schedule type"
    ("DPM++ 2M", "Karras") or ComfyUI's ``sampler_name`` and ``scheduler``
    (``dpmpp_2m_sde_gpu``, ``karras``). A name with no diffusers
    equivalent raises ``SamplerNotAvailable`` saying so.
    """
    if not isinstance(name, str) or not isinstance(schedule, (str, type(None))):
        raise SamplerNotAvailable(f"sampler must be a name such as 'DPM++ 2M Karras'; got {name!r}.")
    if schedule is None or schedule == "":
        if name in _SAMPLERS:
            return name
        if name in COMFYUI_SAMPLERS:
            return COMFYUI_SAMPLERS[name]
        raise SamplerNotAvailable(
            f"sampler {name!r} has no diffusers equivalent here; allowed: {', '.join(_SAMPLERS)}."
        )
    if name in COMFYUI_SAMPLERS:
        base, suffixes, tool = COMFYUI_SAMPLERS[name], COMFYUI_SCHEDULES, "ComfyUI"
    else:
        base, suffixes, tool = name, A1111_SCHEDULES, "AUTOMATIC1111"
        if base not in _SAMPLERS:
            raise SamplerNotAvailable(
                f"sampler {name!r} has no diffusers equivalent here; allowed: {', '.join(_SAMPLERS)}."
            )
        if schedule == "Automatic":
            schedule = A1111_AUTOMATIC.get(base, "Uniform")
    if schedule not in suffixes:
        raise SamplerNotAvailable(
            f"scheduler {schedule!r} ({tool}) has no diffusers equivalent here; allowed: {', '.join(suffixes)}."
        )
    suffix = suffixes[schedule]
    combined = f"{base} {suffix}" if suffix else base
    if combined not in _SAMPLERS:
        raise SamplerNotAvailable(
            f"sampler {name!r} with scheduler {schedule!r} has no diffusers equivalent here; "
            f"allowed: {', '.join(_SAMPLERS)}."
        )
    return combined


def is_flow_matching(config: Any) -> bool:
    return str(config.get("_class_name", "")).startswith("FlowMatch")


def make_scheduler(name: str, base_config: Any) -> Any:
    """A new scheduler for ``name`` built on ``base_config`` (the model's own)."""
    import diffusers

    if is_flow_matching(base_config):
        if name not in FLOW_MATCHING_SAMPLERS:
            raise SamplerNotAvailable(
                f"sampler must be {' or '.join(FLOW_MATCHING_SAMPLERS)} for a flow-matching model (FLUX); got {name!r}."
            )
        return getattr(diffusers, base_config["_class_name"]).from_config(base_config)
    class_name, options = _SAMPLERS[name]
    scheduler_class = getattr(diffusers, class_name)
    return scheduler_class.from_config(base_config, **options)
