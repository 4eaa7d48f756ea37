"""``atelier lora train``: a LoRA from a folder of images, with a progress bar on the terminal.

The dataset, name and settings are checked (``pipelines.training_data``)
before the model loads, so a bad folder costs no wait and writes nothing.
The model is the studio's (``ATELIER_MODEL``, the embedded one by default)
and the result lands in the studio's LoRA folder, where every tab lists it.
Run again after a crash, the same command resumes from the last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipelines.errors import ModelError
from pipelines.training_data import TrainingSettings, check_name, read_dataset
from webui.settings import Settings


def add_parser(commands) -> None:
    """The ``lora`` command and its ``train`` subcommand, on the CLI's subparsers."""
    lora = commands.add_parser("lora", help="Train LoRAs.", description="Train LoRAs.")
    lora.add_argument("--data", type=Path, help="data folder (gallery, images, models)")
    lora_commands = lora.add_subparsers(dest="lora_command", required=True)
    train = lora_commands.add_parser(
        "train",
        help="Train a LoRA on a folder of 20-100 images (captions from a .txt beside each).",
        description="Train a LoRA on a folder of 20-100 images (captions from a .txt beside each).",
    )
    # SUPPRESS: `atelier lora --data D train ...` keeps D instead of this default.
    train.add_argument("--data", type=Path, default=argparse.SUPPRESS, help="data folder (gallery, images, models)")
    train.add_argument("dataset", type=Path, metavar="DIR", help="the folder of images")
    train.add_argument("--name", required=True, help="the LoRA's name in the LoRA folder")
    train.add_argument("--trigger", default="", help="a word that leads every caption; prompt with it")
    train.add_argument("--caption", default="", help="the caption of images without a .txt")
    train.add_argument("--steps", type=int, default=None)
    train.add_argument("--rank", type=int, default=None)
    train.add_argument("--learning-rate", type=float, default=None)
    train.add_argument("--resolution", type=int, default=None)
    train.add_argument("--batch-size", type=int, default=None)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--model", default=None, help="the base model (default: the studio's)")
    train.add_argument("--json", action="store_true", help="print one JSON object")


def _bar(quiet: bool):
    def show(step: int, total: int, loss: float) -> None:
        if quiet:
            return
        filled = round(20 * step / total)
        end = "\n" if step == total else ""
        line = f"\r[{'#' * filled}{'.' * (20 - filled)}] step {step}/{total}  loss {loss:.4f}"
        print(line, end=end, file=sys.stderr, flush=True)

    return show


def train(args: argparse.Namespace, settings: Settings) -> int:
    """Check, load the model, train; 0 when the LoRA is in place."""
    training = TrainingSettings(
        rank=args.rank,
        steps=args.steps,
        learning_rate=args.learning_rate,
        resolution=args.resolution,
        batch_size=args.batch_size,
        seed=args.seed,
        trigger=args.trigger,
        caption=args.caption,
    )
    folder = settings.loras_folder
    check_name(args.name, folder)
    dataset = read_dataset(args.dataset, training)
    # Imported here: `atelier --help` should not wait for torch.
    from pipelines.engine import Engine
    from pipelines.training import kind_of, train_lora

    engine = Engine(device=settings.device or None, dtype=settings.dtype or None, switches=settings.switches())
    try:
        loaded = engine.load(settings.model)
    except ModelError as error:
        print(f"atelier: {error}", file=sys.stderr)
        return 2
    kind = kind_of(loaded.source.kind, loaded.family)
    resolution = training.resolved(kind).resolution
    dataset = read_dataset(args.dataset, training, min_side=resolution // 2)
    folder.mkdir(parents=True, exist_ok=True)
    result = train_lora(
        loaded.base,
        dataset,
        training,
        name=args.name,
        loras_folder=folder,
        kind=kind,
        model=f"{settings.model}@{loaded.revision}",
        progress=_bar(quiet=args.json or not sys.stderr.isatty()),
    )
    card = result.card
    if args.json:
        print(
            json.dumps(
                {
                    "name": result.name,
                    "path": str(result.path),
                    "sha256": card["sha256"],
                    "card": str(folder / f"{result.name}.json"),
                    "steps": result.steps,
                    "resumed_from": result.resumed_from,
                    "seconds": round(result.seconds, 1),
                    "loss": card["loss"]["last_10_mean"],
                }
            )
        )
    else:
        print(f"LoRA {result.name}: {result.path}")
        resumed = f", resumed from step {result.resumed_from}" if result.resumed_from else ""
        print(f"  {result.steps} steps in {result.seconds:.0f} s{resumed}; loss {card['loss']['last_10_mean']:.4f}")
        print(f"  card {folder / f'{result.name}.json'}; use it with --lora {result.name}")
    return 0
