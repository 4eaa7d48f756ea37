import contextlib
import shutil
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from webui.settings import Settings
from webui.studio import Studio


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check: Callable[[], object], *, what: str, timeout: float = 120.0) -> None:
    """Poll ``check`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def save_lora(path, pipe, seed):
    """A LoRA for ``pipe``'s denoiser (a UNet, or FLUX's transformer), as a trainer saves one:
    PEFT layers on its attention projections with random non-zero weights."""
    import copy

    import torch
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    part = "transformer" if getattr(pipe, "transformer", None) is not None else "unet"
    denoiser = copy.deepcopy(getattr(pipe, part))
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]), denoiser)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in denoiser.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    type(pipe).save_lora_weights(str(path.parent), weight_name=path.name,
                                 **{f"{part}_lora_layers": get_peft_model_state_dict(denoiser)})


@pytest.fixture
def settings(tmp_path):
    return Settings(data_dir=tmp_path / "data", user="ada", port=free_port())


@pytest.fixture
def studio(settings):
    studio = Studio.from_settings(settings)
    yield studio
    studio.close()


@contextlib.contextmanager
def serving(settings: Settings) -> Iterator[tuple[Studio, str]]:
    """The real app for ``settings``, on its port: (studio, url), closed afterwards."""
    from webui.app import launch

    studio = Studio.from_settings(settings)
    app = launch(studio, prevent_thread_lock=True, quiet=True)
    try:
        yield studio, f"http://127.0.0.1:{settings.port}/"
    finally:
        app.close()
        studio.close()


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """The real app on a free port, with its own scratch gallery."""
    with serving(Settings(data_dir=tmp_path_factory.mktemp("served"), user="ada", port=free_port())) as served:
        yield served


# Debian's Chromium, headless; driven by Playwright in the browser tests.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def page():
    """One browser tab per test module (each test opens the page itself)."""
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    assert executable, "Chromium is missing: `make test` installs Debian's chromium package."
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        yield page
        browser.close()
