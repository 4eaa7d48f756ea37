"""Encoded prompts, kept for the next run: a prompt seen on the same weights skips its text encoders.

A studio reruns and varies the same prompt many times (new seeds, a batch,
another sampler), and encoding it costs as much as a denoising step or more.
The key is everything that changes the embeddings: the model and its
revision, the prompt and negative prompt as typed (weighting syntax is part
of the text), whether guidance needs the negative pass, and the LoRAs with
text-encoder layers, with their weights.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch

from pipelines import prompts


class TextEmbeddingCache:
    """LRU of encoded prompts, keyed by model revision, prompt and negative prompt."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple, dict[str, torch.Tensor | None]] = OrderedDict()

    def get(self, key: tuple) -> dict[str, torch.Tensor | None] | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return entry

    def put(self, key: tuple, value: dict[str, torch.Tensor | None]) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def embeds(
        self,
        pipe: Any,
        family: str,
        model: tuple[str, str],
        prompt: str,
        negative_prompt: str = "",
        *,
        cfg: bool,
        device: torch.device,
        text_loras: tuple = (),
    ) -> dict[str, torch.Tensor]:
        """The pipeline call's embedding arguments for ``prompt``; ``model`` is (name, revision)."""
        if family == "flux":
            return self._flux(pipe, model, prompt, device)
        # LoRAs with text-encoder layers change the embeddings: they and their weights are part of the key.
        key = (*model, prompt, negative_prompt, cfg, text_loras)
        cached = self.get(key)
        if cached is None:
            # The prompt text is the key: weighting syntax is part of it.
            cached = prompts.encode(pipe, family, prompt, negative_prompt, device=device, guidance=cfg)
            self.put(key, cached)
        return {name: value for name, value in cached.items() if value is not None}

    def _flux(self, pipe: Any, model: tuple[str, str], prompt: str, device: torch.device) -> dict[str, torch.Tensor]:
        """FLUX's two text encoders (CLIP pooled, T5 per token); its guidance is distilled, so no negative prompt."""
        key = (*model, prompt, "", "flux")
        cached = self.get(key)
        if cached is None:
            with torch.inference_mode():
                prompt_embeds, pooled, _ = pipe.encode_prompt(
                    prompt=prompt, prompt_2=None, device=device, num_images_per_prompt=1
                )
            cached = {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled}
            self.put(key, cached)
        return dict(cached)
