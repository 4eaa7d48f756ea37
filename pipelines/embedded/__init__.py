"""The embedded default model: a small Stable Diffusion of our own that needs no network.

It knows one world (``world.py``: a flat shape of one colour on a background
of another) and ships in ``model/`` as an ordinary diffusers folder
(AutoencoderKL, CLIPTextModel with a CLIPTokenizer built in code,
UNet2DConditionModel, a scheduler config), so the engine loads it like any
other folder and nothing downstream special-cases it. ``model/README.md`` is
its card; ``scripts/train_embedded.py`` rebuilds the weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FOLDER = Path(__file__).resolve().parent / "model"
# A ControlNet trained on Canny edges of the same world (the studio's Canny defaults, 100 and 200).
CONTROLNET_FOLDER = Path(__file__).resolve().parent / "controlnet-canny"

# The words of the world (most are one token; see make_tokenizer); anything else is spelled in bytes.
WORDS = (
    "a an the of on in at with and "
    "circle square triangle shape background "
    "red green blue yellow orange purple white black "
    "small large big tiny top bottom left right center middle corner"
).split()
MAX_TOKENS = 24  # the longest caption is 15 tokens; prompts past this are truncated

START, END = "<|startoftext|>", "<|endoftext|>"

# Zero terminal SNR with v-prediction: the last training timestep is pure
# noise, so flat backgrounds are learnable from nothing (Lin et al. 2023,
# "Common Diffusion Noise Schedules and Sample Steps are Flawed"). Training
# and every sampler the studio offers start from this one config.
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "timestep_spacing": "trailing",
}

_FALLBACK_DEFAULTS = {
    "width": 64,
    "height": 64,
    "num_inference_steps": 20,
    "guidance_scale": 5.0,
    "sampler": "DPM++ 2M",
    "prompt": "a red circle on a blue background",
}


def defaults() -> dict[str, Any]:
    """Size, steps, guidance and sampler from the model card's settings."""
    card = FOLDER / "atelier.json"
    stored = json.loads(card.read_text()).get("defaults", {}) if card.is_file() else {}
    return {**_FALLBACK_DEFAULTS, **stored}


def _byte_alphabet() -> list[str]:
    """GPT-2/CLIP's printable stand-ins for the 256 byte values."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def make_tokenizer(words: tuple[str, ...] | list[str] = WORDS, max_length: int = MAX_TOKENS):
    """A CLIPTokenizer built in code: every byte is a token, and so are most known words.

    Merges are a left-to-right chain per word, in the order of ``words``.
    An earlier word's merge can win inside a later word ("re" from "red"
    splits "green" into g+re+e+n), so five of the words are a few tokens
    each; the shipped model was trained with exactly this tokenizer, so it
    stays until the next retraining from scratch. Any other text still
    tokenizes, byte by byte.
    """
    from transformers import CLIPTokenizer

    alphabet = _byte_alphabet()
    vocab: dict[str, int] = {}
    for token in alphabet + [c + "</w>" for c in alphabet]:
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        current = pieces[0]
        for piece in pieces[1:]:
            merged = current + piece
            if merged not in vocab:
                merges.append((current, piece))
                vocab[merged] = len(vocab)
            current = merged
    for special in (START, END):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def build_components(seed: int = 0) -> dict[str, Any]:
    """The embedded model's architecture with fresh weights: where training starts."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = make_tokenizer()
    torch.manual_seed(seed)
    # 64x64 pixels -> 16x16x4 latents: three VAE blocks, scale factor 4.
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),  # flat colours need little width; 64x64 convs dominate the cost
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=128,
            intermediate_size=512,
            num_attention_heads=4,
            num_hidden_layers=3,
            max_position_embeddings=MAX_TOKENS,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            projection_dim=128,
        )
    )
    torch.manual_seed(seed)
    # Cross-attention at 16x16 and 8x8: colour words must reach the right region.
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(64, 128, 128),
        layers_per_block=1,
        cross_attention_dim=128,
        attention_head_dim=4,
        norm_num_groups=32,
    )
    scheduler = EulerDiscreteScheduler(**SCHEDULER_CONFIG)
    return {"vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "unet": unet, "scheduler": scheduler}
