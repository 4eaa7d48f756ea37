"""The Gallery tab: find any generation, review it, and make it again.

Browse newest first or search prompts; filter by task, person, review state,
star, tag or board. Open a record for the full image, every parameter, its
parent and children; star, approve or reject with a note, tag, put it on a
board, rerun it (and see whether it reproduced), make new seeds, send it back
to its tab, download or delete it, or requeue one that was interrupted,
failed or cancelled. Queued, running and interrupted generations have no
image yet; the Status filter shows them with a placeholder tile.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image, ImageDraw

from pipelines.requests import random_seed
from storage import Gallery, GenerationRecord, RecordNotFound, StorageError
from storage.export import export_board, export_zip
from storage.pngmeta import EXIF_FORMATS, exif_copy
from webui.jobs import Jobs, ordinal
from webui.settings import Settings
from webui.workers import Workers

PAGE_SIZE = 24
ANY = "any"
TASKS = (ANY, "txt2img")
REVIEWS = (ANY, "none", "approved", "rejected")
STATUSES = ("succeeded", "queued", "running", "failed", "cancelled", "interrupted", ANY)
# What other tools and sites take besides PNG: the same parameters text in EXIF (storage/pngmeta.exif_copy).
DOWNLOAD_FORMATS = {"JPEG": "jpeg", "WebP": "webp"}
EXPORT_FORMATS = {"PNG": "png", **DOWNLOAD_FORMATS}
ORDERS = {"Newest first": "newest", "Best adherence first": "adherence"}
REVIEW_BADGES = {"approved": "✅ approved", "rejected": "⛔ rejected", "none": "not reviewed"}


def _code(text: str) -> str:
    """``text`` as a Markdown code span, shown literally: a backtick in a tag or board name would
    otherwise close the span and let the rest render as Markdown and HTML (issue 7, "Bad input")."""
    text = " ".join(text.splitlines())
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""  # CommonMark strips one space each side
    return f"{fence}{pad}{text}{pad}{fence}"


def _made_by(record: GenerationRecord, actor: str) -> str:
    """What the audit log says of whose record it was: an admin acting on someone else's is an override."""
    return f"made by {record.user}" + ("" if record.user == actor else "; admin override")


def describe(record: GenerationRecord, *, place: int | None = None) -> str:
    """The record's facts as Markdown (the prompt itself is shown as JSON, never as HTML).

    `place` is a queued record's place in line.
    """
    when = record.created_at.strftime("%Y-%m-%d %H:%M:%S")
    seconds = (record.duration_ms or 0) / 1000
    seeds = ", ".join(str(image.seed) for image in record.outputs) or "—"
    star = "⭐ " if record.starred else ""
    lines = [
        f"### {star}Record #{record.id}",
        f"**{record.status}**"
        + (f" ({ordinal(place)} in line)" if place is not None else "")
        + f" · {record.task} · by {record.user} · {when} · {seconds:.2f} s",
        f"**Model** {_code(record.model)} · revision `{(record.model_revision or '')[:12]}`",
        f"**Seeds** {seeds}",
        f"**Review** {REVIEW_BADGES.get(record.review, record.review)}"
        + (f" by {record.reviewed_by}" if record.reviewed_by else ""),
    ]
    lines.append(f"**Prompt adherence** {adherence(record)}")
    if record.tags:
        lines.append("**Tags** " + ", ".join(_code(tag) for tag in record.tags))
    if record.boards:
        lines.append("**Boards** " + ", ".join(_code(board) for board in record.boards))
    if record.error:
        lines.append(f"**Error** {_code(record.error)}")
    environment = record.environment
    if environment:
        lines.append(
            f"**Ran on** {environment.get('device', '?')} ({environment.get('device_name', '')}), "
            f"{environment.get('dtype', '?')}, torch {environment.get('torch', '?')}, "
            f"diffusers {environment.get('diffusers', '?')}"
        )
    return "\n\n".join(lines)


def adherence(record: GenerationRecord) -> str:
    """The score and how it was made, or why there is none (pipelines/adherence.py)."""
    detail = record.adherence_detail
    if detail is None:
        return "not scored" + (" (made before scoring)" if record.status == "succeeded" else "")
    if record.adherence is None:
        return f"not scored: {_code(str(detail.get('reason', 'no reason given')))}"
    parts = [f"{record.adherence:.2f} ({detail.get('method')})"]
    for number, image in enumerate(detail.get("images") or [], start=1):
        checks = image.get("checks") or {}
        missed = [
            f"{name} {check['seen']} for {check['asked']}" for name, check in checks.items() if not check["match"]
        ]
        if missed:
            parts.append(f"image {number}: " + ", ".join(missed))
    return " · ".join(parts)


def lineage(record: GenerationRecord, children: list[GenerationRecord]) -> str:
    parts = []
    if record.parent_id is not None:
        parts.append(f"**Rerun of** #{record.parent_id}")
    if children:
        parts.append("**Reruns and variations** " + ", ".join(f"#{child.id}" for child in children))
    return " · ".join(parts)


@dataclass(frozen=True)
class GalleryHandles:
    """What webui/app.py wires from the gallery tab."""

    refresh: Callable[[], tuple]  # the newest page, for `outputs`: on page load and after each generation
    outputs: list[gr.components.Component]
    load: Callable[[float | None], GenerationRecord]  # a record by the id in `record_id` (gr.Error if none)
    send_button: gr.Button  # "Send to Text to image"
    record_id: gr.Number


def build(*, settings: Settings, gallery: Gallery, jobs: Jobs, workers: Workers) -> GalleryHandles:

    # -- functions --------------------------------------------------------

    def day(text: str, field: str, *, end: bool) -> dt.datetime | None:
        text = (text or "").strip()
        if not text:
            return None
        try:
            start = dt.datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=dt.timezone.utc)
        except ValueError:
            raise gr.Error(f"{field} must be a date like 2026-11-27; got {text!r}.") from None
        return start + dt.timedelta(days=1) if end else start

    def placeholder(status: str) -> str:
        """A tile for a generation with no image (queued, running, failed, cancelled, interrupted), made once."""
        path = settings.data_dir / "placeholders" / f"{status}.png"
        if not path.is_file():
            path.parent.mkdir(exist_ok=True)
            tile = Image.new("RGB", (128, 128), (225, 225, 225))
            ImageDraw.Draw(tile).text((12, 56), status, fill=(90, 90, 90))
            # Under a private name first: two pages asking at once never read half a tile.
            private = path.with_name(f"{status}.{uuid.uuid4().hex}.png")
            tile.save(private)
            os.replace(private, path)
        return str(path)

    def filters(
        text, scope, who, model, task, review, starred, tag, board, since, until, status, request: gr.Request
    ) -> dict[str, Any]:
        # An untouched textbox can arrive as None.
        text, who, model, tag = ((value or "").strip() for value in (text, who, model, tag))
        return {
            "text": text or None,
            "user": jobs.user(request) if scope == "mine" else (who or None),
            "model": model or None,
            "created_from": day(since, "From", end=False),
            "created_to": day(until, "To", end=True),
            "task": None if task == ANY else task,
            "review": None if review == ANY else review,
            "starred": True if starred else None,
            "tag": tag or None,
            "board": None if board in (None, ANY) else board,
            "status": None if status == ANY else status,
        }

    def page(chosen: dict[str, Any], cursors: list[str | None]) -> tuple:
        """One page of thumbnails; ``cursors`` holds where each shown page starts."""
        try:
            result = gallery.search(**chosen, limit=PAGE_SIZE, cursor=cursors[-1])
            total = gallery.count(**{name: value for name, value in chosen.items() if name != "order"})
        except StorageError as error:
            raise gr.Error(str(error)) from None
        records = list(result.records)
        items = [
            (
                str(gallery.path(r.outputs[0].thumb_path)) if r.outputs else placeholder(r.status),
                f"#{r.id} · {r.prompt[:60]}" + ("" if r.adherence is None else f" · adherence {r.adherence:.2f}"),
            )
            for r in records
        ]
        first = (len(cursors) - 1) * PAGE_SIZE
        info = f"{first + 1 if records else 0}–{first + len(records)} of {total}"
        return items, [r.id for r in records], info, result.next_cursor

    def search(
        text, scope, who, model, task, review, starred, tag, board, since, until, status, request: gr.Request
    ) -> tuple:
        chosen = filters(text, scope, who, model, task, review, starred, tag, board, since, until, status, request)
        items, ids, info, next_cursor = page(chosen, [None])
        return items, ids, info, chosen, [None], next_cursor

    def rank(chosen: dict[str, Any], order: str, least: float | None) -> tuple:
        """The search shown, ordered and cut by prompt adherence; gallery_search's own answer is left as it was."""
        chosen = {**chosen, "order": ORDERS.get(order, "newest"), "min_adherence": least}
        items, ids, info, next_cursor = page(chosen, [None])
        return items, ids, info, chosen, [None], next_cursor

    def newest() -> tuple:
        chosen = {"status": "succeeded"}
        items, ids, info, next_cursor = page(chosen, [None])
        names = board_choices()
        return items, ids, info, chosen, [None], next_cursor, gr.update(choices=names), gr.update(choices=names[1:])

    def older(chosen, cursors, next_cursor) -> tuple:
        if next_cursor is None:
            gr.Info("This is the oldest page.")
            return (*page(chosen, cursors)[:3], cursors, next_cursor)
        cursors = [*cursors, next_cursor]
        items, ids, info, next_cursor = page(chosen, cursors)
        return items, ids, info, cursors, next_cursor

    def newer(chosen, cursors) -> tuple:
        cursors = cursors[:-1] or [None]
        items, ids, info, next_cursor = page(chosen, cursors)
        return items, ids, info, cursors, next_cursor

    def board_choices() -> list[str]:
        return [ANY, *(board.name for board in gallery.boards())]

    def load(record_id: float | None) -> GenerationRecord:
        if record_id is None:
            raise gr.Error("Record id must be a gallery record number; pick one in the grid.")
        try:
            return gallery.get(int(record_id))
        except RecordNotFound as error:
            raise gr.Error(str(error)) from None

    def place(record: GenerationRecord) -> int | None:
        if record.status != "queued":
            return None
        try:
            return gallery.queue_position(record.id)
        except StorageError:  # claimed, or cancelled, since it was read
            return None

    def view(record: GenerationRecord, verdict: str = "") -> tuple:
        image = str(gallery.path(record.outputs[0].path)) if record.outputs else None
        others = [str(gallery.path(i.path)) for i in record.images if i.role != "output"]
        outputs = [str(gallery.path(i.path)) for i in record.outputs]
        return (
            record.id,
            image,
            outputs,
            gr.update(value=others, visible=bool(others)),
            describe(record, place=place(record)),
            lineage(record, gallery.children(record.id)),
            record.params,
            verdict,
            record.review_note or "",
            gr.update(value=image, interactive=image is not None),
        )

    def open_record(record_id: float | None) -> tuple:
        return view(load(record_id))

    def select(ids: list[int], event: gr.SelectData) -> tuple:
        return view(load(ids[event.index]))

    def guarded(action):
        """Run a review action; storage refusals become one clear message."""
        try:
            return action()
        except (StorageError, ValueError) as error:
            raise gr.Error(str(error)) from None

    def star(record_id: float | None) -> tuple:
        record = load(record_id)
        return view(guarded(lambda: gallery.star(record.id, starred=not record.starred)))

    def set_review(state: str):
        def handler(record_id: float | None, note: str, request: gr.Request) -> tuple:
            record = load(record_id)
            return view(
                guarded(
                    lambda: gallery.review(record.id, state=state, note=note.strip() or None, by=jobs.user(request))
                )
            )

        return handler

    def tag(record_id: float | None, text: str) -> tuple:
        record = load(record_id)
        tags = [t.strip() for t in text.split(",") if t.strip()]
        if not tags:
            raise gr.Error("Tags must be words separated by commas, e.g. 'hero, spring'.")
        return view(guarded(lambda: gallery.add_tags(record.id, tags)))

    def to_board(record_id: float | None, name: str, request: gr.Request) -> tuple:
        record = load(record_id)
        name = (name or "").strip()
        if not name:
            raise gr.Error("Board must have a name, e.g. 'spring campaign'.")
        if name not in {board.name for board in gallery.boards()}:
            guarded(lambda: gallery.create_board(name, by=jobs.user(request)))
        guarded(lambda: gallery.add_to_board(name, [record.id]))
        gr.Info(f"Added #{record.id} to board '{name}'.")
        return view(gallery.get(record.id))

    def ask_delete(record_id: float | None) -> Any:
        record = load(record_id)
        return gr.update(value=f"Yes, delete #{record.id} and its files", visible=True)

    def delete(record_id: float | None, request: gr.Request) -> tuple:
        record = load(record_id)
        # With no accounts the studio is single-user: that user may delete anything.
        is_admin = jobs.is_admin(request)
        guarded(lambda: gallery.delete(record.id, by=jobs.user(request), is_admin=is_admin))
        jobs.record(request, "delete", target=f"generation {record.id}", detail=_made_by(record, jobs.user(request)))
        gr.Info(f"Deleted record #{record.id} and its files.")
        return (
            None,
            None,
            [],
            gr.update(value=[], visible=False),
            "",
            "",
            None,
            f"Record #{record.id} deleted.",
            "",
            gr.update(value=None, interactive=False),
        )

    def requeue(record_id: float | None, request: gr.Request) -> tuple:
        """Queue an interrupted, failed or cancelled generation again, as its child; its owner or an admin only."""
        record = load(record_id)
        again = guarded(lambda: gallery.requeue(record.id, by=jobs.user(request), is_admin=jobs.is_admin(request)))
        if record.user != jobs.user(request):  # an admin override: the one kind of requeue worth recording
            jobs.record(request, "requeue", target=f"generation {record.id}", detail=_made_by(record, ""))
        workers.start()
        workers.moved()  # an idle worker takes it now rather than at its next look
        return view(
            gallery.get(again.id),
            f"Queued again as #{again.id}, a child of #{record.id}; it runs when its "
            "turn comes and shows up here when done.",
        )

    def rerun(record_id: float | None, request: gr.Request, progress=gr.Progress()) -> tuple:
        return _run_again(record_id, request, progress)

    def variations(record_id: float | None, count: float, request: gr.Request, progress=gr.Progress()) -> tuple:
        return _run_again(record_id, request, progress, seed=random_seed(), batch_size=int(count))

    def _run_again(record_id, request, progress, **changes) -> tuple:
        parent = load(record_id)
        outcome = jobs.rerun(
            parent.id,
            request=request,
            progress=lambda step, total: progress((step, total), desc="Denoising", unit="steps"),
            **changes,
        )
        record = outcome.record
        if record.status != "succeeded":
            verdict = f"Run #{record.id} {record.status}."
        elif changes:
            verdict = f"New seeds: record #{record.id}, a child of #{parent.id}."
        elif outcome.identical:
            verdict = f"✅ **identical** to #{parent.id}: every image has the same sha256."
        else:
            reasons = "; ".join(outcome.differences) or "the same environment, yet the pixels changed"
            verdict = f"⚠️ **different** from #{parent.id}: {reasons}."
        return view(record, verdict)

    def download_as(record_id: float | None, shown_format: str) -> str | None:
        """The open record's first image as a JPEG or WebP with its parameters in EXIF, made once per image."""
        if shown_format not in DOWNLOAD_FORMATS:
            raise gr.Error(f"Download format must be one of {', '.join(DOWNLOAD_FORMATS)}; got {shown_format!r}.")
        try:  # the id box changes as it is typed: an id that names nothing yet simply has no download
            record = gallery.get(int(record_id)) if record_id is not None else None
        except (RecordNotFound, ValueError, OverflowError):
            record = None
        if record is None or not record.outputs:
            return None
        image_format, first = DOWNLOAD_FORMATS[shown_format], record.outputs[0]
        folder = settings.data_dir / "exports"  # a folder the app serves
        folder.mkdir(exist_ok=True)
        path = folder / f"{first.sha256}{EXIF_FORMATS[image_format][1]}"
        if not path.exists():  # written whole, then renamed: a reader never sees half a file
            partial = folder / f".{path.name}.{uuid.uuid4().hex}.partial"
            partial.write_bytes(exif_copy(gallery.path(first.path), image_format))
            os.replace(partial, path)
        return str(path)

    def export(board: str | None, ids: list[int], shown_format: str, request: gr.Request) -> str:
        """The chosen board, or else the records on this page, as a ZIP to download (PNGs, or JPEGs / WebPs)."""
        folder = settings.data_dir / "exports"
        folder.mkdir(exist_ok=True)
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
        image_format = EXPORT_FORMATS.get(shown_format, shown_format)
        try:
            if board and board != ANY:
                safe = re.sub(r"[^A-Za-z0-9._-]+", "-", board).strip("-") or "board"
                exported = export_board(gallery, board, folder / f"{safe}-{stamp}.zip", image_format=image_format)
            elif ids:
                exported = export_zip(gallery, ids, folder / f"page-{stamp}.zip", image_format=image_format)
            else:
                raise gr.Error("Nothing to export: choose a board or search for some images first.")
        except (StorageError, ValueError) as error:
            raise gr.Error(str(error)) from None
        what = f"board {board}" if board and board != ANY else "generations " + ",".join(map(str, ids))[:200]
        detail = f"{exported.images} images from {exported.generations} generations"
        jobs.record(request, "export", target=what, detail=detail)
        return str(exported.path)

    # -- layout -----------------------------------------------------------

    with gr.Row():
        search_text = gr.Textbox(label="Search prompts", placeholder="red circle", scale=4)
        scope = gr.Radio(["everyone", "mine"], value="everyone", label="Whose", scale=2)
        task = gr.Dropdown(TASKS, value=ANY, label="Task", scale=1)
        review = gr.Dropdown(REVIEWS, value=ANY, label="Review", scale=1)
        starred = gr.Checkbox(label="Starred only", scale=1)
        tag_filter = gr.Textbox(label="Tag", scale=1)
        board_filter = gr.Dropdown([ANY], value=ANY, label="Board", allow_custom_value=True, scale=1)
    with gr.Accordion("More filters", open=False):
        with gr.Row():
            who = gr.Textbox(label="Made by", placeholder="a user name")
            model_filter = gr.Textbox(label="Model", placeholder="embedded")
            since = gr.Textbox(label="From", placeholder="2026-11-01")
            until = gr.Textbox(label="To", placeholder="2026-11-30")
            status = gr.Dropdown(STATUSES, value="succeeded", label="Status")
            order = gr.Dropdown(list(ORDERS), value="Newest first", label="Order")
            least = gr.Number(label="Min adherence", value=None, minimum=0, maximum=1, step=0.05)
    with gr.Row():
        search_button = gr.Button("Search", variant="primary", size="sm")
        refresh_button = gr.Button("↻ Newest", size="sm")
        newer_button = gr.Button("◀ Newer", size="sm")
        older_button = gr.Button("Older ▶", size="sm")
        page_info = gr.Markdown()
        export_button = gr.Button("Export board or page as ZIP", size="sm")
        export_format = gr.Radio(list(EXPORT_FORMATS), value="PNG", label="Images as", scale=1)
        export_file = gr.DownloadButton("⬇ ZIP", value=None, size="sm")
    grid = gr.Gallery(
        label="Gallery",
        columns=8,
        height=330,
        allow_preview=False,
        object_fit="cover",
        fit_columns=False,
        elem_id="gallery-grid",
    )
    with gr.Row():
        with gr.Column(scale=4):
            image = gr.Image(label="Image", type="filepath", format="png", interactive=False, height=320)
            outputs = gr.Gallery(
                label="All images of this record", columns=4, height=120, format="png", fit_columns=False
            )
            inputs = gr.Gallery(label="Inputs", columns=4, height=120, visible=False)
        with gr.Column(scale=5):
            with gr.Row():
                record_id = gr.Number(label="Record id", value=None, precision=0, scale=1)
                open_button = gr.Button("Open", size="sm", scale=1)
                download = gr.DownloadButton("⬇ PNG", value=None, interactive=False, size="sm", scale=1)
                download_format = gr.Radio(list(DOWNLOAD_FORMATS), value="JPEG", label="Also as", scale=1)
                converted = gr.DownloadButton("⬇ JPEG / WebP", value=None, size="sm", scale=1)
            with gr.Row():
                rerun_button = gr.Button("Rerun exactly", variant="primary")
                variation_count = gr.Slider(1, 8, value=4, step=1, label="New seeds", scale=1)
                variations_button = gr.Button("New seeds")
                send_button = gr.Button("Send to Text to image")
                requeue_button = gr.Button("↻ Requeue")
            verdict = gr.Markdown()
            description = gr.Markdown()
            family = gr.Markdown()
            with gr.Accordion("Review", open=True):
                with gr.Row():
                    star_button = gr.Button("⭐ Star / unstar", size="sm")
                    approve_button = gr.Button("Approve", size="sm")
                    reject_button = gr.Button("Reject", size="sm")
                    clear_button = gr.Button("Clear review", size="sm")
                note = gr.Textbox(label="Review note", lines=1)
                with gr.Row():
                    tags = gr.Textbox(label="Add tags (comma separated)", scale=3)
                    tag_button = gr.Button("Add tags", size="sm", scale=1)
                with gr.Row():
                    board_name = gr.Dropdown([], value=None, allow_custom_value=True, label="Board", scale=3)
                    board_button = gr.Button("Add to board", size="sm", scale=1)
                with gr.Row():
                    delete_button = gr.Button("🗑 Delete record…", variant="stop", size="sm")
                    confirm_delete = gr.Button("Yes, delete", variant="stop", size="sm", visible=False)
            params = gr.JSON(label="Parameters")
    chosen = gr.State({"status": "succeeded"})
    cursors = gr.State([None])
    next_cursor = gr.State(None)
    ids = gr.State([])

    # -- events -----------------------------------------------------------

    shown = [grid, ids, page_info]
    record_view = [record_id, image, outputs, inputs, description, family, params, verdict, note, download]
    refresh = [*shown, chosen, cursors, next_cursor, board_filter, board_name]
    filter_inputs = [
        search_text,
        scope,
        who,
        model_filter,
        task,
        review,
        starred,
        tag_filter,
        board_filter,
        since,
        until,
        status,
    ]
    # Every event that can refuse something is queued: Gradio shows a queued event's gr.Error as a
    # message, and an unqueued one's as a bare "Error" badge on its outputs.
    # Order and minimum adherence come after the search, so /gallery_search keeps its inputs for API callers.
    gr.on(
        [search_button.click, search_text.submit],
        search,
        inputs=filter_inputs,
        outputs=[*shown, chosen, cursors, next_cursor],
        api_name="gallery_search",
    ).success(
        rank, inputs=[chosen, order, least], outputs=[*shown, chosen, cursors, next_cursor], api_name="gallery_rank"
    )
    refresh_button.click(newest, outputs=refresh, api_name="gallery_page")
    older_button.click(
        older, inputs=[chosen, cursors, next_cursor], outputs=[*shown, cursors, next_cursor], api_visibility="private"
    )
    newer_button.click(
        newer, inputs=[chosen, cursors], outputs=[*shown, cursors, next_cursor], api_visibility="private"
    )
    export_button.click(export, inputs=[board_filter, ids, export_format], outputs=export_file, api_name="export")
    gr.on(
        [record_id.change, download_format.change],
        download_as,
        inputs=[record_id, download_format],
        outputs=converted,
        api_name="download_as",
    )
    grid.select(select, inputs=ids, outputs=record_view, api_visibility="private")
    gr.on(
        [open_button.click, record_id.submit],
        open_record,
        inputs=record_id,
        outputs=record_view,
        api_name="gallery_record",
    )
    star_button.click(star, inputs=record_id, outputs=record_view, api_name="star")
    approve_button.click(set_review("approved"), inputs=[record_id, note], outputs=record_view, api_name="approve")
    reject_button.click(set_review("rejected"), inputs=[record_id, note], outputs=record_view, api_name="reject")
    clear_button.click(set_review("none"), inputs=[record_id, note], outputs=record_view, api_visibility="private")
    gr.on([tag_button.click, tags.submit], tag, inputs=[record_id, tags], outputs=record_view, api_name="tag")
    board_button.click(to_board, inputs=[record_id, board_name], outputs=record_view, api_name="add_to_board").success(
        newest, outputs=refresh, api_visibility="private"
    )
    # Two presses: the first only shows the confirm button.
    delete_button.click(ask_delete, inputs=record_id, outputs=confirm_delete, api_visibility="private")
    confirm_delete.click(delete, inputs=record_id, outputs=record_view, api_name="delete").then(
        lambda: gr.update(visible=False), outputs=confirm_delete, queue=False, api_visibility="private"
    ).success(newest, outputs=refresh, api_visibility="private")
    record_id.change(lambda: gr.update(visible=False), outputs=confirm_delete, queue=False, api_visibility="private")
    rerun_event = rerun_button.click(rerun, inputs=record_id, outputs=record_view, api_name="rerun", **jobs.gpu_event)
    variations_event = variations_button.click(
        variations, inputs=[record_id, variation_count], outputs=record_view, api_name="variations", **jobs.gpu_event
    )
    requeue_event = requeue_button.click(requeue, inputs=record_id, outputs=record_view, api_name="requeue")
    for event in (rerun_event, variations_event, requeue_event):
        event.success(newest, outputs=refresh, api_visibility="private")
    return GalleryHandles(refresh=newest, outputs=refresh, load=load, send_button=send_button, record_id=record_id)
