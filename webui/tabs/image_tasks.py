"""The Image-to-image, Product background and ControlNet tabs.

Each tab turns its widgets into a request through ``webui.forms`` (the same
builder the CLI uses) and submits it through the jobs service, so its runs
are logged, cancellable and re-runnable like text-to-image. API names:
``/img2img``, ``/inpaint``, ``/controlnet``, plus ``/product_mask`` and
``/control_preview`` for the previews.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import gradio as gr
from PIL import Image

from pipelines import controlnets, masks, preprocessors
from pipelines.requests import MAX_BATCH, MAX_SEED, MAX_SIZE, MAX_STEPS, RESIZE_MODES, RequestError
from pipelines.samplers import SAMPLER_NAMES
from webui.forms import automatic_mask, build_request, default_controlnet, upload
from webui.jobs import Jobs
from webui.models import model_defaults, studio_models
from webui.tabs import style
from webui.tabs.common import model_family, model_source, outputs_panel, record_details, record_summary

BRUSH = "#ff00ff"  # the regenerated region, in the editor and the preview


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


def _settings_widgets(defaults: dict[str, Any]) -> dict[str, gr.components.Component]:
    """Sampler, steps, guidance, seed and size: the same row in every image tab."""
    with gr.Row():
        sampler = gr.Dropdown(SAMPLER_NAMES, value=defaults["sampler"], label="Sampler")
        steps = gr.Slider(1, MAX_STEPS, value=defaults["num_inference_steps"], step=1, label="Steps")
        guidance = gr.Slider(0, 30, value=defaults["guidance_scale"], step=0.5, label="Guidance scale")
    with gr.Row():
        seed = gr.Number(value=-1, precision=0, minimum=-1, maximum=MAX_SEED, label="Seed (-1: random)")
        batch_size = gr.Slider(1, MAX_BATCH, value=1, step=1, label="Batch size")
        width = gr.Slider(0, MAX_SIZE, value=0, step=8, label="Width (0: the image's)")
        height = gr.Slider(0, MAX_SIZE, value=0, step=8, label="Height (0: the image's)")
    return {"sampler": sampler, "steps": steps, "guidance": guidance, "seed": seed, "batch_size": batch_size,
            "width": width, "height": height}


def _common(settings: list[Any]) -> dict[str, Any]:
    sampler, steps, guidance, seed, batch_size, width, height = settings
    seed = int(seed)
    return {
        "sampler": sampler,
        "num_inference_steps": int(steps),
        "guidance_scale": float(guidance),
        "seed": None if seed == -1 else seed,
        "batch_size": int(batch_size),
        "width": int(width),
        "height": int(height),
    }


def _runner(jobs: Jobs, make: Callable[..., Any], styled: dict[str, Any], count: int) -> Callable[..., Any]:
    """A Gradio handler: build the request (bad input: one sentence, nothing written), run it, show it forming."""
    studio = jobs.studio

    models = studio_models(studio.settings)

    def run(*arguments):
        *values, request, progress = arguments
        task_values, model_name, style_values = values[: -len(styled) - 1], values[-len(styled) - 1], values[-len(styled):]
        try:
            generation = make(*task_values, model=model_source(models, model_name, studio.settings.model))
            generation = generation.replace(**style.request_fields(**dict(zip(styled, style_values))))
        except (RequestError, ValueError, TypeError) as error:
            raise gr.Error(str(error)) from None
        progress((0, generation.num_inference_steps), desc="Denoising", unit="steps")
        for kind, value in jobs.follow(
            generation, request=request,
            progress=lambda step, total: progress((step, total), desc="Denoising", unit="steps"),
        ):
            if kind == "preview":
                yield [value], "Forming…", gr.update()
        record = value
        if record.status == "cancelled":
            gr.Info(f"Cancelled; record #{record.id} kept as cancelled.")
            yield [], f"**Record #{record.id}** · cancelled", record_details(record, inputs=True)
            return
        paths = [str(studio.gallery.path(image.path)) for image in record.outputs]
        seconds = record.timings.get("total_ms", 0) / 1000
        yield paths, record_summary(record, seconds=seconds), record_details(record, inputs=True)

    # Gradio hands the session and a progress bar to parameters it can see in
    # the signature; a *args handler has none, so it is given one per input.
    # The model and the style controls are optional over the API: they keep their names and defaults.
    plain = inspect.Parameter.POSITIONAL_OR_KEYWORD
    optional = inspect.signature(style.request_fields).parameters
    tail = [inspect.Parameter("model_name", plain, default=None),
            *(inspect.Parameter(name, plain, default=optional[name].default) for name in styled)]
    positional = [inspect.Parameter(f"value_{i}", plain) for i in range(count - len(tail))]
    run.__signature__ = inspect.Signature([
        *positional,
        *tail,
        inspect.Parameter("request", plain, default=None, annotation=gr.Request),
        inspect.Parameter("progress", plain, default=gr.Progress()),
    ])
    run.__annotations__ = {"request": gr.Request}  # Gradio reads type hints, not the signature's annotations
    return run


def _wire(jobs: Jobs, widgets: dict, inputs: list, handler: Callable[..., Any], api_name: str, picker=None,
          styled: dict[str, Any] | None = None):
    """Generate runs ``handler``'s request with the tab's style controls; API inputs: the tab's, the model, style's.

    Inputs added later go last, so an API client's positional call keeps working.
    """
    studio = jobs.studio
    styled = styled or {}
    # An API client may leave the model out (the studio's own model) and the style controls (none).
    picker = picker if picker is not None else gr.State(None)
    inputs = [*inputs, picker, *styled.values()]
    event = gr.on(
        [widgets["run"].click],
        _runner(jobs, handler, styled, len(inputs)),
        inputs=inputs,
        outputs=[widgets["images"], widgets["summary"], widgets["details"]],
        api_name=api_name,
        concurrency_id="gpu",
        concurrency_limit=studio.settings.gpu_workers,
    )
    widgets["cancel"].click(jobs.cancel, api_visibility="private")
    return event


# -- Image to image ------------------------------------------------------------------


def build_img2img(jobs: Jobs, picker: gr.Dropdown | None = None) -> dict[str, Any]:
    model = jobs.studio.settings.model
    defaults = model_defaults(model)
    with gr.Row():
        with gr.Column(scale=5):
            image = upload_image(label="Start from", image_mode=None, sources=["upload", "clipboard"])
            prompt = gr.Textbox(label="Prompt", lines=2, placeholder="a red circle on a yellow background")
            negative = gr.Textbox(label="Negative prompt", lines=1)
            with gr.Row():
                strength = gr.Slider(0.01, 1.0, value=0.75, step=0.01, label="Strength (0: keep, 1: replace)")
                resize_mode = gr.Radio(list(RESIZE_MODES), value="fit", label="Another size: fit, crop or pad")
            settings = _settings_widgets(defaults)
            styled = style.lora_and_reference(jobs.studio.settings.loras_folder)
            models = studio_models(jobs.studio.settings)
            refiner_box, refined = style.refiner(models, visible=model_family(models, model) == "sdxl")
            styled.update(refined)
        with gr.Column(scale=5):
            outputs = outputs_panel(height=380)

    def make(picture, prompt_text, negative_text, strength_value, mode, *values, model=model):
        return build_request("img2img", prompt=prompt_text, negative_prompt=negative_text, model=model,
                             image=upload(picture, field="image"), strength=float(strength_value), resize_mode=mode,
                             **_common(list(values)))

    inputs = [image, prompt, negative, strength, resize_mode, *settings.values()]
    return {"generated": _wire(jobs, outputs, inputs, make, "img2img", picker, styled), "negative_prompt": negative,
            "refiner_box": refiner_box}


# -- Product background ----------------------------------------------------------------


def build_inpaint(jobs: Jobs, picker: gr.Dropdown | None = None) -> dict[str, Any]:
    model = jobs.studio.settings.model
    defaults = model_defaults(model)
    with gr.Row():
        with gr.Column(scale=5):
            photo = upload_image(label="Product photo", image_mode=None, sources=["upload", "clipboard"])
            with gr.Row():
                method = gr.Dropdown(list(masks.MASK_METHODS), value="auto", label="Find the product by")
                find = gr.Button("Find the product", size="sm")
                invert = gr.Button("Invert", size="sm")
            editor = gr.ImageEditor(
                label="Magenta = new background (paint to add, erase to keep)",
                type="pil", image_mode="RGBA", sources=(), layers=False,
                brush=gr.Brush(colors=[BRUSH], color_mode="fixed", default_size=6),
                eraser=gr.Eraser(default_size=6),
                # Gradio's editor (6.31, js/imageeditor/shared/core/layers.ts, `add_layer_from_url`)
                # sizes a layer sent from here by the canvas's current extent, which still holds the
                # brush overlay of the canvas before (800x800 by default): the mask lands off the
                # photo, unseen, and the first stroke drops it. Starting at 1x1, and clearing before
                # each new mask (`_cleared` below), keeps that extent the photo's own.
                canvas_size=(1, 1),
            )
            prompt = gr.Textbox(label="Background prompts (one image per line)", lines=3,
                                placeholder="a red square on a yellow background\na red square on a green background")
            negative = gr.Textbox(label="Negative prompt", lines=1)
            with gr.Row():
                grow = gr.Slider(-32, 32, value=0, step=1, label="Mask grow (px; <0 keeps a margin)")
                feather = gr.Slider(0, 32, value=4, step=1, label="Feather (px, background side only)")
                padding = gr.Slider(0, 256, value=0, step=8, label="Only the masked area, padding (0: whole image)")
                strength = gr.Slider(0.01, 1.0, value=1.0, step=0.01, label="Strength")
            settings = _settings_widgets(defaults)
            styled = style.lora_and_reference(jobs.studio.settings.loras_folder)
        with gr.Column(scale=5):
            outputs = outputs_panel(height=380)
            preview = gr.Image(label="What will change (magenta)", type="pil", interactive=False)
            found = gr.Markdown()

    def find_product(picture, how):
        image = upload(picture, field="image")
        try:
            background, used = automatic_mask(image, how)
        except RequestError as error:
            raise gr.Error(str(error)) from None
        layer = _paint(background, image.size)
        return ({"background": image.convert("RGBA"), "layers": [layer], "composite": None},
                masks.overlay(image, background), f"Product found by **{used}**; correct it with the brush or eraser.")

    def flip(picture, value):
        image = upload(picture, field="image")
        current = masks.mask_from_editor(value, image.size) or Image.new("L", image.size, 0)
        background = masks.invert(current)
        return {"background": image.convert("RGBA"), "layers": [_paint(background, image.size)], "composite": None}, \
            masks.overlay(image, background)

    def make(picture, value, how, prompt_text, negative_text, grow_px, feather_px, padding_px, strength_value, *values,
             model=model):
        image = upload(picture, field="image")
        painted = masks.mask_from_editor(value, image.size) if isinstance(value, dict) else None
        return build_request(
            "inpaint", prompt=prompt_text, negative_prompt=negative_text, model=model, image=image,
            mask=painted, mask_method=how, mask_source="editor" if painted is not None else None,
            mask_grow=int(grow_px), mask_feather=int(feather_px), padding_mask_crop=int(padding_px) or None,
            strength=float(strength_value), **_common(list(values)),
        )

    _cleared(find.click, editor).then(find_product, inputs=[photo, method], outputs=[editor, preview, found],
                                      api_name="product_mask")
    _cleared(photo.upload, editor).then(find_product, inputs=[photo, method], outputs=[editor, preview, found],
                                        api_visibility="private")
    invert.click(flip, inputs=[photo, editor], outputs=[editor, preview], api_visibility="private")
    inputs = [photo, editor, method, prompt, negative, grow, feather, padding, strength, *settings.values()]
    return {"generated": _wire(jobs, outputs, inputs, make, "inpaint", picker, styled), "editor": editor,
            "negative_prompt": negative}


def _cleared(trigger: Callable[..., Any], editor: gr.ImageEditor):
    """Empty the editor first: the canvas resets to its 1x1 start, so the next mask fits the next photo."""
    return trigger(lambda: None, outputs=editor, queue=False, api_visibility="private")


def _paint(background: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The regenerated region as a brush layer: magenta where white, transparent elsewhere."""
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    layer.paste(Image.new("RGBA", size, BRUSH), mask=background)
    return layer


# -- ControlNet ----------------------------------------------------------------------


def build_controlnet(jobs: Jobs, picker: gr.Dropdown | None = None) -> dict[str, Any]:
    model = jobs.studio.settings.model
    defaults = model_defaults(model)
    family = "embedded" if model == "embedded" else None
    listed = [entry.name for entry in controlnets.REGISTRY.values() if family is None or entry.family == family]
    usable = [name for name, ok, _ in preprocessors.available() if ok]
    missing = [f"- **{name}**: {reason}" for name, ok, reason in preprocessors.available() if not ok]
    with gr.Row():
        with gr.Column(scale=5):
            control = upload_image(label="Control image (edges, pose or depth are taken from it)",
                                   sources=["upload", "clipboard"])
            with gr.Row():
                preprocessor = gr.Dropdown(usable, value="canny", label="Preprocessor ('none': already a control image)")
                low = gr.Slider(1, 255, value=100, step=1, label="Canny low threshold")
                high = gr.Slider(1, 255, value=200, step=1, label="Canny high threshold")
            with gr.Row():
                controlnet = gr.Dropdown(listed, value=default_controlnet(model), allow_custom_value=True,
                                         label="ControlNet (or a folder, file or hub id)")
                scale = gr.Slider(0, 2, value=1.0, step=0.05, label="Conditioning scale")
                start = gr.Slider(0, 1, value=0.0, step=0.05, label="Guidance start")
                end = gr.Slider(0, 1, value=1.0, step=0.05, label="Guidance end")
            with gr.Accordion("A second ControlNet", open=False):
                second = upload_image(label="Second control image", sources=["upload", "clipboard"])
                with gr.Row():
                    second_preprocessor = gr.Dropdown(usable, value="canny", label="Preprocessor")
                    second_controlnet = gr.Dropdown(listed, value=default_controlnet(model), allow_custom_value=True,
                                                    label="ControlNet")
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
            settings = _settings_widgets(defaults)
            styled = style.lora_and_reference(jobs.studio.settings.loras_folder)
            with gr.Accordion("Variations (without an init image)", open=False):
                with gr.Row():
                    styled.update(style.variations())
        with gr.Column(scale=5):
            preview_button = gr.Button("Preview the control image", size="sm")
            preview = gr.Image(label="Control image the ControlNet sees", type="pil", interactive=False)
            outputs = outputs_panel(height=380)

    def params(name, low_value, high_value):
        return {"low_threshold": int(low_value), "high_threshold": int(high_value)} if name == "canny" else {}

    def show(picture, name, low_value, high_value):
        image = upload(picture, field="control_image")
        try:
            return preprocessors.run(name, image.convert("RGB"), **params(name, low_value, high_value))
        except RequestError as error:
            raise gr.Error(str(error)) from None

    def make(picture, name, low_value, high_value, net, scale_value, start_value, end_value, picture_2, name_2,
             net_2, scale_2, init_picture, mask_picture, strength_value, mode, prompt_text, negative_text, *values,
             model=model):
        from pipelines.requests import ControlNetRequest, ControlUnit, ImageRef

        first = build_request(
            "controlnet", prompt=prompt_text, negative_prompt=negative_text, model=model,
            control_images=[upload(picture, field="control_image")], controlnet=net, preprocessor=name,
            preprocessor_params=params(name, low_value, high_value), conditioning_scale=float(scale_value),
            guidance_start=float(start_value), guidance_end=float(end_value),
            image=upload(init_picture, field="image", required=False),
            mask=None if mask_picture is None else upload(mask_picture, field="mask_image").convert("L"),
            strength=float(strength_value), resize_mode=mode, **_common(list(values)),
        )
        if picture_2 is None:
            return first
        extra = ControlUnit(image=ImageRef.of(upload(picture_2, field="second control image")), controlnet=net_2,
                            preprocessor=name_2, conditioning_scale=float(scale_2))
        return first.replace(controls=(*first.controls, extra))

    preview_button.click(show, inputs=[control, preprocessor, low, high], outputs=preview, api_name="control_preview")
    inputs = [control, preprocessor, low, high, controlnet, scale, start, end, second, second_preprocessor,
              second_controlnet, second_scale, init, mask, strength, resize_mode, prompt, negative, *settings.values()]
    return {"generated": _wire(jobs, outputs, inputs, make, "controlnet", picker, styled),
            "negative_prompt": negative}
