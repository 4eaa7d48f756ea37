"""Controls the generating tabs share: LoRAs with their weights, a reference image, variation seeds, a refiner.

Each tab lays them out with ``lora_and_reference`` (``variations`` where its
task starts from noise, ``refiner`` where an SDXL refiner can finish it) and
turns their values into request fields with ``request_fields``; the request
checks them, so a bad weight or a missing LoRA reads the same in every tab.
``values_from`` goes the other way, from a stored request to the widgets.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from pipelines import lora as lora_files
from pipelines.images import load_image
from pipelines.requests import ImageRef, RequestError
from webui.forms import seed_from
from webui.tabs.common import seed_box

NO_VARIATION = -1


def lora_and_reference(loras_folder) -> dict[str, gr.components.Component]:
    """An accordion with the LoRA picker, their weights, and the IP-Adapter reference image."""

    def listed() -> list[str]:
        return [f.name for f in lora_files.available(loras_folder) if f.problem is None]

    with gr.Accordion("Style: LoRAs and a reference image", open=False):
        with gr.Row():
            # The folder's name stays on the server: a page shows no server paths (issue 17).
            names = gr.Dropdown(
                listed(), multiselect=True, allow_custom_value=True, label="LoRAs (from the studio's LoRA folder)"
            )
            # A LoRA copied into the folder while the studio runs shows up the next time the list opens.
            names.focus(lambda: gr.update(choices=listed()), outputs=names, queue=False, api_visibility="private")
            weights = gr.Textbox(label="Their weights, in order (default 1)", placeholder="0.8, 0.5")
        with gr.Row():
            reference = gr.Image(label="Reference image (IP-Adapter)", type="pil", sources=["upload", "clipboard"])
            scale = gr.Slider(0, 2, value=0.6, step=0.05, label="Reference strength")
    return {"lora_names": names, "lora_weights": weights, "reference": reference, "reference_scale": scale}


def variations() -> dict[str, gr.components.Component]:
    """A second seed blended into the first: near copies of an image one liked."""
    seed = seed_box("Variation seed (-1: none)")
    strength = gr.Slider(0, 1, value=0.1, step=0.01, label="Variation strength")
    return {"variation_seed": seed, "variation_strength": strength}


def refiner(models, *, visible: bool = True) -> tuple[gr.Accordion, dict[str, gr.components.Component]]:
    """SDXL's refiner: a second model that finishes the last part of the steps (the model list's SDXL entries).

    Returns the accordion (shown only while an SDXL model is picked) and its widgets.
    """
    listed = [(entry.name, entry.source) for entry in models if entry.family == "sdxl"]
    with gr.Accordion("SDXL refiner", open=False, visible=visible) as box:
        with gr.Row():
            model = gr.Dropdown(
                [("none", "")] + listed,
                value="",
                allow_custom_value=True,
                label="Refiner (SDXL models only; a listed model, a folder, a file or a hub id)",
            )
            switch = gr.Slider(0.05, 0.95, value=0.8, step=0.05, label="Switch at (share of the steps the base does)")
    return box, {"refiner": model, "refiner_switch": switch}


def values_from(params: dict[str, Any], keys, reference: str | None = None) -> list[Any]:
    """A stored request's values for the style widgets named by ``keys`` (``request_fields``' names), in order."""
    pairs = params.get("loras") or []
    known = {
        "lora_names": [name for name, _ in pairs],
        "lora_weights": ", ".join(f"{weight:g}" for _, weight in pairs),
        "reference": reference,
        "reference_scale": params.get("ip_adapter_scale", 0.6),
        "variation_seed": NO_VARIATION if params.get("variation_seed") is None else params["variation_seed"],
        "variation_strength": params.get("variation_strength") or 0.0,
        "refiner": params.get("refiner") or "",
        "refiner_switch": params.get("refiner_switch", 0.8),
    }
    return [known[key] for key in keys]


def loras(names: list[str] | None, weights: str | None) -> tuple[tuple[str, float], ...]:
    """The picked LoRAs with the typed weights ("0.8, 0.5"), 1 for each one not given."""
    names = list(names or [])
    given = [part.strip() for part in (weights or "").split(",") if part.strip()]
    if len(given) > len(names):
        raise RequestError(f"LoRA weights must be one per picked LoRA; got {len(given)} for {len(names)}.")
    try:
        values = [float(part) for part in given]
    except ValueError:
        raise RequestError(f"LoRA weights must be numbers separated by commas; got {weights!r}.") from None
    return tuple((name, values[i] if i < len(values) else 1.0) for i, name in enumerate(names))


def request_fields(
    lora_names=None,
    lora_weights=None,
    reference=None,
    reference_scale=0.6,
    variation_seed=NO_VARIATION,
    variation_strength=0.0,
    refiner="",
    refiner_switch=0.8,
) -> dict[str, Any]:
    """The widgets' values as request fields (the request itself checks ranges)."""
    fields: dict[str, Any] = {
        "loras": loras(lora_names, lora_weights),
        "ip_adapter_image": ImageRef.of(load_image(reference, field="ip_adapter_image"))
        if reference is not None
        else None,
        "ip_adapter_scale": float(reference_scale),
    }
    if refiner and str(refiner).strip():
        fields.update(refiner=str(refiner).strip(), refiner_switch=float(refiner_switch))
    variation = seed_from(variation_seed, field="variation_seed")
    if variation != NO_VARIATION:
        fields.update(variation_seed=variation, variation_strength=float(variation_strength))
    return fields
