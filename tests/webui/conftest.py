import contextlib
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from webui.settings import Settings
from webui.studio import Studio

# Ray reads these when it is imported: keep every Ray address on loopback (else Ray swaps 127.0.0.1 for
# this machine's network address), and send nothing home.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")  # a Ray call after shutdown must not start a Ray here
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # loopback only; and no token of an earlier Ray is picked up


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
    inject_adapter_in_model(
        LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]), denoiser
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in denoiser.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    type(pipe).save_lora_weights(
        str(path.parent), weight_name=path.name, **{f"{part}_lora_layers": get_peft_model_state_dict(denoiser)}
    )


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


@pytest.fixture(scope="module")
def ray_cluster_port() -> int:
    """The port the module's Ray head listens on (chosen first: a test may look before the head starts)."""
    return free_port()


@pytest.fixture(scope="module")
def ray_cluster(ray_cluster_port):
    """A real Ray head on loopback for this module: 4 CPUs, a 100 MB object store, in a short temporary folder.

    Everything stays on 127.0.0.1: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 stops
    Ray from swapping loopback for this machine's network address. The head
    runs in its own session and is stopped by its process ids (never
    `ray stop`, which stops every Ray on the machine).
    """
    import signal
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    import psutil

    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # unix socket paths must stay short
    ray = Path(sys.executable).parent / "ray"
    head = subprocess.Popen(
        [
            str(ray),
            "start",
            "--head",
            "--block",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(ray_cluster_port),
            "--num-cpus",
            "4",
            "--num-gpus",
            "0",
            "--include-dashboard",
            "false",
            "--object-store-memory",
            "100000000",
            "--temp-dir",
            temp,
            "--disable-usage-stats",
        ],
        stdout=open(Path(temp) / "head.log", "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def ours() -> list[psutil.Process]:
        # The head's descendants (some rename themselves, ray::DashboardAgent) and anything naming its folder.
        found = []
        with contextlib.suppress(psutil.Error):
            found = psutil.Process(head.pid).children(recursive=True)
        for process in psutil.process_iter(["cmdline"]):
            try:
                if process.pid == head.pid or any(temp in part for part in process.info["cmdline"] or []):
                    if process not in found:
                        found.append(process)
            except psutil.Error:
                pass
        return found

    try:
        wait_until(lambda: _answers(ray_cluster_port) or head.poll() is not None, what="the Ray head", timeout=120)
        assert head.poll() is None, (Path(temp) / "head.log").read_text()[-3000:]
        yield f"127.0.0.1:{ray_cluster_port}"
    finally:
        import ray as ray_api

        if ray_api.is_initialized():
            ray_api.shutdown()
        processes = ours()
        for process in processes:
            with contextlib.suppress(psutil.Error):
                process.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(processes, timeout=15)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(alive, timeout=15)
        shutil.rmtree(temp, ignore_errors=True)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
