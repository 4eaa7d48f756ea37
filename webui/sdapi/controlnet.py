"""The ControlNet extension's units (sd-webui-controlnet's API) -> Atelier's `ControlUnit`s.

A client asks for ControlNet as A1111 runs its extension: `alwayson_scripts`
{"ControlNet": {"args": [unit, ...]}}, the script's name in any case, each
unit a dict of the extension's fields (internal_controlnet/args.py
`ControlNetUnit`): image, module, model, weight, guidance_start / end,
resize_mode, processor_res, threshold_a / b, enabled. Modules are the
extension's preprocessor names (and its older aliases); their two sliders
(`threshold_a`, `threshold_b`) and resolution land on the parameter of
Atelier's preprocessor that means the same. Like the extension, -1 means a
slider's default and a value outside its range falls back to the default;
here that is said in `not_supported` rather than only logged.
"""

from __future__ import annotations

import re
from typing import Any

from PIL import Image

from pipelines import controlnets, preprocessors
from pipelines.limits import RequestError
from pipelines.requests import MAX_CONTROLS, ControlUnit, ImageRef
from webui.forms import default_controlnet
from webui.sdapi.uploads import decode_image

# extension module -> (Atelier preprocessor, fixed parameters, threshold_a's parameter, threshold_b's)
MODULES: dict[str, tuple[str, dict[str, Any], str | None, str | None]] = {
    "none": ("none", {}, None, None),
    "canny": ("canny", {}, "low_threshold", "high_threshold"),
    "depth": ("depth_midas", {}, None, None),
    "depth_midas": ("depth_midas", {}, None, None),
    "depth_zoe": ("depth_zoe", {}, None, None),
    "depth_leres": ("depth_leres", {}, "thr_a", "thr_b"),
    "depth_leres++": ("depth_leres", {"boost": True}, "thr_a", "thr_b"),
    "normal_bae": ("normal_bae", {}, None, None),
    "openpose": ("openpose", {}, None, None),
    "openpose_hand": ("openpose", {"include_hand": True}, None, None),
    "openpose_face": ("openpose", {"include_face": True}, None, None),
    "openpose_faceonly": ("openpose", {"include_body": False, "include_face": True}, None, None),
    "openpose_full": ("openpose", {"include_hand": True, "include_face": True}, None, None),
    "hed": ("hed", {}, None, None),
    "softedge_hed": ("hed", {}, None, None),
    "hed_safe": ("hed", {"safe": True}, None, None),
    "softedge_hedsafe": ("hed", {"safe": True}, None, None),
    "scribble_hed": ("hed", {"scribble": True}, None, None),
    "pidinet": ("pidi", {}, None, None),
    "softedge_pidinet": ("pidi", {}, None, None),
    "pidinet_safe": ("pidi", {"safe": True}, None, None),
    "softedge_pidisafe": ("pidi", {"safe": True}, None, None),
    "pidinet_scribble": ("pidi", {"scribble": True}, None, None),
    "scribble_pidinet": ("pidi", {"scribble": True}, None, None),
    "softedge_teed": ("teed", {}, "safe_steps", None),
    "mlsd": ("mlsd", {}, "thr_v", "thr_d"),
    "lineart": ("lineart", {}, None, None),
    "lineart_realistic": ("lineart", {}, None, None),
    "lineart_coarse": ("lineart", {"coarse": True}, None, None),
    "lineart_anime": ("lineart_anime", {}, None, None),
    "lineart_standard": ("lineart_standard", {}, None, None),
    "shuffle": ("shuffle", {}, None, None),
    "mediapipe_face": ("mediapipe_face", {}, "max_faces", "min_confidence"),
}
RESIZE_MODES = {
    "just resize": "fit",
    "crop and resize": "crop",
    "resize and fill": "pad",
    "inner fit (scale to fit)": "crop",
    "scale to fit (inner fit)": "crop",
    "outer fit (shrink to fit)": "pad",
    "envelope (outer fit)": "pad",
    "0": "fit",
    "1": "crop",
    "2": "pad",
    "3": "fit",
}
_HASH = re.compile(r"\s*\[[0-9a-fA-F]{6,64}\]$")
# Unit fields that change nothing here at these values: what clients send when they mean "the usual".
_PLAIN = {
    "low_vram": False,
    "lowvram": False,
    "pixel_perfect": False,
    "control_mode": ("Balanced", 0),
    "guessmode": (None, False),
    "hr_option": ("Both", 0),
    "mask": None,
    "mask_image": None,
    "save_detected_map": True,
    "advanced_weighting": None,
    "effective_region_mask": None,
    "inpaint_crop_input_image": True,
}


def script_args(alwayson_scripts: dict[str, Any] | None) -> list[Any] | None:
    """The ControlNet script's args, found case-insensitively as A1111 finds script names."""
    for name, script in (alwayson_scripts or {}).items():
        if str(name).lower() == "controlnet":
            if not isinstance(script, dict) or not isinstance(script.get("args", []), list):
                raise RequestError(f'alwayson_scripts.{name} must be {{"args": [ControlNet units]}}.')
            return script.get("args", [])
    return None


def units(
    alwayson_scripts: dict[str, Any] | None,
    *,
    model: str,
    init_image: Image.Image | None,
    notes: dict[str, str],
) -> tuple[list[ControlUnit], str | None]:
    """The enabled units as ControlUnits, and the resize mode the first one asked for (None: it did not say)."""
    args = script_args(alwayson_scripts)
    found: list[ControlUnit] = []
    resize: str | None = None
    for index, unit in enumerate(args or []):
        where = f"alwayson_scripts.controlnet.args[{index}]"
        if unit is None:
            continue
        if not isinstance(unit, dict):
            raise RequestError(f"{where} must be a ControlNet unit object; got {type(unit).__name__}.")
        if unit.get("enabled", True) is False:
            continue  # the client switched it off
        control, unit_resize = _unit(unit, where, model=model, init_image=init_image, notes=notes)
        if not found:
            resize = unit_resize
        elif unit_resize != resize and unit_resize is not None:
            notes[f"{where}.resize_mode"] = "every unit is resized as the first one is."
        found.append(control)
    if len(found) > MAX_CONTROLS:
        raise RequestError(f"alwayson_scripts.controlnet.args must enable at most {MAX_CONTROLS} units.")
    return found, resize


def _unit(
    unit: dict[str, Any], where: str, *, model: str, init_image: Image.Image | None, notes: dict[str, str]
) -> tuple[ControlUnit, str | None]:
    # 1. The image: the unit's own, else (img2img) the init image, as the extension does.
    source = unit.get("image") if unit.get("image") is not None else unit.get("input_image")
    if isinstance(source, dict):  # the extension's older {"image": ..., "mask": ...} form
        source = source.get("image")
    if source:
        image = decode_image(source, f"{where}.image")
    elif init_image is not None:
        image = init_image
    else:
        raise RequestError(f"{where}.image is required in txt2img: the picture to take the edges, pose or depth from.")
    # 2. The preprocessor and its sliders.
    module = str(unit.get("module", "none")).strip()
    if module.lower() not in MODULES:
        raise RequestError(f"{where}.module must be one of {', '.join(MODULES)}; got {module!r}.")
    name, params, slider_a, slider_b = MODULES[module.lower()]
    ok, reason = preprocessors.availability(name)
    if not ok:
        raise RequestError(f"{where}.module {module}: {reason}")
    params = dict(params)
    for key, param in (("threshold_a", slider_a), ("threshold_b", slider_b), ("processor_res", "detect_resolution")):
        _slider(unit, key, param, name, params, where, notes)
    # 3. The ControlNet model.
    controlnet = _controlnet(unit.get("model"), where, model=model, preprocessor=name, notes=notes)
    # 4. How hard and when it steers.
    mode = RESIZE_MODES.get(str(unit["resize_mode"]).strip().lower()) if "resize_mode" in unit else None
    if mode is None and "resize_mode" in unit:
        raise RequestError(
            f"{where}.resize_mode must be Just Resize, Crop and Resize or Resize and Fill; got {unit['resize_mode']!r}."
        )
    for key, plain in _PLAIN.items():
        if key in unit and unit[key] not in (plain if isinstance(plain, tuple) else (plain,)):
            notes[f"{where}.{key}"] = "not part of Atelier's ControlNet; the usual setting was used."
    try:
        control = ControlUnit(
            image=ImageRef.of(image),
            controlnet=controlnet,
            preprocessor=name,
            preprocessor_params=params,
            conditioning_scale=_number(unit, "weight", 1.0, where),
            guidance_start=_number(unit, "guidance_start", 0.0, where),
            guidance_end=_number(unit, "guidance_end", 1.0, where),
        )
    except RequestError as error:
        message = str(error)
        for ours, theirs in (
            ("controlnet_conditioning_scale", "weight"),
            ("control_guidance_start", "guidance_start"),
            ("control_guidance_end", "guidance_end"),
        ):
            message = message.replace(ours, theirs)
        raise RequestError(f"{where}: {message}") from None
    return control, mode


def _number(unit: dict[str, Any], key: str, default: float, where: str) -> float:
    value = unit.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"{where}.{key} must be a number; got {value!r:.40}.")
    return value


def _slider(
    unit: dict[str, Any],
    key: str,
    param: str | None,
    name: str,
    params: dict[str, Any],
    where: str,
    notes: dict[str, str],
) -> None:
    """One of the extension's sliders onto the preprocessor's parameter; -1 or absent keeps the default."""
    value = unit.get(key)
    if value is None or value == -1:
        return
    spec = preprocessors.PREPROCESSORS[name].params.get(param) if param else None
    if spec is None:
        if key != "processor_res" or name not in ("none", "canny", "lineart_standard", "shuffle"):
            return  # a slider this module does not have: the extension ignores it too
        if value != 512:
            notes[f"{where}.processor_res"] = f"Atelier's {name} works at the image's own size."
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"{where}.{key} must be a number; got {value!r:.40}.")
    if spec.kind == "int" and float(value).is_integer():
        value = int(value)
    if not spec.min <= value <= spec.max or (spec.kind == "int" and not isinstance(value, int)):
        # The extension resets a slider outside its range to the default (args.py, bound_check_params).
        notes[f"{where}.{key}"] = f"{value!r} is outside {name}'s {param} range {spec.min}-{spec.max}; default used."
        return
    params[param] = value


def _controlnet(value: Any, where: str, *, model: str, preprocessor: str, notes: dict[str, str]) -> str:
    """Atelier's ControlNet for the extension's model name ("control_v11p_sd15_canny [d14c016b]")."""
    name = _HASH.sub("", str(value or "").strip())
    if name.lower() in ("", "none"):
        chosen = default_controlnet(model)
        notes[f"{where}.model"] = f"no model named; {chosen} was used."
        return chosen
    if name in controlnets.REGISTRY:
        return name
    for entry in controlnets.REGISTRY.values():  # the extension names a model by its file: the hub id's last part
        if entry.location.rsplit("/", 1)[-1].lower() == name.lower():
            return entry.name
    try:
        controlnets.resolve(name)
    except controlnets.ControlNetNotFound as error:
        raise RequestError(f"{where}.model: {error}") from None
    return name
