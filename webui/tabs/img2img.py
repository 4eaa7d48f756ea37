"""The Image-to-image tab: a picture and a prompt in, a changed picture out (API name ``/img2img``).

Its widgets become a request through ``webui.forms`` (the same builder the
CLI uses) and run through the shared runner, so its runs are logged,
cancellable and re-runnable like every other.
"""

from __future__ import annotations

import gradio as gr

from pipelines.requests import RESIZE_MODES
from webui.forms import build_request, upload
from webui.models import model_defaults
from webui.settings import Settings
from webui.tabs import style
from webui.tabs.common import (
    SETTINGS_FIELDS,
    TabHandles,
    model_family,
    outputs_panel,
    settings_fields,
    settings_widgets,
    upload_image,
)
from webui.tabs.runner import Runner


def build(settings: Settings, runner: Runner) -> TabHandles:
    model = settings.model
    defaults = model_defaults(model)

    # -- functions --------------------------------------------------------

    def make(picture, prompt_text, negative_text, strength_value, mode, *values, model=model):
        return build_request(
            "img2img",
            prompt=prompt_text,
            negative_prompt=negative_text,
            model=model,
            image=upload(picture, field="image"),
            strength=float(strength_value),
            resize_mode=mode,
            **settings_fields(list(values)),
        )

    # -- layout -----------------------------------------------------------

    with gr.Row():
        with gr.Column(scale=5):
            image = upload_image(label="Start from", image_mode=None, sources=["upload", "clipboard"])
            prompt = gr.Textbox(label="Prompt", lines=2, placeholder="a red circle on a yellow background")
            negative = gr.Textbox(label="Negative prompt", lines=1)
            with gr.Row():
                strength = gr.Slider(0.01, 1.0, value=0.75, step=0.01, label="Strength (0: keep, 1: replace)")
                resize_mode = gr.Radio(list(RESIZE_MODES), value="fit", label="Another size: fit, crop or pad")
            shared = settings_widgets(defaults)
            styled = style.lora_and_reference(settings.loras_folder)
            refiner_box, refined = style.refiner(runner.models, visible=model_family(runner.models, model) == "sdxl")
            styled.update(refined)
        with gr.Column(scale=5):
            outputs = outputs_panel(height=380)

    # -- events -----------------------------------------------------------

    inputs = [image, prompt, negative, strength, resize_mode, *shared]
    generated = runner.wire(outputs, inputs, make, "img2img", styled)
    fields = {"prompt": prompt, "negative_prompt": negative, "strength": strength, **dict(zip(SETTINGS_FIELDS, shared))}
    return TabHandles(generated=generated, negative_prompt=negative, refiner_box=refiner_box, fields=fields)
