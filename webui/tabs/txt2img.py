"""The Text-to-image tab: prompt in, images out, every one kept in the gallery (API names ``/txt2img``,
``/cancel``, ``/import_png``)."""

from __future__ import annotations

import gradio as gr

from pipelines.requests import (
    MAX_BATCH,
    MAX_SIZE,
    MAX_STEPS,
    MIN_SIZE,
    RequestError,
    Text2ImgRequest,
    random_seed,
    seed_plus,
)
from pipelines.samplers import SAMPLER_NAMES
from webui.forms import seed_from
from webui.imports import MetadataError, import_file, studio_catalog
from webui.models import model_defaults
from webui.settings import Settings
from webui.tabs import style
from webui.tabs.common import TabHandles, model_family, outputs_panel, record_details, record_summary, seed_box
from webui.tabs.runner import Runner

# The request fields this tab shows, in the order of its widgets.
FIELDS = (
    "prompt",
    "negative_prompt",
    "sampler",
    "num_inference_steps",
    "guidance_scale",
    "width",
    "height",
    "seed",
    "batch_size",
)


def build(settings: Settings, runner: Runner) -> TabHandles:
    defaults = model_defaults(settings.model)
    models = runner.models

    # -- functions --------------------------------------------------------

    def generate(
        prompt,
        negative_prompt,
        sampler,
        steps,
        guidance_scale,
        width,
        height,
        seed,
        batch_size,
        batch_count=1,
        variation_seed=-1,
        variation_strength=0.0,
        lora_names=None,
        lora_weights=None,
        reference=None,
        reference_scale=0.6,
        model_name=None,
        refiner="",
        refiner_switch=0.8,
        request: gr.Request = None,
        progress=gr.Progress(),
    ):
        try:
            seed = seed_from(seed)
            first = Text2ImgRequest(
                prompt=prompt,
                negative_prompt=negative_prompt,
                sampler=sampler,
                num_inference_steps=int(steps),
                guidance_scale=float(guidance_scale),
                width=int(width),
                height=int(height),
                seed=random_seed() if seed == -1 else seed,
                batch_size=int(batch_size),
                model=runner.model_source(model_name),
                **style.request_fields(
                    lora_names,
                    lora_weights,
                    reference,
                    reference_scale,
                    variation_seed,
                    variation_strength,
                    refiner,
                    refiner_switch,
                ),
            )
            count = int(batch_count)
            if not 1 <= count <= MAX_BATCH:
                raise RequestError(f"batch_count must be a whole number from 1 to {MAX_BATCH}; got {batch_count!r}.")
        except (RequestError, ValueError, TypeError) as error:
            raise gr.Error(str(error)) from None
        # Batch count x batch size: seeds seed .. seed + count * size - 1, one record per batch.
        records, paths = [], []
        for number in range(count):
            seeds_so_far = number * first.batch_size
            text2img = first.replace(seed=seed_plus(first.seed, seeds_so_far))
            note = f"Forming… (batch {number + 1} of {count})"
            # The earlier batches' images, then this one's picture as it forms.
            record = yield from runner.follow(
                text2img,
                request=request,
                progress=progress,
                desc=f"Batch {number + 1} of {count}: denoising" if count > 1 else "Denoising",
                shown=lambda picture, before=list(paths), note=note: (
                    before + [picture],
                    note,
                    gr.update(),
                    gr.update(),
                ),
            )
            records.append(record)
            if record.status == "cancelled":
                break
            paths += runner.paths(record)
        last = records[-1]
        if last.status == "cancelled":
            yield paths, f"**Record #{last.id}** · cancelled", record_details(last), first.seed
            return
        seconds = sum(r.timings.get("total_ms", 0) for r in records) / 1000
        summary = "  \n".join(record_summary(r, seconds=r.timings.get("total_ms", 0) / 1000) for r in records)
        if len(records) > 1:
            summary += f"  \n{len(records)} batches in {seconds:.2f} s"
        yield paths, summary, record_details(last), first.seed

    def import_parameters(path: str | None) -> list:
        """Fill every field from an image's metadata (webui/imports reads which tool wrote it)."""
        if path is None:
            return [gr.update()] * (len(FIELDS) + 1)
        try:
            imported = import_file(path, studio_catalog(settings))
        except MetadataError as error:
            raise gr.Error(str(error)) from None
        read = imported.request
        message = f"Read **{imported.source}** parameters; seed {read.seed}."
        if imported.task != "txt2img":
            wanted = ", ".join(f"{ref.field} (`{ref.name}`)" for ref in imported.needs)
            message += f" Made by **{imported.task}** {imported.task_fields}: that tab needs {wanted or 'its inputs'}."
        if imported.unmapped:
            listed = "; ".join(f"{key}: `{value[:80]}`" for key, value in imported.unmapped.items())
            message += f" Not used (no equivalent here): {listed}"
        if read.ip_adapter_image is not None:
            message += " Its reference image is not in the PNG: add it again under Style."
        return [getattr(read, name) for name in FIELDS] + [message]

    def import_styles(path: str | None) -> list:
        """The style controls from the same PNG (LoRAs, variation, refiner); a PNG carries no reference image."""
        try:
            params = import_file(path, studio_catalog(settings)).request.to_dict() if path is not None else None
        except MetadataError:  # import_parameters has said why
            params = None
        if params is None:
            return [gr.update()] * len(styles)
        return [
            gr.update() if key == "reference" else value
            for key, value in zip(styles, style.values_from(params, styles))
        ]

    # -- layout -----------------------------------------------------------

    with gr.Row():
        with gr.Column(scale=5):
            prompt = gr.Textbox(
                label="Prompt",
                value=defaults.get("prompt", ""),
                lines=3,
                placeholder="a red circle on a blue background",
            )
            negative_prompt = gr.Textbox(label="Negative prompt", lines=2)
            with gr.Row():
                sampler = gr.Dropdown(SAMPLER_NAMES, value=defaults["sampler"], label="Sampler")
                steps = gr.Slider(1, MAX_STEPS, value=defaults["num_inference_steps"], step=1, label="Steps")
                guidance_scale = gr.Slider(0, 30, value=defaults["guidance_scale"], step=0.5, label="Guidance scale")
            with gr.Row():
                width = gr.Slider(MIN_SIZE, MAX_SIZE, value=defaults["width"], step=8, label="Width")
                height = gr.Slider(MIN_SIZE, MAX_SIZE, value=defaults["height"], step=8, label="Height")
                batch_size = gr.Slider(1, MAX_BATCH, value=1, step=1, label="Batch size")
            with gr.Accordion("Import a PNG's parameters", open=False):
                dropped = gr.File(
                    label="Image from Atelier, AUTOMATIC1111, ComfyUI, Fooocus, InvokeAI or NovelAI",
                    file_types=[".png", ".jpg", ".jpeg", ".webp"],
                    type="filepath",
                )
                import_summary = gr.Markdown()
                send_import = gr.Button("Send to its tab", size="sm")
            with gr.Row():
                seed = seed_box("Seed (-1: random)")
                random_button = gr.Button("🎲 Random", size="sm")
                reuse_button = gr.Button("♻️ Reuse last", size="sm")
            styled = style.lora_and_reference(settings.loras_folder)
            refiner_box, refined = style.refiner(models, visible=model_family(models, settings.model) == "sdxl")
            with gr.Accordion("Batches and variations", open=False):
                with gr.Row():
                    batch_count = gr.Slider(1, MAX_BATCH, value=1, step=1, label="Batch count (seeds continue)")
                    varied = style.variations()
        with gr.Column(scale=5):
            panel = outputs_panel(height=420)
    last_seed = gr.State(None)

    # -- events -----------------------------------------------------------

    generated = gr.on(
        [panel.run.click, prompt.submit],
        generate,
        inputs=[
            prompt,
            negative_prompt,
            sampler,
            steps,
            guidance_scale,
            width,
            height,
            seed,
            batch_size,
            batch_count,
            *varied.values(),
            *styled.values(),
            runner.model_input(),
            *refined.values(),
        ],  # inputs added later go last: API clients' positional calls keep working
        outputs=[panel.images, panel.summary, panel.details, last_seed],
        api_name="txt2img",
        concurrency_id="gpu",
        concurrency_limit=runner.gpu_workers,
    )
    # Queued, as every event that can say something: Gradio shows an unqueued event's messages as a bare badge.
    panel.cancel.click(runner.jobs.cancel, api_name="cancel")
    random_button.click(lambda: -1, outputs=seed, queue=False, api_visibility="private")
    reuse_button.click(
        lambda last: -1 if last is None else last, inputs=last_seed, outputs=seed, queue=False, api_visibility="private"
    )
    fields = dict(
        zip(FIELDS, (prompt, negative_prompt, sampler, steps, guidance_scale, width, height, seed, batch_size))
    )
    # What "Send to Text to image" and a PNG import fill besides the fields: the style controls.
    styles = {**varied, **styled, **refined}
    dropped.upload(
        import_parameters, inputs=dropped, outputs=[*fields.values(), import_summary], api_name="import_png"
    ).then(import_styles, inputs=dropped, outputs=[*styles.values()], queue=False, api_visibility="private")
    return TabHandles(
        generated=generated,
        negative_prompt=negative_prompt,
        refiner_box=refiner_box,
        fields=fields,
        styles=styles,
        imported=dropped,
        send_import=send_import,
        import_summary=import_summary,
    )
