"""The Gradio Blocks app: one module per tab, each handed the services it uses; `serve` builds them once."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import gradio as gr

from pipelines.errors import ModelError
from storage import Database, Users
from webui import sdapi
from webui.auth import Gate, ensure_first_admin, exposure_refusal, trust_proxies
from webui.errors import GpuWorkersUnreachable
from webui.executors import RayExecutor
from webui.imports import MetadataError, import_file, studio_catalog
from webui.jobs import REFUSALS_AT_ONCE, Jobs
from webui.models import find, studio_models
from webui.services import Access, build_access, build_services
from webui.settings import Settings, SettingsError
from webui.studio import Studio
from webui.tabs import audit as audit_tab
from webui.tabs import controlnet as controlnet_tab
from webui.tabs import gallery as gallery_tab
from webui.tabs import img2img as img2img_tab
from webui.tabs import inpaint as inpaint_tab
from webui.tabs import style
from webui.tabs import txt2img as txt2img_tab
from webui.tabs.runner import Runner

SERVED_FOLDERS = ("images", "thumbs", "placeholders", "exports")  # the data folder's folders Gradio may serve
GPU_STATUS_SECONDS = 5.0  # how often a page on a Ray pool asks whether its GPU workers can be reached

CSS = """
#atelier-header h1 { margin-bottom: 0; }
"""


def build_app(studio: Studio, users: Users, *, access: Access | None = None) -> gr.Blocks:
    settings, gallery = studio.settings, studio.gallery
    jobs = Jobs(studio, users=users, audit=access.audit if access is not None else None)
    with gr.Blocks(title="Atelier") as app:
        models = studio_models(settings)
        with gr.Row():
            # Nothing of the server's insides (paths, folders) on the page: only who is in and how.
            gr.Markdown(f"# Atelier\n{_open_warning(settings, users)}", elem_id="atelier-header")
            who = gr.Markdown(elem_id="atelier-user")
            # One picker above the tabs, so it is there in every tab; requests record the model's source.
            picker = gr.Dropdown(
                [m.name for m in models], value=find(models, settings.model).name, label="Model", scale=1
            )
            picked = gr.Markdown()
        if studio.pooled:
            # Why nothing runs while the Ray cluster is away; empty while it is there.
            gpu_status = gr.Markdown(elem_id="atelier-gpu-status")
            show_status = gpu_status_line(studio)
            gr.Timer(GPU_STATUS_SECONDS).tick(show_status, outputs=gpu_status, queue=False, api_visibility="private")
            app.load(show_status, outputs=gpu_status, queue=False, api_visibility="private")
        runner = Runner(jobs=jobs, gallery=gallery, models=models, settings=settings, picker=picker)
        with gr.Tabs() as tabs:
            with gr.Tab("Text to image", id="txt2img"):
                txt2img = txt2img_tab.build(settings, runner)
            with gr.Tab("Image to image", id="img2img"):
                img2img = img2img_tab.build(settings, runner)
            with gr.Tab("Product background", id="inpaint"):
                inpaint = inpaint_tab.build(settings, runner)
            with gr.Tab("ControlNet", id="controlnet"):
                controlnet = controlnet_tab.build(settings, runner)
            with gr.Tab("Gallery", id="gallery"):
                gallery_view = gallery_tab.build(settings=settings, gallery=gallery, jobs=jobs, workers=studio.workers)
        # A new image shows up in the gallery without a manual refresh.
        for tab in (txt2img, img2img, inpaint, controlnet):
            tab.generated.success(
                gallery_view.refresh, outputs=gallery_view.outputs, queue=False, api_visibility="private"
            )

        # "Send to its tab": every field filled from the record, to change one thing.
        fields = txt2img.fields

        styles = txt2img.styles

        def send(record_id):
            # Text-to-image fields are filled, style controls and reference
            # image included; an image task's tab opens with its own widgets
            # (its inputs are in the record: rerun it from the gallery to
            # change one setting).
            record = gallery_view.load(record_id)
            params = record.params
            if params["task"] != "txt2img":
                return [gr.update()] * len(fields) + [gr.Tabs(selected=params["task"])] + [gr.update()] * len(styles)
            reference = next(
                (str(gallery.path(image.path)) for image in record.images if image.role == "reference"), None
            )
            return (
                [params[name] for name in fields]
                + [gr.Tabs(selected="txt2img")]
                + style.values_from(params, styles, reference)
            )

        # The style controls come after the tab switch: API clients reading the first outputs keep working.
        gallery_view.send_button.click(
            send,
            inputs=gallery_view.record_id,
            outputs=[*fields.values(), tabs, *styles.values()],
            api_name="send_to_tab",
        )
        app.load(gallery_view.refresh, outputs=gallery_view.outputs, queue=False, api_visibility="private")
        if access is not None:
            audit_tab.build(app, jobs=jobs, audit=access.audit, who=who)

        # "Send to its tab" from an imported file: the tab of the task that made it, its fields filled,
        # and the pictures the file could not carry asked for.
        image_tabs = {"img2img": img2img, "inpaint": inpaint, "controlnet": controlnet}
        targets = [(task, name, widget) for task, tab in image_tabs.items() for name, widget in tab.fields.items()]

        def send_import(path):
            if path is None:
                return [gr.update()] * (len(targets) + 2)
            try:
                imported = import_file(path, studio_catalog(settings))
            except MetadataError as error:
                raise gr.Error(str(error)) from None
            values = {**imported.request.to_dict(), **imported.task_fields}
            for number, unit in enumerate(imported.task_fields.get("controls", [])):
                values.update({f"controls.{number}.{key}": value for key, value in unit.items()})
            needs = ", ".join(f"{ref.field} (the file used `{ref.name}`)" for ref in imported.needs)
            note = f"Sent to **{imported.task}**." + (f" Give it: {needs}." if needs else "")
            return (
                [gr.Tabs(selected=imported.task)]
                + [
                    values[name] if task == imported.task and name in values else gr.update()
                    for task, name, _ in targets
                ]
                + [note]
            )

        txt2img.send_import.click(
            send_import,
            inputs=txt2img.imported,
            outputs=[tabs, *(widget for _, _, widget in targets), txt2img.import_summary],
            api_name="send_import",
        )

        def pick(name, progress=gr.Progress()):
            """Load the picked model now (with a progress message), and give the tabs its settings."""
            entry = find(models, name)
            if entry is None:
                raise gr.Error(f"model must be one of {', '.join(m.name for m in models)}; got {name!r}.")
            progress(0, desc=f"Loading {entry.name}…")
            try:
                loaded = studio.engine.load(entry.source)
            except Exception as error:  # a missing file, an unsupported model: said, and the old one stays
                raise gr.Error(f"{entry.name} could not be loaded: {error}") from None
            defaults = entry.defaults()
            if isinstance(studio.engine, RayExecutor):  # each replica holds models of its own
                held = "on the GPU pool."
            else:
                held = f"{len(studio.engine.resident())} of {studio.engine.max_models} models in memory."
            note = f"**{entry.name}** loaded ({loaded.family}, revision `{loaded.revision[:12]}`); {held}"
            if not entry.negative_prompt_applies:
                note += " Its guidance is built in: no negative prompt, sampler Euler."
            updates = [defaults[key] for key in ("sampler", "num_inference_steps", "guidance_scale", "width", "height")]
            return [note, *updates, gr.update(visible=entry.negative_prompt_applies, value="")]

        # What does not apply to the picked model is hidden in every tab: negative prompts for FLUX, the refiner but for SDXL.
        negatives = [tab.negative_prompt for tab in (img2img, inpaint, controlnet)]
        refiner_boxes = [txt2img.refiner_box, img2img.refiner_box]

        def hide_what_does_not_apply(name):
            entry = find(models, name)
            family = (studio.engine.family_of(entry.source) or entry.family) if entry is not None else None
            negative = gr.update(visible=True) if family != "flux" else gr.update(visible=False, value="")
            refiner = gr.update(visible=family == "sdxl")
            return [negative] * len(negatives) + [refiner] * len(refiner_boxes)

        fields_for_model = [
            fields[key] for key in ("sampler", "num_inference_steps", "guidance_scale", "width", "height")
        ]
        picker.change(
            pick, inputs=picker, outputs=[picked, *fields_for_model, fields["negative_prompt"]], api_name="pick_model"
        ).then(
            hide_what_does_not_apply,
            inputs=picker,
            outputs=[*negatives, *refiner_boxes],
            queue=False,
            api_visibility="private",
        )
    # The GPU events only queue a job and wait for it (webui/jobs.py); the
    # workers are the GPU's concurrency. Every handler in the "gpu" group gets
    # the waiting limit, whatever its tab asked for: Gradio takes the lowest
    # limit in a group, and a limit of gpu_workers there would put Gradio's
    # first-come queue in front of the studio's fair one.
    for fn in app.fns.values():
        if fn.concurrency_id == "gpu":
            fn.concurrency_limit = jobs.gpu_event["concurrency_limit"]
    app.queue(default_concurrency_limit=studio.workers.count)
    return app


def gpu_status_line(studio: Studio) -> Callable[[], str]:
    """The status line's handler: "No GPU workers reachable: ..." while the pool is away, else nothing."""

    def show() -> str:
        # Not waiting for a connection another thread is making: the page asks every few seconds.
        return studio.gpu_status(wait=False) or ""

    return show


def launch(
    studio: Studio,
    *,
    access: Access | None = None,
    prevent_thread_lock: bool = False,
    quiet: bool = False,
) -> gr.Blocks:
    settings = studio.settings
    if access is None:  # a studio on its own (a test): its accounts through a connection of their own
        access = build_access(Database(settings.gallery_url), settings)
    users = access.users
    refusal = exposure_refusal(settings, users.count_users())
    if refusal is not None:
        raise SettingsError(refusal)
    app = build_app(studio, users, access=access)
    # With accounts, every page, file and API route wants a login (webui/auth.py); without,
    # the studio is single-user, as it was before accounts existed. Decided here, at start.
    accounts = bool(users.count_users())
    gate = Gate(access, settings) if accounts else None
    trust_proxies(settings, os.environ)
    # Queued jobs run from now on, those left from before a restart first.
    studio.workers.start()
    app.launch(
        server_name=settings.host,
        server_port=settings.port,
        # Each waiting handler holds a thread; leave Gradio's default 40 for every other event besides.
        max_threads=40 + settings.queue_limit + studio.workers.count + REFUSALS_AT_ONCE,
        # Gradio serves files only from these: what the pages show (images,
        # thumbnails, placeholder tiles, ZIP exports), never the rest of the data
        # folder (the database with its password hashes, pending files, LoRAs).
        allowed_paths=[str(settings.data_dir.resolve() / folder) for folder in SERVED_FOLDERS],
        prevent_thread_lock=prevent_thread_lock,
        quiet=quiet,
        show_error=True,
        css=CSS,
        root_path=settings.root_path or None,
        auth_dependency=gate.user if gate is not None else None,
        auth_message="Log in with your Atelier account.",
        # The login routes (with accounts) and the AUTOMATIC1111-compatible API (/sdapi/v1, /docs) on the
        # same server, there before it answers anyone.
        app_kwargs=_app_kwargs(gate, sdapi.app_kwargs(studio, access, accounts=accounts)),
    )
    return app


def _open_warning(settings: Settings, users: Users) -> str:
    if settings.anonymous_allowed and not users.count_users():
        return (
            "**Open to everyone who can reach it: no login, anyone may delete anything (ATELIER_ALLOW_ANONYMOUS=1).**"
        )
    return ""


def _app_kwargs(gate: Gate | None, api: dict[str, Any]) -> dict[str, Any]:
    """The FastAPI arguments of the login gate and the API together: the gate's routes first."""
    if gate is None:
        return api
    login = gate.app_kwargs()
    return {
        **api,
        "routes": [*login["routes"], *api["routes"]],
        "exception_handlers": {**api.get("exception_handlers", {}), **login.get("exception_handlers", {})},
    }


def _warm_up(studio: Studio) -> None:
    try:
        studio.engine.load(studio.settings.model)
    except (ModelError, GpuWorkersUnreachable) as error:
        # The page still serves the gallery; each generation will say the same (or wait for the pool).
        print(f"atelier: {error}", flush=True)
    else:
        engine = studio.engine
        where = "the Ray pool" if isinstance(engine, RayExecutor) else engine.device.type
        print(f"Model {studio.settings.model} ready on {where}.", flush=True)


def serve(settings: Settings) -> None:
    services = build_services(settings)
    try:
        made = ensure_first_admin(settings, services.access)
        if made:
            print(made, flush=True)
        accounts = services.users.count_users()
        refusal = exposure_refusal(settings, accounts)
        if refusal is not None:
            raise SettingsError(refusal)
        # Import torch and load the model while the page is already up: the first
        # click then waits on the engine's lock instead of the page on the model.
        threading.Thread(target=_warm_up, args=(services.studio,), daemon=True).start()
        print(
            f"Atelier on http://{settings.host}:{settings.port} · model {settings.model} · data {settings.data_dir}",
            flush=True,
        )
        if accounts:
            print(f"{accounts} account{'s' if accounts > 1 else ''}: everyone logs in.", flush=True)
        elif settings.anonymous_allowed:
            print(
                "WARNING: ATELIER_ALLOW_ANONYMOUS=1 and no account: everyone who can reach "
                f"{settings.host}:{settings.port} may generate, read every prompt and delete anything.",
                flush=True,
            )
        else:
            print("No accounts: single-user studio; add one with `atelier user add NAME`", flush=True)
        launch(services.studio, access=services.access)
    finally:
        services.close()
