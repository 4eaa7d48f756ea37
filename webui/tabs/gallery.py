"""The Gallery tab: every generation, newest first; open one, rerun it."""

from __future__ import annotations

from typing import Any

import gradio as gr

from storage import GenerationRecord, RecordNotFound
from webui.jobs import Jobs

PAGE_SIZE = 24


def describe(record: GenerationRecord) -> str:
    """The record's facts as Markdown (the prompt is in the parameters, shown as JSON)."""
    when = record.created_at.strftime("%Y-%m-%d %H:%M:%S")
    seconds = (record.duration_ms or 0) / 1000
    seeds = ", ".join(str(image.seed) for image in record.outputs) or "—"
    lines = [
        f"### Record #{record.id}",
        f"**{record.status}** · {record.task} · by {record.user} · {when} · {seconds:.2f} s",
        f"**Model** `{record.model}` · revision `{(record.model_revision or '')[:12]}`",
        f"**Seeds** {seeds}",
    ]
    if record.parent_id is not None:
        lines.append(f"**Rerun of** #{record.parent_id}")
    if record.error:
        lines.append(f"**Error** `{record.error}`")
    return "\n\n".join(lines)


def build(jobs: Jobs) -> dict[str, Any]:
    gallery = jobs.studio.gallery

    # -- functions --------------------------------------------------------

    def page(cursors: list[int]) -> tuple[list, list[int], str]:
        """One page of thumbnails; ``cursors`` holds the keyset of each older page."""
        before = cursors[-1] if cursors else None
        records = gallery.list(limit=PAGE_SIZE, before_id=before, status="succeeded")
        items = [
            (str(gallery.path(r.outputs[0].thumb_path)), f"#{r.id} · {r.prompt[:60]}") for r in records if r.outputs
        ]
        total = gallery.count(status="succeeded")
        first = len(cursors) * PAGE_SIZE + 1 if records else 0
        info = f"{first}–{len(cursors) * PAGE_SIZE + len(records)} of {total}"
        return items, [r.id for r in records], info

    def newest() -> tuple:
        return (*page([]), [])

    def older(cursors: list[int], ids: list[int]) -> tuple:
        if len(ids) < PAGE_SIZE:
            gr.Info("This is the oldest page.")
            return (*page(cursors), cursors)
        cursors = [*cursors, ids[-1]]
        return (*page(cursors), cursors)

    def newer(cursors: list[int]) -> tuple:
        cursors = cursors[:-1]
        return (*page(cursors), cursors)

    def open_record(record_id: float | None) -> tuple:
        if record_id is None:
            raise gr.Error("Record id must be a gallery record number.")
        try:
            record = gallery.get(int(record_id))
        except RecordNotFound as error:
            raise gr.Error(str(error)) from None
        image = str(gallery.path(record.outputs[0].path)) if record.outputs else None
        return int(record.id), image, describe(record), record.params, ""

    def select(ids: list[int], event: gr.SelectData) -> tuple:
        return open_record(ids[event.index])

    def rerun(record_id: float | None, request: gr.Request, progress=gr.Progress()) -> tuple:
        if record_id is None:
            raise gr.Error("Pick a record in the gallery first.")
        try:
            outcome = jobs.rerun(
                int(record_id),
                request=request,
                progress=lambda step, total: progress((step, total), desc="Denoising", unit="steps"),
            )
        except RecordNotFound as error:
            raise gr.Error(str(error)) from None
        record = outcome.record
        if outcome.identical:
            verdict = f"✅ **identical** to #{outcome.parent.id}: every image has the same sha256."
        elif record.status != "succeeded":
            verdict = f"Rerun #{record.id} {record.status}."
        else:
            reasons = "; ".join(outcome.differences) or "same environment, so the pixels themselves changed"
            verdict = f"⚠️ **different** from #{outcome.parent.id}: {reasons}."
        image = str(gallery.path(record.outputs[0].path)) if record.outputs else None
        return record.id, image, describe(record), record.params, verdict

    # -- layout -----------------------------------------------------------

    with gr.Row():
        refresh_button = gr.Button("↻ Newest", size="sm")
        newer_button = gr.Button("◀ Newer", size="sm")
        older_button = gr.Button("Older ▶", size="sm")
        page_info = gr.Markdown()
    grid = gr.Gallery(label="Gallery", columns=6, height=360, allow_preview=False, object_fit="cover")
    with gr.Row():
        with gr.Column(scale=4):
            image = gr.Image(label="Image", type="filepath", format="png", interactive=False, height=360)
        with gr.Column(scale=5):
            record_id = gr.Number(label="Record id", precision=0, minimum=1)
            with gr.Row():
                open_button = gr.Button("Open", size="sm")
                rerun_button = gr.Button("Rerun", variant="primary")
            verdict = gr.Markdown()
            description = gr.Markdown()
            params = gr.JSON(label="Parameters")
    cursors = gr.State([])
    ids = gr.State([])

    # -- events -----------------------------------------------------------

    shown = [grid, ids, page_info]
    record_view = [record_id, image, description, params, verdict]
    refresh_button.click(newest, outputs=[*shown, cursors], api_name="gallery_page", queue=False)
    older_button.click(older, inputs=[cursors, ids], outputs=[*shown, cursors], queue=False, api_visibility="private")
    newer_button.click(newer, inputs=cursors, outputs=[*shown, cursors], queue=False, api_visibility="private")
    grid.select(select, inputs=ids, outputs=record_view, queue=False, api_visibility="private")
    open_button.click(open_record, inputs=record_id, outputs=record_view, api_name="gallery_record", queue=False)
    rerun_button.click(
        rerun,
        inputs=record_id,
        outputs=record_view,
        api_name="rerun",
        concurrency_id="gpu",
        concurrency_limit=jobs.studio.settings.gpu_workers,
    ).success(newest, outputs=[*shown, cursors], queue=False, api_visibility="private")
    return {"refresh": newest, "outputs": [*shown, cursors]}
