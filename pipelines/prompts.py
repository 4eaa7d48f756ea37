"""Prompt text to conditioning: AUTOMATIC1111's weighting syntax and prompts longer than the encoder.

The syntax is A1111's (``modules/prompt_parser.py``), parsed by
diffusion-prompt-embedder's ``parse_prompt_attention``, a port of it:
``(red car:1.3)`` weighs the words 1.3, ``(word)`` 1.1, ``[word]`` 1/1.1,
brackets nest and multiply, ``\\(`` ``\\)`` ``\\[`` ``\\]`` are the literal
characters, and ``BREAK`` starts a new chunk of the encoder's context.

compel builds the conditioning from the parsed fragments: each fragment
is tokenized on its own; a weight w scales its tokens' offsets from the
empty prompt's embedding by w, and one below 1 also blends the whole
embedding towards the same prompt with those tokens masked out (compel's
``DownweightMode.MASK``). A1111 scales the vectors and restores their mean
instead, so a weight means compel's number, not A1111's. Negative weights
(A1111 inverts) are refused. Prompts past the encoder's context (77 tokens for CLIP, 24 for
the embedded model) are encoded in chunks of that length, each with its
own start and end tokens, and concatenated; a chunk ends at its last comma
or full stop (A1111 also backs up to a comma), else between words. The
negative prompt is padded with empty-prompt chunks to the same length.

A prompt and negative prompt with none of this (no syntax, each within one
chunk) take diffusers' own ``encode_prompt`` unchanged, so every image made
before weighting existed is made again pixel for pixel.
"""

from __future__ import annotations

import torch
from compel import Compel, ReturnedEmbeddingsType, SplitLongTextMode
from compel.prompt_parser import Conjunction, FlattenedPrompt, Fragment
from diffusers import DiffusionPipeline
from diffusion_prompt_embedder import parse_prompt_attention

from pipelines.limits import RequestError

# What the parser returns for the BREAK keyword.
_BREAK = ("BREAK", -1.0)
# The conditioning each family's UNet was trained on: SD's last layer after
# the final norm; SDXL's penultimate layer without it (diffusers' encode_prompt).
_EMBEDDINGS = {
    "sd": ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED,
    "sdxl": ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
}


class PromptError(RequestError):
    """A prompt whose weighting cannot be encoded; the message names the field and the part."""


def encode(
    pipe: DiffusionPipeline,
    family: str,
    prompt: str,
    negative_prompt: str,
    *,
    device: torch.device,
    guidance: bool,
) -> dict[str, torch.Tensor | None]:
    """The embeddings a diffusers call takes in place of ``prompt`` and ``negative_prompt``.

    Keys: ``prompt_embeds`` and ``negative_prompt_embeds`` (None without
    classifier-free guidance), and for SDXL ``pooled_prompt_embeds`` and
    ``negative_pooled_prompt_embeds``. An empty negative prompt is each
    pipeline's own default: the empty prompt for SD, zeros for SDXL.
    """
    if family not in _EMBEDDINGS:
        raise ValueError(f"family must be one of {', '.join(_EMBEDDINGS)}; got {family!r}.")
    encoders = _encoders(pipe)
    with torch.inference_mode():
        if _is_plain(prompt, encoders) and _is_plain(negative_prompt, encoders):
            return _encode_plain(pipe, family, prompt, negative_prompt, device=device, guidance=guidance)
        return _encode_weighted(pipe, family, encoders, prompt, negative_prompt, device=device, guidance=guidance)


def check(text: str, field: str) -> None:
    """Refuse what no encoder could take (a negative weight) before anything runs or is recorded."""
    _parse(text, field)


def _encoders(pipe: DiffusionPipeline) -> list[tuple]:
    """(tokenizer, text encoder) pairs in the order the family concatenates them; SDXL's refiner has only the second."""
    pairs = [
        (pipe.tokenizer, pipe.text_encoder),
        (getattr(pipe, "tokenizer_2", None), getattr(pipe, "text_encoder_2", None)),
    ]
    return [(tokenizer, encoder) for tokenizer, encoder in pairs if encoder is not None]


def _parse(text: str, field: str) -> list[list[tuple[str, float]]]:
    """The prompt's parts between BREAKs, each a list of (text, weight) fragments."""
    parts: list[list[tuple[str, float]]] = [[]]
    for fragment, weight in parse_prompt_attention(text):
        if (fragment, weight) == _BREAK:
            parts.append([])
        elif weight < 0:
            raise PromptError(f"{field} weights must be 0 or more; got {weight:g} for {fragment.strip()!r}.")
        else:
            parts[-1].append((fragment, weight))
    return parts


def _is_plain(text: str, encoders: list[tuple]) -> bool:
    """No weighting syntax, and short enough for one chunk of every encoder."""
    if parse_prompt_attention(text) != [[text, 1.0]]:
        return False
    return all(len(tokenizer(text, verbose=False).input_ids) <= tokenizer.model_max_length for tokenizer, _ in encoders)


def _encode_plain(pipe, family, prompt, negative_prompt, *, device, guidance) -> dict[str, torch.Tensor | None]:
    # None, not "", so each pipeline keeps its own default for an empty
    # negative prompt (SDXL uses zeros there).
    negative = negative_prompt or None
    if family == "sdxl":
        embeds = pipe.encode_prompt(
            prompt=prompt,
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=guidance,
            negative_prompt=negative,
        )
        names = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
    else:
        embeds = pipe.encode_prompt(prompt, device, 1, guidance, negative)
        names = ("prompt_embeds", "negative_prompt_embeds")
    return dict(zip(names, embeds))


def _encode_weighted(
    pipe, family, encoders, prompt, negative_prompt, *, device, guidance
) -> dict[str, torch.Tensor | None]:
    positive_parts = _parse(prompt, "prompt")
    negative_parts = _parse(negative_prompt, "negative_prompt")
    # SDXL conditions on zeros, not on the empty prompt, when there is no negative prompt.
    zero_negative = family == "sdxl" and not negative_prompt and pipe.config.force_zeros_for_empty_prompt
    compels = [
        Compel(
            tokenizer=tokenizer,
            text_encoder=encoder,
            returned_embeddings_type=_EMBEDDINGS[family],
            truncate_long_prompts=False,
            # Chunks end at punctuation, else between words, never inside one.
            split_long_text_mode=SplitLongTextMode.PHRASES,
            device=device,
        )
        for tokenizer, encoder in encoders
    ]
    positives, negatives = [], []
    for compel in compels:
        positive = _conditioning(compel, positive_parts)
        if guidance and not zero_negative:
            negative = _conditioning(compel, negative_parts)
            positive, negative = compel.pad_conditioning_tensors_to_same_length([positive, negative])
            negatives.append(negative)
        positives.append(positive)
    # SDXL sets its two encoders' vectors side by side, as diffusers' encode_prompt does.
    result: dict[str, torch.Tensor | None] = {"prompt_embeds": torch.cat(positives, dim=-1)}
    if not guidance:
        result["negative_prompt_embeds"] = None
    elif zero_negative:
        result["negative_prompt_embeds"] = torch.zeros_like(result["prompt_embeds"])
    else:
        result["negative_prompt_embeds"] = torch.cat(negatives, dim=-1)
    if family == "sdxl":
        # The pooled vector comes from the second encoder's first chunk, unweighted, as in A1111.
        pooled = compels[-1].conditioning_provider
        result["pooled_prompt_embeds"] = pooled.get_pooled_embeddings([_text(positive_parts)], device=device)
        if not guidance:
            result["negative_pooled_prompt_embeds"] = None
        elif zero_negative:
            result["negative_pooled_prompt_embeds"] = torch.zeros_like(result["pooled_prompt_embeds"])
        else:
            result["negative_pooled_prompt_embeds"] = pooled.get_pooled_embeddings(
                [_text(negative_parts)], device=device
            )
    return result


def _conditioning(compel: Compel, parts: list[list[tuple[str, float]]]) -> torch.Tensor:
    """One encoder's conditioning: each part in its own chunks, concatenated along the tokens (compel's AND)."""
    prompts = [FlattenedPrompt([Fragment(text, weight) for text, weight in part]) for part in parts]
    conditioning, _options = compel.build_conditioning_tensor_for_conjunction(Conjunction(prompts))
    return conditioning


def _text(parts: list[list[tuple[str, float]]]) -> str:
    """The prompt's words without the syntax."""
    return " ".join("".join(text for text, _ in part) for part in parts)
