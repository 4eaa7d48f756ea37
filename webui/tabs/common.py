"""What every generating tab shows and looks up alike: the output panel, a record's summary and details,
and the picked model's source and family."""

from __future__ import annotations

from typing import Any

import gradio as gr

from webui.models import find


def outputs_panel(height: int) -> dict[str, gr.components.Component]:
    """Generate and Cancel, the images, a one-line summary and the record's details."""
    with gr.Row():
        run = gr.Button("Generate", variant="primary", scale=3)
        cancel = gr.Button("Cancel", variant="stop", scale=1)
    images = gr.Gallery(label="Images", format="png", columns=2, height=height, object_fit="contain")
    summary = gr.Markdown()
    with gr.Accordion("Details", open=False):
        details = gr.JSON(label="Record")
    return {"run": run, "cancel": cancel, "images": images, "summary": summary, "details": details}


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
        details["inputs"] = [{"role": i.role, "sha256": i.sha256, "file": i.path} for i in record.images
                             if i.role != "output"]
    return details


def model_family(models, source: str) -> str | None:
    """The listed family of a model (embedded, sd, sdxl, flux), or None when it is not in the list."""
    entry = find(models, source)
    return entry.family if entry is not None else None


def model_source(models, name, started_with: str) -> str:
    """The picked model's source, which the request records; the studio's own model when none is picked."""
    entry = find(models, name) if name else None
    return entry.source if entry is not None else started_with
