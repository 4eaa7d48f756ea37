"""The ControlNet tab: edges, pose or depth taken from a picture steer a new one (API names ``/controlnet``,
``/control_preview``).

Up to two control images, each with its preprocessor and ControlNet; an
optional init image and mask. Its widgets become a request through
``webui.forms`` and run through the shared runner.
"""

from __future__ import annotations

import gradio as gr

from pipelines import controlnets, preprocessors
from pipelines.requests import RESIZE_MODES, ControlUnit, ImageRef, RequestError
from webui.forms import build_request, default_controlnet, upload
from webui.models import model_defaults
from webui.settings import Settings
from webui.tabs import style
from webui.tabs.common import (
    SETTINGS_FIELDS,
    TabHandles,
    outputs_panel,
    settings_fields,
    settings_widgets,
    upload_image,
)
from webui.tabs.runner import Runner


def preprocessor_params(name, low_value, high_value) -> dict[str, int]:
    """The Canny thresholds, for Canny; the other preprocessors take none from this tab."""
    return {"low_threshold": int(low_value), "high_threshold": int(high_value)} if name == "canny" else {}


def build(settings: Settings, runner: Runner) -> TabHandles:
    model = settings.model
    defaults = model_defaults(model)
    family = "embedded" if model == "embedded" else None
    listed = [entry.name for entry in controlnets.REGISTRY.values() if family is None or entry.family == family]
    usable = [name for name, ok, _ in preprocessors.available() if ok]
    missing = [f"- **{name}**: {reason}" for name, ok, reason in preprocessors.available() if not ok]

    # -- functions --------------------------------------------------------

    def show(picture, name, low_value, high_value):
        image = upload(picture, field="control_image")
        try:
            return preprocessors.run(name, image.convert("RGB"), **preprocessor_params(name, low_value, high_value))
        except RequestError as error:
            raise gr.Error(str(error)) from None

    def make(
        picture,
        name,
        low_value,
        high_value,
        net,
        scale_value,
        start_value,
        end_value,
        picture_2,
        name_2,
        net_2,
        scale_2,
        init_picture,
        mask_picture,
        strength_value,
        mode,
        prompt_text,
        negative_text,
        *values,
        model=model,
    ):
        first = build_request(
            "controlnet",
            prompt=prompt_text,
            negative_prompt=negative_text,
            model=model,
            control_images=[upload(picture, field="control_image")],
            controlnet=net,
            preprocessor=name,
            preprocessor_params=preprocessor_params(name, low_value, high_value),
            conditioning_scale=float(scale_value),
            guidance_start=float(start_value),
            guidance_end=float(end_value),
            image=upload(init_picture, field="image", required=False),
            mask=None if mask_picture is None else upload(mask_picture, field="mask_image").convert("L"),
            strength=float(strength_value),
            resize_mode=mode,
            **settings_fields(list(values)),
        )
        if picture_2 is None:
            return first
        extra = ControlUnit(
            image=ImageRef.of(upload(picture_2, field="second control image")),
            controlnet=net_2,
            preprocessor=name_2,
            conditioning_scale=float(scale_2),
        )
        return first.replace(controls=(*first.controls, extra))

    # -- layout -----------------------------------------------------------

    with gr.Row():
        with gr.Column(scale=5):
            control = upload_image(
                label="Control image (edges, pose or depth are taken from it)", sources=["upload", "clipboard"]
            )
            with gr.Row():
                preprocessor = gr.Dropdown(
                    usable, value="canny", label="Preprocessor ('none': already a control image)"
                )
                low = gr.Slider(1, 255, value=100, step=1, label="Canny low threshold")
                high = gr.Slider(1, 255, value=200, step=1, label="Canny high threshold")
            with gr.Row():
                controlnet = gr.Dropdown(
                    listed,
                    value=default_controlnet(model),
                    allow_custom_value=True,
                    label="ControlNet (or a folder, file or hub id)",
                )
                scale = gr.Slider(0, 2, value=1.0, step=0.05, label="Conditioning scale")
                start = gr.Slider(0, 1, value=0.0, step=0.05, label="Guidance start")
                end = gr.Slider(0, 1, value=1.0, step=0.05, label="Guidance end")
            with gr.Accordion("A second ControlNet", open=False):
                second = upload_image(label="Second control image", sources=["upload", "clipboard"])
                with gr.Row():
                    second_preprocessor = gr.Dropdown(usable, value="canny", label="Preprocessor")
                    second_controlnet = gr.Dropdown(
                        listed, value=default_controlnet(model), allow_custom_value=True, label="ControlNet"
                    )
                    second_scale = gr.Slider(0, 2, value=1.0, step=0.05, label="Conditioning scale")
            with gr.Accordion("Start from an image, or keep part of it", open=False):
                init = upload_image(label="Init image (optional)", image_mode=None, sources=["upload", "clipboard"])
                mask = upload_image(label="Mask (optional; white = regenerate)", sources=["upload"])
                strength = gr.Slider(0.01, 1.0, value=0.75, step=0.01, label="Strength")
            resize_mode = gr.Radio(list(RESIZE_MODES), value="fit", label="Another size: fit, crop or pad")
            if missing:
                with gr.Accordion("Preprocessors not available here", open=False):
                    gr.Markdown("\n".join(missing))
            prompt = gr.Textbox(label="Prompt", lines=2, placeholder="a red circle on a blue background")
            negative = gr.Textbox(label="Negative prompt", lines=1)
            shared = settings_widgets(defaults)
            styled = style.lora_and_reference(settings.loras_folder)
            with gr.Accordion("Variations (without an init image)", open=False), gr.Row():
                styled.update(style.variations())
        with gr.Column(scale=5):
            preview_button = gr.Button("Preview the control image", size="sm")
            preview = gr.Image(label="Control image the ControlNet sees", type="pil", interactive=False)
            outputs = outputs_panel(height=380)

    # -- events -----------------------------------------------------------

    preview_button.click(show, inputs=[control, preprocessor, low, high], outputs=preview, api_name="control_preview")
    inputs = [
        control,
        preprocessor,
        low,
        high,
        controlnet,
        scale,
        start,
        end,
        second,
        second_preprocessor,
        second_controlnet,
        second_scale,
        init,
        mask,
        strength,
        resize_mode,
        prompt,
        negative,
        *shared,
    ]
    generated = runner.wire(outputs, inputs, make, "controlnet", styled)
    fields = {
        "prompt": prompt,
        "negative_prompt": negative,
        "strength": strength,
        "controls.0.conditioning_scale": scale,
        "controls.0.guidance_start": start,
        "controls.0.guidance_end": end,
        **dict(zip(SETTINGS_FIELDS, shared)),
    }
    return TabHandles(generated=generated, negative_prompt=negative, fields=fields)
