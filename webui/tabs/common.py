"""What the generating tabs show and look up alike, and what each hands back to webui/app.py.

The output panel, a record's summary and details, the picked model's source
and family; for the three image tabs, the upload that defers decoding and
the row of sampler, steps, guidance, seed and size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gradio as gr
from gradio.events import Dependency

from pipelines.requests import MAX_BATCH, MAX_SIZE, MAX_STEPS
from pipelines.samplers import SAMPLER_NAMES
from webui.forms import seed_from
from webui.models import find


@dataclass(frozen=True, kw_only=True)
class TabHandles:
    """What webui/app.py wires across the tabs from a generating tab."""

    generated: Dependency  # its Generate event; the gallery refreshes after it
    negative_prompt: gr.Textbox  # hidden while a FLUX model is picked
    refiner_box: gr.Accordion | None = None  # shown while an SDXL model is picked, where the task takes a refiner
    # The request fields a gallery record fills when sent to this tab, and the style controls besides.
    fields: dict[str, gr.components.Component] = field(default_factory=dict)
    styles: dict[str, gr.components.Component] = field(default_factory=dict)
    # The Text to image tab's imported file and its "Send to its tab" button (webui/app.py wires it).
    imported: gr.File | None = None
    send_import: gr.Button | None = None
    import_summary: gr.Markdown | None = None


# Request field names of `settings_widgets`, in its order: what an import fills in an image tab.
SETTINGS_FIELDS = ("sampler", "num_inference_steps", "guidance_scale", "seed", "batch_size", "width", "height")


@dataclass(frozen=True)
class OutputsPanel:
    run: gr.Button
    cancel: gr.Button
    images: gr.Gallery
    summary: gr.Markdown
    details: gr.JSON


def outputs_panel(height: int) -> OutputsPanel:
    """Generate and Cancel, the images, a one-line summary and the record's details."""
    with gr.Row():
        run = gr.Button("Generate", variant="primary", scale=3)
        cancel = gr.Button("Cancel", variant="stop", scale=1)
    images = gr.Gallery(label="Images", format="png", columns=2, height=height, object_fit="contain")
    summary = gr.Markdown()
    with gr.Accordion("Details", open=False):
        details = gr.JSON(label="Record")
    return OutputsPanel(run=run, cancel=cancel, images=images, summary=summary, details=details)


def record_summary(record, *, seconds: float | None = None) -> str:
    seeds = ", ".join(str(image.seed) for image in record.outputs)
    took = f" · {seconds:.2f} s" if seconds is not None else ""
    return f"**Record #{record.id}** · {record.status} · seed {seeds}{took}"


def record_details(record, *, inputs: bool = False) -> dict[str, Any]:
    """What API clients read back: the record id and each image's hash and seed (and the inputs' roles)."""
    details = {
        "id": record.id,
        "status": record.status,
        "params": record.params,
        "images": [{"sha256": i.sha256, "seed": i.seed, "file": i.path} for i in record.outputs],
    }
    if inputs:
        details["inputs"] = [
            {"role": i.role, "sha256": i.sha256, "file": i.path} for i in record.images if i.role != "output"
        ]
    return details


def model_family(models, source: str) -> str | None:
    """The listed family of a model (embedded, sd, sdxl, flux), or None when it is not in the list."""
    entry = find(models, source)
    return entry.family if entry is not None else None


def model_source(models, name, started_with: str) -> str:
    """The picked model's source, which the request records; the studio's own model when none is picked."""
    entry = find(models, name) if name else None
    return entry.source if entry is not None else started_with


# -- the image tabs' shared widgets ----------------------------------------------------


def upload_image(**options: Any) -> gr.Image:
    """An image upload handed to the handler as its file's path, not yet decoded.

    gr.Image opens the file with Pillow first: past Pillow's own bomb limit
    that fails with an error about Gradio's internals, and below it
    ``getexif()`` decodes every pixel of a PNG (PIL's PngImageFile.getexif),
    both before ``pipelines.images`` has checked the size in the header.
    ``webui.forms.upload`` reads the header, then decodes (issue 7, "Bad input").
    The instance's preprocess is replaced rather than subclassed: Gradio
    writes a .pyi stub beside every module that subclasses a component.
    """
    widget = gr.Image(type="filepath", **options)
    decode = widget.preprocess

    def preprocess(payload):
        if payload is None or payload.path is None:  # a data: URL, which Gradio decodes itself
            return decode(payload)
        return payload.path

    widget.preprocess = preprocess
    return widget


def seed_box(label: str) -> gr.Textbox:
    """A seed field: text, so a 64-bit seed reaches the browser and back exactly (a number field holds a double)."""
    return gr.Textbox(value="-1", label=label, max_lines=1, scale=1)


def settings_widgets(defaults: dict[str, Any]) -> list[gr.components.Component]:
    """Sampler, steps, guidance, seed, batch size and size: the same rows in every image tab, in this order."""
    with gr.Row():
        sampler = gr.Dropdown(SAMPLER_NAMES, value=defaults["sampler"], label="Sampler")
        steps = gr.Slider(1, MAX_STEPS, value=defaults["num_inference_steps"], step=1, label="Steps")
        guidance = gr.Slider(0, 30, value=defaults["guidance_scale"], step=0.5, label="Guidance scale")
    with gr.Row():
        seed = seed_box("Seed (-1: random)")
        batch_size = gr.Slider(1, MAX_BATCH, value=1, step=1, label="Batch size")
        width = gr.Slider(0, MAX_SIZE, value=0, step=8, label="Width (0: the image's)")
        height = gr.Slider(0, MAX_SIZE, value=0, step=8, label="Height (0: the image's)")
    return [sampler, steps, guidance, seed, batch_size, width, height]


def settings_fields(values: list[Any]) -> dict[str, Any]:
    """The values of `settings_widgets`, in its order, as request fields (a seed of -1 draws one)."""
    sampler, steps, guidance, seed, batch_size, width, height = values
    seed = seed_from(seed)
    return {
        "sampler": sampler,
        "num_inference_steps": int(steps),
        "guidance_scale": float(guidance),
        "seed": None if seed == -1 else seed,
        "batch_size": int(batch_size),
        "width": int(width),
        "height": int(height),
    }
