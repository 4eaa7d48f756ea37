"""The Product background tab: keep the product, regenerate what is around it
(API names ``/inpaint``, ``/product_mask``, ``/product_matte``, ``/marketplace_file``).

The product is found automatically (or painted over in the editor, magenta
for what changes); each line of the prompt is one background. Its edge band
is matted (the matte is previewed beside the editor), a shadow can ground
it, and a shot can be exported in a marketplace's preset. Its widgets
become a request through ``webui.forms`` and run through the shared runner.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from pipelines import marketplace, masks
from pipelines.limits import DEFAULT_MATTE_BAND, MAX_MATTE_BAND, SHADOW_KINDS
from pipelines.requests import RequestError
from storage.pngmeta import PngMetadataError, read_png_metadata
from webui.forms import automatic_mask, build_request, upload
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

BRUSH = "#ff00ff"  # the regenerated region, in the editor and the preview


def cleared(trigger: Callable[..., Any], editor: gr.ImageEditor):
    """Empty the editor first: the canvas resets to its 1x1 start, so the next mask fits the next photo."""
    return trigger(lambda: None, outputs=editor, queue=False, api_visibility="private")


def paint(background: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The regenerated region as a brush layer: magenta where white, transparent elsewhere."""
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    layer.paste(Image.new("RGBA", size, BRUSH), mask=background)
    return layer


def build(settings: Settings, runner: Runner) -> TabHandles:
    model = settings.model
    defaults = model_defaults(model)

    # -- functions --------------------------------------------------------

    def find_product(picture, how):
        image = upload(picture, field="image")
        try:
            background, used = automatic_mask(image, how)
        except RequestError as error:
            raise gr.Error(str(error)) from None
        layer = paint(background, image.size)
        return (
            {"background": image.convert("RGBA"), "layers": [layer], "composite": None},
            masks.overlay(image, background),
            f"Product found by **{used}**; correct it with the brush or eraser.",
        )

    def flip(picture, value):
        image = upload(picture, field="image")
        current = masks.mask_from_editor(value, image.size) or Image.new("L", image.size, 0)
        background = masks.invert(current)
        return {
            "background": image.convert("RGBA"),
            "layers": [paint(background, image.size)],
            "composite": None,
        }, masks.overlay(image, background)

    def make(
        picture,
        value,
        how,
        prompt_text,
        negative_text,
        grow_px,
        feather_px,
        padding_px,
        strength_value,
        *values,
        model=model,
        matting=True,
        matte_band=DEFAULT_MATTE_BAND,
        shadow="none",
        shadow_angle=90.0,
        shadow_distance=12,
        shadow_softness=12,
        shadow_opacity=0.5,
    ):
        image = upload(picture, field="image")
        painted = masks.mask_from_editor(value, image.size) if isinstance(value, dict) else None
        return build_request(
            "inpaint",
            prompt=prompt_text,
            negative_prompt=negative_text,
            model=model,
            image=image,
            mask=painted,
            mask_method=how,
            mask_source="editor" if painted is not None else None,
            mask_grow=int(grow_px),
            mask_feather=int(feather_px),
            padding_mask_crop=int(padding_px) or None,
            strength=float(strength_value),
            matting=bool(matting),
            matte_band=int(matte_band),
            shadow=shadow,
            shadow_angle=float(shadow_angle),
            shadow_distance=int(shadow_distance),
            shadow_softness=int(shadow_softness),
            shadow_opacity=float(shadow_opacity),
            **settings_fields(list(values)),
        )

    def matte_of(picture, value, grow_px, band_px):
        image = upload(picture, field="image")
        background = masks.mask_from_editor(value, image.size) if isinstance(value, dict) else None
        if background is None:
            raise gr.Error("Find or paint the product first; the matte is made from its mask.")
        try:
            return masks.product_matte(image, background, grow=int(grow_px), band=int(band_px))
        except (RequestError, ValueError) as error:
            raise gr.Error(str(error)) from None

    def show_matte(picture, value, grow_px, band_px):
        if picture is None or not isinstance(value, dict) or not value.get("layers"):
            return None
        return matte_of(picture, value, grow_px, band_px).mask().convert("RGB")

    def export(picture, value, grow_px, band_px, shots, preset, file_format):
        """The first shot (or, for white and cut-out presets, the product from its matte) as a file."""
        if not shots:
            raise gr.Error("Generate a shot first; its file carries the generation's metadata.")
        path = shots[0][0] if isinstance(shots[0], (list, tuple)) else shots[0]
        try:
            text = read_png_metadata(path)
            with Image.open(path) as opened:
                shot = opened.convert("RGB")
            image = upload(picture, field="image")
            matte = None if marketplace.PRESETS[preset].kind == "web" else matte_of(picture, value, grow_px, band_px)
            picture_out = marketplace.apply(preset, shot, image, matte)
            data = marketplace.encode(picture_out, file_format, text)
        except (RequestError, PngMetadataError, KeyError) as error:
            raise gr.Error(str(error)) from None
        target = Path(tempfile.mkdtemp(prefix="atelier-export-")) / f"{preset}.{file_format}"
        target.write_bytes(data)
        return str(target)

    # -- layout -----------------------------------------------------------

    with gr.Row():
        with gr.Column(scale=5):
            photo = upload_image(label="Product photo", image_mode=None, sources=["upload", "clipboard"])
            with gr.Row():
                method = gr.Dropdown(list(masks.MASK_METHODS), value="auto", label="Find the product by")
                find_button = gr.Button("Find the product", size="sm")
                invert_button = gr.Button("Invert", size="sm")
            editor = gr.ImageEditor(
                label="Magenta = new background (paint to add, erase to keep)",
                type="pil",
                image_mode="RGBA",
                sources=(),
                layers=False,
                brush=gr.Brush(colors=[BRUSH], color_mode="fixed", default_size=6),
                eraser=gr.Eraser(default_size=6),
                # Gradio's editor (6.31, js/imageeditor/shared/core/layers.ts, `add_layer_from_url`)
                # sizes a layer sent from here by the canvas's current extent, which still holds the
                # brush overlay of the canvas before (800x800 by default): the mask lands off the
                # photo, unseen, and the first stroke drops it. Starting at 1x1, and clearing before
                # each new mask (`cleared` above), keeps that extent the photo's own.
                canvas_size=(1, 1),
            )
            prompt = gr.Textbox(
                label="Background prompts (one image per line)",
                lines=3,
                placeholder="a red square on a yellow background\na red square on a green background",
            )
            negative = gr.Textbox(label="Negative prompt", lines=1)
            with gr.Row():
                grow = gr.Slider(-32, 32, value=0, step=1, label="Mask grow (px; <0 keeps a margin)")
                feather = gr.Slider(0, 32, value=4, step=1, label="Feather (px, background side only)")
                padding = gr.Slider(0, 256, value=0, step=8, label="Only the masked area, padding (0: whole image)")
                strength = gr.Slider(0.01, 1.0, value=1.0, step=0.01, label="Strength")
            with gr.Row():
                matting = gr.Checkbox(value=True, label="Soft edges (matting)")
                band = gr.Slider(1, MAX_MATTE_BAND, value=DEFAULT_MATTE_BAND, step=1, label="Edge band (px each side)")
            with gr.Row():
                shadow = gr.Dropdown(list(SHADOW_KINDS), value="none", label="Shadow")
                shadow_angle = gr.Slider(0, 360, value=90, step=1, label="Shadow direction (degrees; 90: down)")
                shadow_distance = gr.Slider(0, 128, value=12, step=1, label="Shadow distance (px)")
                shadow_softness = gr.Slider(0, 128, value=12, step=1, label="Shadow softness (px)")
                shadow_opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Shadow opacity")
            shared = settings_widgets(defaults)
            styled = style.lora_and_reference(settings.loras_folder)
        with gr.Column(scale=5):
            outputs = outputs_panel(height=380)
            preview = gr.Image(label="What will change (magenta)", type="pil", interactive=False)
            found = gr.Markdown()
            matte_view = gr.Image(label="Matte (white: product, grey: soft edge)", type="pil", interactive=False)
            with gr.Row():
                preset = gr.Dropdown(list(marketplace.PRESETS), value="white-square-2000", label="Marketplace preset")
                file_format = gr.Dropdown(list(marketplace.FORMATS), value="png", label="File format")
                export_button = gr.Button("Export the first shot", size="sm")
            exported = gr.File(label="Marketplace file", interactive=False)

    # -- events -----------------------------------------------------------

    matte_inputs = [photo, editor, grow, band]
    cleared(find_button.click, editor).then(
        find_product, inputs=[photo, method], outputs=[editor, preview, found], api_name="product_mask"
    ).then(show_matte, inputs=matte_inputs, outputs=matte_view, api_name="product_matte")
    cleared(photo.upload, editor).then(
        find_product, inputs=[photo, method], outputs=[editor, preview, found], api_visibility="private"
    ).then(show_matte, inputs=matte_inputs, outputs=matte_view, api_visibility="private")
    invert_button.click(flip, inputs=[photo, editor], outputs=[editor, preview], api_visibility="private").then(
        show_matte, inputs=matte_inputs, outputs=matte_view, api_visibility="private"
    )
    gr.on(
        [band.release, grow.release],
        show_matte,
        inputs=matte_inputs,
        outputs=matte_view,
        api_visibility="private",
    )
    export_button.click(
        export,
        inputs=[*matte_inputs, outputs.images, preset, file_format],
        outputs=exported,
        api_name="marketplace_file",
    )
    inputs = [photo, editor, method, prompt, negative, grow, feather, padding, strength, *shared]
    later = {
        "matting": (matting, True),
        "matte_band": (band, DEFAULT_MATTE_BAND),
        "shadow": (shadow, "none"),
        "shadow_angle": (shadow_angle, 90.0),
        "shadow_distance": (shadow_distance, 12),
        "shadow_softness": (shadow_softness, 12),
        "shadow_opacity": (shadow_opacity, 0.5),
    }
    generated = runner.wire(outputs, inputs, make, "inpaint", styled, later)
    fields = {"prompt": prompt, "negative_prompt": negative, "strength": strength, **dict(zip(SETTINGS_FIELDS, shared))}
    return TabHandles(generated=generated, negative_prompt=negative, fields=fields)
