"""The ``atelier`` command: serve the studio, generate, rerun, and look after the gallery.

Every command takes ``--data DIR`` so a script or a test can point at a
scratch gallery; everything lands in the same gallery the UI shows, through
the same studio service.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipelines.requests import REQUEST_TYPES, RESIZE_MODES, RequestError
from pipelines.samplers import SAMPLER_NAMES, SamplerNotAvailable, sampler_from
from webui import training_cli
from webui.settings import Settings, SettingsError

# Offline and private by default; a user who wants the hub unsets this.
for _name, _value in (("HF_HUB_DISABLE_TELEMETRY", "1"), ("GRADIO_ANALYTICS_ENABLED", "False")):
    os.environ.setdefault(_name, _value)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atelier", description="A studio for diffusion image generation.")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument("--data", type=Path, help="data folder (gallery, images, models)")
        return sub

    serve = command("serve", "Start the studio in the browser.")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 7860)")
    serve.add_argument("--model", help="'embedded', a diffusers folder, a .safetensors file or a hub id")
    serve.add_argument(
        "--executor",
        choices=("local", "ray"),
        help="local: this process's GPU (default); ray: a Ray Serve pool of GPUs",
    )
    serve.add_argument(
        "--ray-address", help="HOST:PORT of the Ray head; default: start Ray here with this machine's GPUs"
    )

    generate = command("generate", "Generate images and keep them in the gallery.")
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--negative-prompt", default="")
    generate.add_argument("--seed", type=int, default=None, help="0 to 2**64 - 1; default: a random seed")
    generate.add_argument("--steps", type=int, default=None, help="num_inference_steps")
    generate.add_argument("--guidance-scale", type=float, default=None)
    generate.add_argument("--width", type=int, default=None)
    generate.add_argument("--height", type=int, default=None)
    generate.add_argument(
        "--sampler",
        default=None,
        help=f"one of {', '.join(SAMPLER_NAMES)}; or as A1111 or ComfyUI name it ('dpmpp_2m_sde_gpu', with --scheduler)",
    )
    generate.add_argument("--scheduler", default=None, help="A1111's Schedule type or ComfyUI's scheduler ('karras')")
    generate.add_argument("--batch-size", type=int, default=1)
    generate.add_argument("--model", default=None)
    generate.add_argument("--task", choices=list(REQUEST_TYPES), default="txt2img")
    generate.add_argument(
        "--image", type=Path, help="img2img / inpaint: the picture to start from; controlnet: optional init image"
    )
    generate.add_argument(
        "--strength", type=float, default=None, help="img2img, inpaint: 0 keeps the image, 1 replaces it"
    )
    generate.add_argument(
        "--resize-mode", choices=RESIZE_MODES, default=None, help="an image of another size: fit, crop or pad"
    )
    generate.add_argument(
        "--mask", type=Path, help="inpaint: white = regenerate; default: the product is found and kept"
    )
    generate.add_argument("--mask-method", default="auto", help="inpaint without --mask: auto, alpha, grabcut or rembg")
    generate.add_argument(
        "--mask-grow", type=int, default=None, help="inpaint: pixels the regenerated area grows (<0 shrinks)"
    )
    generate.add_argument("--mask-feather", type=int, default=None, help="inpaint: pixels of soft seam")
    generate.add_argument(
        "--no-matting", action="store_true", help="inpaint: paste the product back with the mask's hard edge"
    )
    generate.add_argument("--matte-band", type=int, default=None, help="inpaint: pixels of matted edge on each side")
    generate.add_argument("--shadow", default=None, help="inpaint: none, drop or contact")
    generate.add_argument(
        "--control-image", type=Path, action="append", default=[], help="controlnet: repeat for several"
    )
    generate.add_argument(
        "--preprocessor", default="canny", help="controlnet: canny, lineart_standard, shuffle, none, ..."
    )
    generate.add_argument("--controlnet", default=None, help="controlnet: a listed name, a folder, a file or a hub id")
    generate.add_argument("--conditioning-scale", type=float, default=1.0)
    generate.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="NAME[:WEIGHT]",
        help="a LoRA from the LoRA folder, weight 1 unless given; repeat for several",
    )
    generate.add_argument("--reference", type=Path, help="a reference image for the IP-Adapter (style or composition)")
    generate.add_argument("--reference-scale", type=float, default=None, help="how strongly the reference steers (0-2)")
    generate.add_argument(
        "--variation-seed", type=int, default=None, help="txt2img, controlnet: a second seed blended in"
    )
    generate.add_argument(
        "--variation-strength", type=float, default=None, help="0: the seed's image, 1: the variation seed's"
    )
    generate.add_argument(
        "--refiner", default=None, help="txt2img, img2img on SDXL: a refiner model that finishes the image"
    )
    generate.add_argument(
        "--refiner-switch", type=float, default=None, help="share of the steps the base does (default 0.8)"
    )
    generate.add_argument("--json", action="store_true", help="print one JSON object")

    rerun = command("rerun", "Run a gallery record again and say whether it reproduced.")
    rerun.add_argument("id", type=int)
    rerun.add_argument("--json", action="store_true")

    gallery = command("gallery", "Look at the gallery, bring images in and take them out.")
    gallery_commands = gallery.add_subparsers(dest="gallery_command", required=True)

    def gallery_command(name: str, help: str) -> argparse.ArgumentParser:
        sub = gallery_commands.add_parser(name, help=help, description=help)
        # SUPPRESS: `atelier gallery --data D list` keeps D instead of this default.
        sub.add_argument("--data", type=Path, default=argparse.SUPPRESS, help="data folder (gallery, images, models)")
        return sub

    listing = gallery_command("list", "Newest generations first.")
    search = gallery_command("search", "Generations whose prompt or negative prompt has every word, best match first.")
    search.add_argument("text")
    for sub in (listing, search):
        sub.add_argument("--limit", type=int, default=20)
        sub.add_argument("--json", action="store_true")
        sub.add_argument("--by-adherence", action="store_true", help="best prompt adherence first, unscored last")
        sub.add_argument("--min-adherence", type=float, help="only generations scoring at least this (0 to 1)")

    show = gallery_command("show", "Everything about one generation: parameters, images, family, review state.")
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true")

    importing = gallery_command(
        "import",
        "Read the request in an image's metadata (Atelier, A1111, ComfyUI, Fooocus, InvokeAI, NovelAI; PNG, JPEG, WebP).",
    )
    importing.add_argument("png", type=Path)
    importing.add_argument("--json", action="store_true")

    export = gallery_command("export", "Write generations' images and a manifest (JSON and CSV) to a ZIP file.")
    chosen = export.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--board", help="every generation on this board")
    chosen.add_argument("--ids", help="these generations, comma-separated: 1,2,3")
    export.add_argument("--out", type=Path, required=True, help="the ZIP file to write")

    user = command("user", "Add accounts and change their passwords; with one or more, everyone logs in.")
    user_commands = user.add_subparsers(dest="user_command", required=True)

    def user_command(name: str, help: str) -> argparse.ArgumentParser:
        sub = user_commands.add_parser(name, help=help, description=help)
        sub.add_argument("--data", type=Path, default=argparse.SUPPRESS, help="data folder (gallery, images, models)")
        sub.add_argument("name", help="1 to 64 letters, digits, '.', '_' or '-'")
        return sub

    add = user_command("add", "Add an account; the password is asked twice (or read as two lines from stdin).")
    add.add_argument("--admin", action="store_true", help="may delete anyone's generations")
    user_command("passwd", "Change an account's password and end its sessions; asked twice (or two lines of stdin).")
    user_command("unlock", "Let a name log in again after too many failed logins locked it.")

    audit = command("audit", "The audit log: deletes, exports, account changes, admin overrides, locks.")
    audit.add_argument("--since", help="from this date or time on (ISO 8601, UTC unless it says otherwise)")
    audit.add_argument("--json", action="store_true", help="print one JSON list")
    training_cli.add_parser(commands)
    return parser


def _generate_request(args: argparse.Namespace, settings: Settings):
    """The request `atelier generate` describes; images are read and checked before anything runs."""
    from pipelines.requests import ImageRef
    from webui.forms import build_request, mask_upload, upload

    image_task = args.task in ("img2img", "inpaint")
    return build_request(
        args.task,
        prompt=args.prompt,
        model=settings.model,
        image=upload(args.image, field="image", required=image_task),
        mask=mask_upload(args.mask),
        mask_method=args.mask_method,
        control_images=[upload(path, field="control_image") for path in args.control_image],
        controlnet=args.controlnet,
        preprocessor=args.preprocessor,
        conditioning_scale=args.conditioning_scale,
        seed=args.seed,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        width=args.width,
        height=args.height,
        sampler=_sampler(args.sampler, args.scheduler),
        negative_prompt=args.negative_prompt,
        batch_size=args.batch_size,
        strength=args.strength if args.task != "txt2img" else None,
        resize_mode=args.resize_mode if args.task in ("img2img", "controlnet") else None,
        mask_grow=args.mask_grow if args.task == "inpaint" else None,
        mask_feather=args.mask_feather if args.task == "inpaint" else None,
        matting=False if args.task == "inpaint" and args.no_matting else None,
        matte_band=args.matte_band if args.task == "inpaint" else None,
        shadow=args.shadow if args.task == "inpaint" else None,
        loras=_loras(args.lora),
        ip_adapter_image=ImageRef.of(upload(args.reference, field="reference")) if args.reference else None,
        ip_adapter_scale=args.reference_scale,
        variation_seed=args.variation_seed,
        variation_strength=args.variation_strength,
        refiner=args.refiner,
        refiner_switch=args.refiner_switch,
    )


def _sampler(name: str | None, scheduler: str | None) -> str | None:
    """A sampler as another tool writes it, in Atelier's name; None takes the model's default."""
    if name is None:
        if scheduler is not None:
            raise RequestError("--scheduler needs a --sampler to go with; give both or neither.")
        return None
    try:
        return sampler_from(name, scheduler)
    except SamplerNotAvailable as error:
        raise RequestError(str(error)) from None


def _loras(given: list[str]) -> tuple[tuple[str, float], ...]:
    """``--lora brand:0.8 --lora grain`` as (name, weight) pairs."""
    pairs = []
    for item in given:
        name, _, weight = item.rpartition(":") if ":" in item else (item, "", "1")
        try:
            pairs.append((name, float(weight)))
        except ValueError:
            raise RequestError(
                f"--lora must be NAME or NAME:WEIGHT with a number for the weight; got {item!r}."
            ) from None
    return tuple(pairs)


def _progress_printer(quiet: bool):
    def show(step: int, total: int) -> None:
        if quiet:
            return
        filled = round(20 * step / total)
        end = "\n" if step == total else ""
        print(f"\r[{'#' * filled}{'.' * (20 - filled)}] step {step}/{total}", end=end, file=sys.stderr, flush=True)

    return show


def _record_json(record, gallery) -> dict[str, Any]:
    return {
        "id": record.id,
        "status": record.status,
        "images": [
            {"path": str(gallery.path(image.path)), "sha256": image.sha256, "seed": image.seed}
            for image in record.outputs
        ],
    }


def _print_record(record, gallery) -> None:
    print(f"record {record.id}: {record.status}")
    for image in record.outputs:
        print(f"  seed {image.seed}: {gallery.path(image.path)}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env().replace(data_dir=args.data, model=getattr(args, "model", None))
        if args.command == "serve":
            from webui.app import serve

            serve(
                settings.replace(host=args.host, port=args.port, executor=args.executor, ray_address=args.ray_address)
            )
            return 0
        if args.command == "gallery":
            return _gallery(args, settings)
        if args.command == "user":
            return _user(args, settings)
        if args.command == "audit":
            return _audit(args, settings)
        if args.command == "lora":
            return training_cli.train(args, settings)
        return _run(args, settings)
    except (RequestError, SettingsError) as error:
        print(f"atelier: {error}", file=sys.stderr)
        return 2


def _fail(message: object) -> int:
    print(f"atelier: {message}", file=sys.stderr)
    return 2


def _row_json(record, gallery) -> dict[str, Any]:
    return {
        **_record_json(record, gallery),
        "prompt": record.prompt,
        "created_at": record.created_at.isoformat(),
        "adherence": record.adherence,
    }


def _print_row(record) -> None:
    score = "" if record.adherence is None else f"  adherence {record.adherence:.2f}"
    print(f"{record.id:>6}  {record.created_at:%Y-%m-%d %H:%M}  {record.status:<9}  {record.prompt[:60]}{score}")


def _when(moment) -> str | None:
    return None if moment is None else moment.isoformat()


def _show_json(record, children, gallery) -> dict[str, Any]:
    return {
        "id": record.id,
        "status": record.status,
        "error": record.error,
        "user": record.user,
        "task": record.task,
        "created_at": _when(record.created_at),
        "finished_at": _when(record.finished_at),
        "duration_ms": record.duration_ms,
        "model": record.model,
        "model_revision": record.model_revision,
        "params": record.params,
        "images": [
            {
                "role": image.role,
                "position": image.position,
                "seed": image.seed,
                "width": image.width,
                "height": image.height,
                "sha256": image.sha256,
                "path": str(gallery.path(image.path)),
            }
            for image in record.images
        ],
        "parent_id": record.parent_id,
        "children": [child.id for child in children],
        "starred": record.starred,
        "review": record.review,
        "review_note": record.review_note,
        "reviewed_by": record.reviewed_by,
        "reviewed_at": _when(record.reviewed_at),
        "tags": list(record.tags),
        "boards": list(record.boards),
        "environment": record.environment,
        "timings": record.timings,
        "adherence": record.adherence,
        "adherence_detail": record.adherence_detail,
    }


def _print_show(shown: dict[str, Any]) -> None:
    print(f"generation {shown['id']}: {shown['status']}" + (f" ({shown['error']})" if shown["error"] else ""))
    print(f"  made by {shown['user']} at {shown['created_at']}, {shown['task']} with {shown['model']}")
    if shown["model_revision"]:
        print(f"  model revision {shown['model_revision']}")
    print("parameters:")
    for key, value in shown["params"].items():
        print(f"  {key}: {value}")
    print("images:")
    for image in shown["images"]:
        print(
            f"  {image['role']} {image['position']}  seed {image['seed']}  {image['width']}x{image['height']}"
            f"  sha256 {image['sha256']}  {image['path']}"
        )
    print(f"parent: {shown['parent_id'] or 'none'}")
    print(f"children: {', '.join(map(str, shown['children'])) or 'none'}")
    review = shown["review"]
    if review != "none":
        review += f" by {shown['reviewed_by']} at {shown['reviewed_at']}"
        review += f": {shown['review_note']}" if shown["review_note"] else ""
    print(f"review: {review}")
    print(f"starred: {'yes' if shown['starred'] else 'no'}")
    print(f"tags: {', '.join(shown['tags']) or 'none'}")
    print(f"boards: {', '.join(shown['boards']) or 'none'}")


def _print_import(imported) -> None:
    request = imported.request
    print(f"source: {imported.source}")
    for name in ("prompt", "negative_prompt", "seed", "num_inference_steps", "guidance_scale", "width", "height"):
        print(f"{name}: {getattr(request, name)}")
    print(f"sampler: {request.sampler}")
    print(f"model: {request.model}")
    print("unmapped:" + ("" if imported.unmapped else " none"))
    for key, value in imported.unmapped.items():
        print(f"  {key}: {value}")
    if imported.task != "txt2img":
        print(f"task: {imported.task} {json.dumps(imported.task_fields)}")
    print("inputs:" + ("" if imported.inputs else " none"))
    for ref in imported.inputs:
        found = (
            f"picked {ref.picked}" if ref.picked else "needed" if ref in imported.needs else "not in Atelier's lists"
        )
        print(f"  {ref.kind}: {ref.name} ({found})")


def _generation_ids(text: str) -> list[int] | None:
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isascii() and part.isdigit() and len(part) <= 18 for part in parts):
        return None
    return [int(part) for part in parts]


def _gallery(args: argparse.Namespace, settings: Settings) -> int:
    """The `gallery` commands: storage only, so none of them waits for torch."""
    from storage import StorageError
    from storage.export import export_board, export_zip
    from webui.imports import MetadataError, import_file, studio_catalog
    from webui.services import build_services

    try:
        if args.gallery_command == "import":
            imported = import_file(args.png, studio_catalog(settings))
            if args.json:
                print(imported.to_json())
            else:
                _print_import(imported)
            return 0
        ids = None
        if args.gallery_command == "export" and args.ids is not None:
            ids = _generation_ids(args.ids)
            if ids is None:
                return _fail(f"--ids must be generation ids separated by commas, like 1,2,3; got {args.ids!r}.")
        with build_services(settings) as services:
            gallery = services.gallery
            if args.gallery_command in ("list", "search"):
                text = args.text if args.gallery_command == "search" else None
                if text is None and not args.by_adherence and args.min_adherence is None:
                    records = gallery.list(limit=args.limit)
                else:
                    order = "adherence" if args.by_adherence else "newest"
                    found = gallery.search(text=text, min_adherence=args.min_adherence, order=order, limit=args.limit)
                    records = list(found.records)
                if args.json:
                    print(json.dumps([_row_json(record, gallery) for record in records]))
                else:
                    for record in records:
                        _print_row(record)
            elif args.gallery_command == "show":
                record = gallery.get(args.id)
                shown = _show_json(record, gallery.children(record.id), gallery)
                if args.json:
                    print(json.dumps(shown))
                else:
                    _print_show(shown)
            else:  # export
                if ids is None:
                    exported = export_board(gallery, args.board, args.out)
                else:
                    exported = export_zip(gallery, ids, args.out)
                print(f"wrote {exported.images} images from {exported.generations} generations to {exported.path}")
                if exported.skipped:
                    print(f"  without images, left out: {', '.join(map(str, exported.skipped))}")
        return 0
    except (StorageError, MetadataError, OSError) as error:
        return _fail(error)


def _user(args: argparse.Namespace, settings: Settings) -> int:
    """The `user` commands: storage only, like `gallery`; each change lands in the audit log."""
    from storage import StorageError
    from webui.services import build_services

    password = None
    if args.user_command != "unlock":
        password = _new_password()
        if password is None:
            return _fail("the two passwords differ.")
    try:
        with build_services(settings) as services:
            users, audit = services.users, services.access.audit
            who = f"{settings.user} (command line)"
            if args.user_command == "add":
                added = users.add_user(args.name, password, admin=args.admin)
                audit.record("user.add", actor=who, target=added.name, detail="admin" if added.is_admin else "")
                print(f"added {'admin ' if added.is_admin else ''}account {added.name}")
            elif args.user_command == "passwd":
                changed = users.set_password(args.name, password)
                audit.record("user.password", actor=who, target=changed.name, detail="its sessions ended")
                print(f"changed the password of {changed.name}")
            else:
                had = services.access.logins.unlock(args.name)
                audit.record("user.unlock", actor=who, target=args.name)
                print(f"unlocked {args.name}" if had else f"{args.name} had no failed logins to clear")
        return 0
    except (StorageError, OSError) as error:
        return _fail(error)


def _audit(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import datetime, timezone

    from storage import StorageError
    from webui.services import build_services

    since = None
    if args.since is not None:
        try:
            since = datetime.fromisoformat(args.since)
        except ValueError:
            return _fail(f"--since must be a date or time like 2026-12-01 or 2026-12-01T09:30; got {args.since!r}.")
        since = since if since.tzinfo else since.replace(tzinfo=timezone.utc)
    try:
        with build_services(settings) as services:
            entries = services.access.audit.entries(since=since)
    except (StorageError, OSError) as error:
        return _fail(error)
    if args.json:
        print(json.dumps([entry.to_dict() for entry in entries]))
    for entry in [] if args.json else entries:
        detail = f"  ({entry.detail})" if entry.detail else ""
        print(
            f"{entry.at:%Y-%m-%d %H:%M:%S}  {entry.actor}  {entry.action}  {entry.target}  from {entry.address}{detail}"
        )
    return 0


def _new_password() -> str | None:
    """The password typed twice, or None when the two differ.

    A terminal gets two hidden prompts; otherwise two lines are read from
    stdin, so a script can pipe them in without the password on the command line.
    """
    if sys.stdin.isatty():
        first, second = getpass.getpass("Password: "), getpass.getpass("Password again: ")
    else:
        first, second = (sys.stdin.readline().removesuffix("\n").removesuffix("\r") for _ in range(2))
    return first if first == second else None


def _run(args: argparse.Namespace, settings: Settings) -> int:
    # Imported here: `atelier --help` should not wait for torch.
    from pipelines.errors import ModelError
    from storage import RecordNotFound
    from webui.errors import StudioError
    from webui.services import build_services

    if args.command == "generate":
        request = _generate_request(args, settings)

    services = build_services(settings)
    studio = services.studio
    progress = _progress_printer(quiet=args.json or not sys.stderr.isatty())
    try:
        if args.command == "generate":
            record = studio.submit(request, user=settings.user, progress=progress)
            if args.json:
                print(json.dumps(_record_json(record, studio.gallery)))
            else:
                _print_record(record, studio.gallery)
            return 0 if record.status == "succeeded" else 1
        outcome = studio.rerun(args.id, user=settings.user, progress=progress)
        if args.json:
            print(
                json.dumps(
                    {
                        **_record_json(outcome.record, studio.gallery),
                        "parent_id": outcome.parent.id,
                        "identical": outcome.identical,
                        "differences": outcome.differences,
                    }
                )
            )
        else:
            _print_record(outcome.record, studio.gallery)
            verdict = "identical to" if outcome.identical else "different from"
            print(f"{verdict} record {outcome.parent.id}" + "".join(f"\n  {d}" for d in outcome.differences))
        return 0 if outcome.record.status == "succeeded" else 1
    except (ModelError, RecordNotFound) as error:
        print(f"atelier: {error}", file=sys.stderr)
        return 2
    except StudioError as error:  # out of memory, a full or read-only data folder: the run failed, nothing half written
        print(f"atelier: {error}", file=sys.stderr)
        return 1
    finally:
        services.close()


if __name__ == "__main__":
    sys.exit(main())
