"""Other tools' sampler names, mapped onto ours only where it is the same algorithm and noise schedule.

One lookup per tool; a name with no equal here gives None and the reader
lists it. A1111's and ComfyUI's names go through `pipelines.samplers.sampler_from`
(diffusers' published table, every schedule); the tables below keep the
spellings it does not know (ComfyUI's `ddim_uniform`, `lcm` on `sgm_uniform`).
"""

from __future__ import annotations

from typing import Any

from pipelines.samplers import SamplerNotAvailable, sampler_from

# AUTOMATIC1111 folded the schedule into the name ("DPM++ 2M Karras") until
# v1.9, which split it out as "Schedule type". "Automatic" there means the
# sampler's own default: Karras for DPM++ 2M, the model's schedule for the rest
# (modules/sd_samplers_kdiffusion.py, `samplers_k_diffusion` options).
# "Uniform" is the model's own schedule, which is what ours use.
_A1111: dict[tuple[str, str | None], str] = {
    **{
        (name, schedule): name
        for name in ("DPM++ 2M", "Euler", "Euler a", "DDIM", "UniPC", "LCM")
        for schedule in (None, "Uniform", "Automatic")
    },
    ("DPM++ 2M", "Automatic"): "DPM++ 2M Karras",
    ("DPM++ 2M", "Karras"): "DPM++ 2M Karras",
    ("DPM++ 2M Karras", None): "DPM++ 2M Karras",
}

# ComfyUI's sampler_name and scheduler (comfy/samplers.py); Fooocus uses the
# same names. `uni_pc_bh2` is our UniPC exactly (diffusers' default
# solver_type); `uni_pc` is the same solver's bh1 variant, mapped to it too,
# so a rerun of such an image is close rather than exact, like any rerun made
# outside the tool that made the image.
_COMFYUI: dict[tuple[str, str], str] = {
    ("dpmpp_2m", "normal"): "DPM++ 2M",
    ("dpmpp_2m", "karras"): "DPM++ 2M Karras",
    ("euler", "normal"): "Euler",
    ("euler_ancestral", "normal"): "Euler a",
    ("ddim", "normal"): "DDIM",
    ("ddim", "ddim_uniform"): "DDIM",
    ("uni_pc", "normal"): "UniPC",
    ("uni_pc_bh2", "normal"): "UniPC",
    ("lcm", "normal"): "LCM",
    ("lcm", "sgm_uniform"): "LCM",
}
# A flow-matching model (FLUX) has one sampler here, diffusers' FlowMatchEuler
# with the model's own shift: ComfyUI's euler on the "simple" or "normal"
# schedule with ModelSamplingFlux's shift (comfy_extras/nodes_model_advanced.py).
_COMFYUI_FLOW: dict[tuple[str, str], str] = {("euler", "simple"): "Euler", ("euler", "normal"): "Euler"}

# InvokeAI's scheduler names (invokeai/backend/stable_diffusion/schedulers);
# a `_k` suffix is the Karras schedule. InvokeAI 2.x wrote k-diffusion's names.
_INVOKEAI: dict[str, str] = {
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_k": "DPM++ 2M Karras",
    "euler": "Euler",
    "euler_a": "Euler a",
    "ddim": "DDIM",
    "unipc": "UniPC",
    "lcm": "LCM",
    "k_euler": "Euler",
    "k_euler_a": "Euler a",
    "k_dpmpp_2": "DPM++ 2M",
}

# NovelAI's `sampler` in its Comment JSON (k-diffusion's function names), on
# its "native" noise schedule, which is the model's own.
_NOVELAI: dict[tuple[str, str | None], str] = {
    ("k_euler", None): "Euler",
    ("k_euler", "native"): "Euler",
    ("k_euler_ancestral", None): "Euler a",
    ("k_euler_ancestral", "native"): "Euler a",
    ("k_dpmpp_2m", None): "DPM++ 2M",
    ("k_dpmpp_2m", "native"): "DPM++ 2M",
    ("k_dpmpp_2m", "karras"): "DPM++ 2M Karras",
    ("ddim", None): "DDIM",
    ("ddim_v3", None): "DDIM",
}


def a1111(name: Any, schedule: Any) -> str | None:
    if not isinstance(name, str) or not isinstance(schedule, (str, type(None))):
        return None
    return _published(name, schedule) or _A1111.get((name, schedule))


def comfyui(name: Any, scheduler: Any, *, flow: bool = False) -> str | None:
    if not (isinstance(name, str) and isinstance(scheduler, str)):
        return None
    if flow:
        return _COMFYUI_FLOW.get((name, scheduler))
    return _published(name, scheduler) or _COMFYUI.get((name, scheduler))


def _published(name: str, schedule: str | None) -> str | None:
    try:
        return sampler_from(name, schedule)
    except SamplerNotAvailable:
        return None


def invokeai(name: Any) -> str | None:
    return _INVOKEAI.get(name) if isinstance(name, str) else None


def novelai(name: Any, schedule: Any) -> str | None:
    if not isinstance(name, str) or not isinstance(schedule, (str, type(None))):
        return None
    return _NOVELAI.get((name, schedule))
