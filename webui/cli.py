"""The ``atelier`` command: serve the studio, generate, rerun, list the gallery.

Every command takes ``--data DIR`` so a script or a test can point at a
scratch gallery; everything lands in the same gallery the UI shows, through
the same studio service.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from pipelines.requests import RequestError, Text2ImgRequest, random_seed
from pipelines.samplers import SAMPLER_NAMES
from webui.settings import Settings, SettingsError, model_defaults

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

    generate = command("generate", "Generate images and keep them in the gallery.")
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--negative-prompt", default="")
    generate.add_argument("--seed", type=int, default=None, help="default: a random seed")
    generate.add_argument("--steps", type=int, default=None, help="num_inference_steps")
    generate.add_argument("--guidance-scale", type=float, default=None)
    generate.add_argument("--width", type=int, default=None)
    generate.add_argument("--height", type=int, default=None)
    generate.add_argument("--sampler", default=None, choices=SAMPLER_NAMES)
    generate.add_argument("--batch-size", type=int, default=1)
    generate.add_argument("--model", default=None)
    generate.add_argument("--json", action="store_true", help="print one JSON object")

    rerun = command("rerun", "Run a gallery record again and say whether it reproduced.")
    rerun.add_argument("id", type=int)
    rerun.add_argument("--json", action="store_true")

    gallery = command("gallery", "Look at the gallery.")
    gallery_commands = gallery.add_subparsers(dest="gallery_command", required=True)
    listing = gallery_commands.add_parser("list", help="newest generations first")
    listing.add_argument("--data", type=Path, help="data folder (gallery, images, models)")
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--json", action="store_true")
    return parser


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
            {"path": str(gallery.path(image.path)), "sha256": image.sha256, "seed": image.seed} for image in record.outputs
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

            serve(settings.replace(host=args.host, port=args.port))
            return 0
        return _run(args, settings)
    except (RequestError, SettingsError) as error:
        print(f"atelier: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, settings: Settings) -> int:
    # Imported here: `atelier --help` should not wait for torch.
    from pipelines.engine import ModelError
    from storage import RecordNotFound
    from webui.studio import Studio

    if args.command == "gallery":
        from storage import Gallery

        gallery = Gallery(url=settings.gallery_url, data_dir=settings.data_dir)
        records = gallery.list(limit=args.limit)
        if args.json:
            print(json.dumps([{**_record_json(r, gallery), "prompt": r.prompt, "created_at": r.created_at.isoformat()} for r in records]))
        else:
            for record in records:
                print(f"{record.id:>6}  {record.created_at:%Y-%m-%d %H:%M}  {record.status:<9}  {record.prompt[:60]}")
        gallery.close()
        return 0

    if args.command == "generate":
        model = settings.model
        defaults = model_defaults(model)
        chosen = {
            "num_inference_steps": args.steps,
            "guidance_scale": args.guidance_scale,
            "width": args.width,
            "height": args.height,
            "sampler": args.sampler,
        }
        request = Text2ImgRequest(
            prompt=args.prompt,
            negative_prompt=args.negative_prompt,
            seed=random_seed() if args.seed is None else args.seed,
            batch_size=args.batch_size,
            model=model,
            **{key: defaults[key] if value is None else value for key, value in chosen.items()},
        )

    studio = Studio.from_settings(settings)
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
    finally:
        studio.close()


if __name__ == "__main__":
    sys.exit(main())
