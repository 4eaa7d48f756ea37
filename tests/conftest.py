"""Shared fixtures: tiny Stable Diffusion and SDXL pipelines built from configs.

Random weights at toy size, the way diffusers' own tests build
``get_dummy_components()``: real classes, real code paths, seconds on a CPU.
They are saved as diffusers folders so the engine loads them the way it loads
a user's model.
"""

import os

# Before anything imports huggingface_hub or gradio.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import glob
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import make_url, text

from storage.db import make_engine


def pytest_configure(config):
    # Faster on two shared cores, and pixels depend on the thread count.
    import torch

    torch.set_num_threads(1)


def _text_config(tokenizer):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=32,
        hidden_act="gelu",
    )


def _tiny_sd():
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    from pipelines.embedded import make_tokenizer

    tokenizer = make_tokenizer(max_length=77)
    torch.manual_seed(1)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        sample_size=64,
    )
    torch.manual_seed(1)
    text_encoder = CLIPTextModel(_text_config(tokenizer))
    torch.manual_seed(1)
    unet = UNet2DConditionModel(
        sample_size=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        norm_num_groups=32,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
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


def _tiny_xl_unet_and_vae(*, seed, size_numbers, cross_attention_dim):
    """SDXL's UNet (its added time embedding takes ``size_numbers`` x 8 plus a pooled 32) and VAE, in miniature."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=size_numbers * 8 + 32,
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=1,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        sample_size=128,
    )
    return unet, vae


def _tiny_sdxl():
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from pipelines.embedded import make_tokenizer

    tokenizer = make_tokenizer(max_length=77)
    # Six size/crop numbers x 8, plus the second encoder's pooled 32; both encoders' hidden states side by side.
    unet, vae = _tiny_xl_unet_and_vae(seed=0, size_numbers=6, cross_attention_dim=64)
    config = _text_config(tokenizer)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(config)
    torch.manual_seed(0)
    text_encoder_2 = CLIPTextModelWithProjection(config)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
    )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=make_tokenizer(max_length=77),
        unet=unet,
        scheduler=scheduler,
    )


def _tiny_sdxl_refiner():
    """SDXL's refiner in miniature: the second text encoder only, and an aesthetic score among its five size numbers."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline
    from transformers import CLIPTextModelWithProjection

    from pipelines.embedded import make_tokenizer

    tokenizer = make_tokenizer(max_length=77)
    # Size, crop and aesthetic score x 8, plus the pooled 32; the one encoder's hidden states.
    unet, vae = _tiny_xl_unet_and_vae(seed=2, size_numbers=5, cross_attention_dim=32)
    torch.manual_seed(2)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer))
    return StableDiffusionXLImg2ImgPipeline(
        vae=vae,
        text_encoder=None,
        text_encoder_2=text_encoder_2,
        tokenizer=None,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
        ),
        requires_aesthetics_score=True,
    )


@pytest.fixture(scope="session")
def tiny_sdxl_refiner_folder(tmp_path_factory):
    """A tiny SDXL refiner folder (StableDiffusionXLImg2ImgPipeline, no first text encoder)."""
    folder = tmp_path_factory.mktemp("tiny-sdxl-refiner")
    _tiny_sdxl_refiner().save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def tiny_sd_folder(tmp_path_factory):
    """A tiny SD1.5-architecture diffusers folder."""
    folder = tmp_path_factory.mktemp("tiny-sd")
    _tiny_sd().save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def tiny_sdxl_folder(tmp_path_factory):
    """A tiny SDXL-architecture diffusers folder (two text encoders)."""
    folder = tmp_path_factory.mktemp("tiny-sdxl")
    _tiny_sdxl().save_pretrained(folder, safe_serialization=True)
    return folder


def _tiny_controlnet(pipe):
    """A ControlNet copied from a tiny UNet; one stride-2 stage matches the tiny VAE's factor of 2."""
    from diffusers import ControlNetModel

    return ControlNetModel.from_unet(pipe.unet, conditioning_embedding_out_channels=(16, 32))


@pytest.fixture(scope="session")
def tiny_sd_controlnet_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-sd-controlnet")
    _tiny_controlnet(_tiny_sd()).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def tiny_sdxl_controlnet_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-sdxl-controlnet")
    _tiny_controlnet(_tiny_sdxl()).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def tiny_sd_inpaint_folder(tmp_path_factory):
    """A dedicated inpainting model: its UNet takes 9 channels (latents, mask, masked image)."""
    import torch
    from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel

    base = _tiny_sd()
    torch.manual_seed(2)
    unet = UNet2DConditionModel.from_config(base.unet.config, in_channels=9)
    pipe = StableDiffusionInpaintPipeline(**{**base.components, "unet": unet}, requires_safety_checker=False)
    folder = tmp_path_factory.mktemp("tiny-sd-inpaint")
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def _tiny_flux():
    """A tiny FLUX.1-architecture pipeline: a one-block transformer, CLIP and T5 encoders, a 16-channel VAE."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    from pipelines.embedded import make_tokenizer

    tokenizer = make_tokenizer(max_length=77)
    torch.manual_seed(3)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
    )
    torch.manual_seed(3)
    clip = CLIPTextModel(_text_config(tokenizer))
    torch.manual_seed(3)
    # T5's own tokenizer would need a download; the in-code byte tokenizer stands in for it.
    t5 = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4))
    torch.manual_seed(3)
    vae = AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4, 8),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.06,
        scaling_factor=1.5,
    )
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=clip,
        tokenizer=tokenizer,
        text_encoder_2=t5,
        tokenizer_2=make_tokenizer(max_length=77),
        transformer=transformer,
    )


@pytest.fixture(scope="session")
def tiny_flux_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-flux")
    _tiny_flux().save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def tiny_flux_controlnet_folder(tmp_path_factory):
    from diffusers import FluxControlNetModel

    folder = tmp_path_factory.mktemp("tiny-flux-controlnet")
    controlnet = FluxControlNetModel.from_transformer(
        _tiny_flux().transformer, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2
    )
    controlnet.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def read_drawing():
    """``read_drawing(engine, prompt, seed)``: the embedded model's picture at its card's defaults, as the classifier reads it."""
    from pipelines import embedded
    from pipelines.embedded.world import classify
    from pipelines.requests import Text2ImgRequest

    def read(engine, prompt, seed):
        defaults = embedded.defaults()
        request = Text2ImgRequest(
            prompt=prompt,
            seed=seed,
            width=defaults["width"],
            height=defaults["height"],
            num_inference_steps=defaults["num_inference_steps"],
            guidance_scale=defaults["guidance_scale"],
            sampler=defaults["sampler"],
        )
        return classify(engine.run(request).images[0])

    return read


# -- a throwaway PostgreSQL server: the gallery's tests, and the Ray pool's on PostgreSQL --

POSTGRES_URL_ENV = "ATELIER_TEST_POSTGRES_URL"


def _postgres_bin_dir() -> Path | None:
    """A directory holding both initdb and pg_ctl: PATH first, then Debian's versioned ones, newest first."""
    candidates: list[Path] = []
    on_path = shutil.which("initdb")
    if on_path:
        candidates += [Path(on_path).parent, Path(os.path.realpath(on_path)).parent]

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", Path(path).parent.name))

    candidates += [Path(d) for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)]
    for directory in candidates:
        if os.access(directory / "initdb", os.X_OK) and os.access(directory / "pg_ctl", os.X_OK):
            return directory
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL URL: $ATELIER_TEST_POSTGRES_URL, or a throwaway server of our own.

    The throwaway cluster lives in a temporary directory, trusts local connections
    and listens only on a Unix socket in that directory (no TCP at all). It is
    stopped and deleted at the end of the session.
    """
    given = os.environ.get(POSTGRES_URL_ENV)
    if given:
        yield given
        return

    bin_dir = _postgres_bin_dir()
    if bin_dir is None:
        pytest.fail(
            f"PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin: "
            f"install Debian's postgresql package (`make postgres`) or set {POSTGRES_URL_ENV}"
        )
    as_user: list[str] = []
    owner: str | None = None
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        runuser = shutil.which("runuser")
        if runuser is None:
            pytest.fail("running as root, the PostgreSQL server needs `runuser` to drop to the postgres user")
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root, the PostgreSQL server needs a `postgres` system user to run as")
        as_user = [runuser, "-u", "postgres", "--"]
        owner = "postgres"

    # Short and under the system temp dir: a Unix socket path may not exceed ~107 bytes.
    base = tempfile.gettempdir()
    if len(base) > 60 and os.path.isdir("/tmp"):
        base = "/tmp"
    root = Path(tempfile.mkdtemp(prefix="atelier-pg-", dir=base))
    data, log = root / "data", root / "server.log"
    port = _free_port()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*as_user, *args], cwd=root, capture_output=True, text=True, timeout=120)

    started = False
    try:
        if owner:
            shutil.chown(root, user=owner)
        init = run(
            str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
            "--encoding=UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        if init.returncode != 0:
            pytest.fail(f"initdb failed ({init.returncode}):\n{init.stdout}\n{init.stderr}")
        options = f"-k {root} -p {port} -c listen_addresses='' -c fsync=off -c full_page_writes=off"
        start = run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start")
        started = True
        if start.returncode != 0:
            server_log = log.read_text(errors="replace") if log.exists() else ""
            pytest.fail(f"pg_ctl start failed ({start.returncode}):\n{start.stdout}\n{start.stderr}\n{server_log}")
        yield f"postgresql+psycopg://postgres@/postgres?host={root}&port={port}"
    finally:
        if started:
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(postgres_url: str) -> Iterator[str]:
    """A URL whose tables live in a schema of this test's own, dropped afterwards."""
    schema = f"atelier_test_{uuid.uuid4().hex[:12]}"
    admin = make_engine(postgres_url)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield (
            make_url(postgres_url)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
