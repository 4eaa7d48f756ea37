"""Request types: one frozen, validated dataclass per task.

Field names are diffusers' own ``__call__`` argument names (``prompt``,
``num_inference_steps``, ``guidance_scale`` ...) so a request maps onto a
pipeline call without renaming. ``to_dict()`` is what the gallery stores and
``request_from_dict()`` is how a rerun gets the request back.

This module imports neither torch nor diffusers: the UI and the CLI validate
input with it before anything heavy is loaded.
"""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass
from typing import Any, ClassVar

from pipelines.samplers import SAMPLER_NAMES

MAX_SEED = 2**32 - 1
MIN_SIZE, MAX_SIZE = 64, 2048
MAX_STEPS = 150
MAX_GUIDANCE = 30.0
MAX_BATCH = 16
MAX_PROMPT_CHARS = 10_000


def random_seed() -> int:
    """A seed for "surprise me"; recorded like any other, so it can be reused."""
    return secrets.randbelow(MAX_SEED + 1)


class RequestError(ValueError):
    """Input a user can fix; the message is one sentence naming the field."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(name: str, value: Any, low: int, high: int, *, multiple: int = 1) -> None:
    if not _is_int(value) or not low <= value <= high or value % multiple:
        rule = f"a multiple of {multiple} " if multiple > 1 else "a whole number "
        raise RequestError(f"{name} must be {rule}from {low} to {high}; got {value!r}.")


def _check_text(name: str, value: Any, *, required: bool) -> None:
    if not isinstance(value, str):
        raise RequestError(f"{name} must be text; got {type(value).__name__}.")
    if required and not value.strip():
        raise RequestError(f"{name} must not be empty.")
    if len(value) > MAX_PROMPT_CHARS:
        raise RequestError(f"{name} must be at most {MAX_PROMPT_CHARS:,} characters; got {len(value):,}.")


@dataclass(frozen=True, kw_only=True)
class GenerationRequest:
    """Fields every task shares. Subclasses add their inputs and set ``task``."""

    task: ClassVar[str]

    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    num_inference_steps: int = 20
    guidance_scale: float = 7.0
    width: int = 512
    height: int = 512
    sampler: str = "DPM++ 2M"
    batch_size: int = 1
    model: str = "embedded"

    def __post_init__(self) -> None:
        # 1. Text
        _check_text("prompt", self.prompt, required=True)
        _check_text("negative_prompt", self.negative_prompt, required=False)
        # 2. Numbers
        _check_int("seed", self.seed, 0, MAX_SEED)
        _check_int("num_inference_steps", self.num_inference_steps, 1, MAX_STEPS)
        _check_int("width", self.width, MIN_SIZE, MAX_SIZE, multiple=8)
        _check_int("height", self.height, MIN_SIZE, MAX_SIZE, multiple=8)
        _check_int("batch_size", self.batch_size, 1, MAX_BATCH)
        guidance = self.guidance_scale
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not 0 <= guidance <= MAX_GUIDANCE:
            raise RequestError(f"guidance_scale must be a number from 0 to {MAX_GUIDANCE:g}; got {guidance!r}.")
        # An int guidance would not survive a JSON round trip as the same type.
        object.__setattr__(self, "guidance_scale", float(guidance))
        # 3. Names
        if self.sampler not in SAMPLER_NAMES:
            raise RequestError(f"sampler must be one of {', '.join(SAMPLER_NAMES)}; got {self.sampler!r}.")
        if not isinstance(self.model, str) or not self.model.strip():
            raise RequestError("model must name a model: 'embedded', a folder, a .safetensors file or a hub id.")

    @property
    def seeds(self) -> list[int]:
        """Image i of a batch uses seed + i, so any image can be remade alone."""
        return [(self.seed + i) % (MAX_SEED + 1) for i in range(self.batch_size)]

    def pipeline_arguments(self) -> dict[str, Any]:
        """The diffusers ``__call__`` arguments this request sets directly.

        Prompts go through the engine's embedding cache and seeds become
        generators, so neither is here.
        """
        return {
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "width": self.width,
            "height": self.height,
            "num_images_per_prompt": self.batch_size,
        }

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationRequest:
        data = dict(data)
        task = data.pop("task", cls.task)
        if task != cls.task:
            raise RequestError(f"task must be {cls.task!r} for {cls.__name__}; got {task!r}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RequestError(f"{cls.__name__} has no field {', '.join(unknown)}; allowed: {', '.join(sorted(known))}.")
        return cls(**data)

    def replace(self, **changes: Any) -> GenerationRequest:
        """A copy with some fields changed, validated again."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, kw_only=True)
class Text2ImgRequest(GenerationRequest):
    task: ClassVar[str] = "txt2img"


REQUEST_TYPES: dict[str, type[GenerationRequest]] = {cls.task: cls for cls in (Text2ImgRequest,)}


def request_from_dict(data: dict[str, Any]) -> GenerationRequest:
    """The request a stored ``to_dict()`` describes, whatever its task."""
    task = data.get("task")
    if task not in REQUEST_TYPES:
        raise RequestError(f"task must be one of {', '.join(REQUEST_TYPES)}; got {task!r}.")
    return REQUEST_TYPES[task].from_dict(data)
