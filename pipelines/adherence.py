"""How closely a generation's images follow its prompt: a score in [0, 1], or no score and why (issue 15).

Hides the two ways of scoring and the choice between them:

- ``embedded-world``: the embedded model's own world knowledge. The prompt is
  read back into the shape, shape colour and background it asks for
  (``world.parse_prompt``) and the image into what it shows (``world.classify``);
  the score is the share of the asked things that are drawn. Exact for that
  model's one-shape pictures, needs no weights, costs a few milliseconds.
- ``clip``: the cosine similarity of the prompt's and the image's CLIP
  embeddings, clamped at 0 (CLIPScore without its 2.5 weight, Hessel et al. 2021,
  arXiv:2104.08718), from transformers' CLIP in ``model`` (a folder or a
  Hugging Face cache entry, ATELIER_ADHERENCE_MODEL). Never downloaded:
  loading is ``local_files_only``.

Any other model with no CLIP configured gets no score, and the result says so;
a made-up number would sort the gallery by noise. No torch at import: the
studio builds a scorer at start-up without waiting for it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from pipelines.embedded.world import classify, parse_prompt
from pipelines.errors import ModelError
from pipelines.sources import EMBEDDED

EMBEDDED_WORLD = "embedded-world"
CLIP = "clip"
NO_CLIP = "no CLIP model is configured (ATELIER_ADHERENCE_MODEL), and only the embedded model scores itself"
NOTHING_ASKED = "the prompt names no shape, shape colour or background the embedded model knows"


@dataclass(frozen=True)
class Adherence:
    """A generation's score (the mean of its images'), how it was made, and each image's own."""

    score: float | None  # None: not scored, `reason` says why
    method: str | None  # embedded-world | clip; None when not scored
    images: tuple[dict[str, Any], ...] = ()  # per output, in order: {"score": ..., "checks": ...} or {"score": ...}
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)  # e.g. the CLIP model named

    def to_dict(self) -> dict[str, Any]:
        """What the gallery keeps beside the score: plain JSON."""
        out: dict[str, Any] = {"score": self.score, "method": self.method, "images": list(self.images)}
        if self.reason is not None:
            out["reason"] = self.reason
        out.update(self.details)
        return out


def embedded_world_score(prompt: str, image: Image.Image) -> dict[str, Any] | None:
    """One image against its prompt in the embedded world; None when the prompt asks for nothing it knows.

    `checks` holds, for each thing asked, what was asked, what the pixels show
    and whether they agree.
    """
    shape, colour, background = parse_prompt(prompt)
    asked = {"shape": shape, "colour": colour, "background": background}
    if all(value is None for value in asked.values()):
        return None
    reading = classify(image)
    seen = {"shape": reading.shape, "colour": reading.colour, "background": reading.background}
    checks = {
        name: {"asked": wanted, "seen": seen[name], "match": seen[name] == wanted}
        for name, wanted in asked.items()
        if wanted is not None
    }
    matched = sum(check["match"] for check in checks.values())
    return {"score": round(matched / len(checks), 4), "checks": checks}


class AdherenceScorer:
    """Scores a generation's images against its prompt; one per process, the CLIP model loaded on first use.

    `clip_model` is ATELIER_ADHERENCE_MODEL: empty for none. `device` is where
    CLIP runs (empty: CUDA when there is one, else the CPU).
    """

    def __init__(self, *, clip_model: str = "", device: str = "") -> None:
        self.clip_model = clip_model
        self.device = device
        self._lock = threading.Lock()
        self._clip: tuple[Any, Any, str] | None = None  # (model, processor, device)

    def score(self, *, model: str, prompts: list[str], images: list[Image.Image]) -> Adherence:
        """The adherence of `images`, made by `model`, each from the prompt at its place in `prompts`.

        The embedded model is scored by its world; any other by CLIP when one
        is configured, else not at all. Raises ModelError when the configured
        CLIP model cannot be loaded from disk.
        """
        if len(prompts) != len(images):
            raise ValueError(f"prompts must hold one prompt per image ({len(images)}); got {len(prompts)}.")
        if not images:
            return Adherence(score=None, method=None, reason="the generation has no images")
        if model == EMBEDDED:
            return self._embedded(prompts, images)
        if self.clip_model:
            return self._clip_score(prompts, images)
        return Adherence(score=None, method=None, reason=NO_CLIP)

    def _embedded(self, prompts: list[str], images: list[Image.Image]) -> Adherence:
        scored = [embedded_world_score(prompt, image) for prompt, image in zip(prompts, images, strict=True)]
        if any(item is None for item in scored):
            return Adherence(score=None, method=EMBEDDED_WORLD, reason=NOTHING_ASKED)
        # From the exact shares, not the rounded ones each image shows.
        shares = [sum(c["match"] for c in item["checks"].values()) / len(item["checks"]) for item in scored]
        mean = sum(shares) / len(shares)
        return Adherence(score=round(mean, 4), method=EMBEDDED_WORLD, images=tuple(scored))

    def _clip_score(self, prompts: list[str], images: list[Image.Image]) -> Adherence:
        import torch

        model, processor, device = self._load_clip()
        # CLIP reads at most its position count in tokens; the rest of a long prompt is cut, as CLIPScore does.
        limit = model.config.text_config.max_position_embeddings
        inputs = processor(
            text=prompts,
            images=[image.convert("RGB") for image in images],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=limit,
        ).to(device)
        with torch.inference_mode():
            text = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            pixels = model.get_image_features(pixel_values=inputs["pixel_values"])
        # Row i of each is image i and its own prompt.
        cosine = torch.nn.functional.cosine_similarity(_features(pixels).float(), _features(text).float(), dim=-1)
        scores = [round(max(0.0, min(1.0, float(value))), 4) for value in cosine]
        return Adherence(
            score=round(sum(scores) / len(scores), 4),
            method=CLIP,
            images=tuple({"score": value} for value in scores),
            details={"clip_model": self.clip_model},
        )

    def _load_clip(self) -> tuple[Any, Any, str]:
        with self._lock:
            if self._clip is None:
                import torch
                from transformers import CLIPModel, CLIPProcessor

                device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
                try:
                    model = CLIPModel.from_pretrained(self.clip_model, local_files_only=True)
                    processor = CLIPProcessor.from_pretrained(self.clip_model, local_files_only=True)
                except (OSError, ValueError) as error:
                    raise ModelError(
                        f"ATELIER_ADHERENCE_MODEL must be a CLIP model in a local folder or the Hugging Face cache "
                        f"(it is never downloaded); {self.clip_model!r} could not be loaded: {error}"
                    ) from error
                self._clip = (model.to(device).eval(), processor, device)
            return self._clip


def _features(output: Any) -> Any:
    # transformers 5 returns a model output whose pooler_output holds the projected features; 4.x the tensor.
    return getattr(output, "pooler_output", output)
