"""The embedded default model: a tiny Stable Diffusion that needs no network.

It has the standard diffusers layout (AutoencoderKL, CLIPTextModel with a
CLIPTokenizer, UNet2DConditionModel, a scheduler config), so the engine loads
it like any other diffusers folder and nothing downstream special-cases it.

Until the trained weights of the embedded-model issue land, the weights are
random but fixed (built from configs after ``torch.manual_seed``), the way
diffusers' own tests build their dummy components. The folder is written
under the data folder on first use and loaded from there afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

# The words of the embedded model's world (issue 3): shapes, colours, places.
WORDS = (
    "a an the of on in at with and "
    "circle square triangle shape background "
    "red green blue yellow orange purple white black "
    "small large big tiny top bottom left right center middle corner"
).split()

# Shown as the studio's defaults when the embedded model is selected.
DEFAULTS = {
    "width": 64,
    "height": 64,
    "num_inference_steps": 20,
    "guidance_scale": 5.0,
    "sampler": "DPM++ 2M",
    "prompt": "a red circle on a blue background",
}

START, END = "<|startoftext|>", "<|endoftext|>"


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


def make_tokenizer(words: tuple[str, ...] | list[str] = WORDS, max_length: int = 77):
    """A CLIPTokenizer built in code: every byte is a token, known words are one.

    Merges are a left-to-right chain per word, so each known word becomes a
    single token and any other text still tokenizes (byte by byte).
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
    return CLIPTokenizer(
        vocab=vocab, merges=merges, model_max_length=max_length
    )


def build_pipeline(seed: int = 0):
    """The embedded pipeline with fixed random weights (until trained ones land)."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = make_tokenizer()
    torch.manual_seed(seed)
    # 64x64 pixels -> 16x16x4 latents: three VAE blocks, scale factor 4.
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            projection_dim=64,
        )
    )
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def ensure_embedded(folder: Path) -> Path:
    """The embedded model's diffusers folder, written there on first use.

    Written to a sibling temporary folder and renamed, so an interrupted first
    start never leaves a half-written model that later loads fail on.
    """
    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".embedded-", dir=folder.parent))
    try:
        build_pipeline().save_pretrained(staging, safe_serialization=True)
        (staging / "atelier.json").write_text(json.dumps({"defaults": DEFAULTS}, indent=2) + "\n")
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
