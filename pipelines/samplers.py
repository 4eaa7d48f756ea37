"""Samplers by the names people know from other studios.

Each name maps to a diffusers scheduler class and the options that make it
that sampler. A fresh scheduler is built from the model's own scheduler config
for every run, so one run's step state never leaks into the next and the
model's beta schedule is kept.
"""

from __future__ import annotations

from typing import Any

# name -> (diffusers scheduler class, extra config). Options a model's own
# config may set differently (Karras sigmas) are stated explicitly.
_SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
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

SAMPLER_NAMES: tuple[str, ...] = tuple(_SAMPLERS)

# Flow-matching models (FLUX) are trained for one sampler; "Euler" is its name here.
FLOW_MATCHING_SAMPLERS = ("Euler",)


class SamplerNotAvailable(ValueError):
    """The model cannot use this sampler; the message names the ones it can."""


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
