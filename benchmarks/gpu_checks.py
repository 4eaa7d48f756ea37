"""The studio's CUDA paths, checked through the real engine (and, for out-of-memory, the real studio).

Each check ends "passed", "failed" (with what was seen) or "needs CUDA"
(run on a machine without a card: not run, and never counted as passed):

- ``dtype_float16`` / ``dtype_bfloat16``: the engine in that dtype makes a
  picture (not flat, no NaN turned black), the same on a rerun, close to
  float32's on the same seed;
- ``cpu_offload`` (CUDA): model CPU offload gives the pixels of the model kept
  on the card, and leaves less of it on the card between runs;
- ``compile_same_pixels`` (CUDA): regional torch.compile against no compile on
  the same seed (bit-identical, or the largest difference stated);
- ``out_of_memory`` (CUDA): an absurd request (2048x2048, batch 16, the plain
  math attention, no VAE tiling) through ``webui.studio.Studio`` fails with
  the studio's out-of-memory message, its record says so, and the next
  request succeeds;
- ``two_models``: an SDXL and a FLUX model resident together; switching back
  and forth loads neither again and gives the same pixels.

The models are ``gpu_models``' random-weight SDXL and FLUX at tiny widths by
default (these are checks of paths, not of speed; ``--full`` uses the real
sizes), saved as folders the engine loads like any model.

    python benchmarks/gpu_checks.py --out results/ [--full]

Writes ``OUT/checks.json`` (after every check) and ``OUT/checks.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_models  # noqa: E402
from gpu_report import write_report  # noqa: E402

from pipelines.devices import Switches  # noqa: E402
from pipelines.engine import Engine  # noqa: E402
from pipelines.requests import Text2ImgRequest  # noqa: E402

NEEDS_CUDA = "needs CUDA"
# Half precision against float32 on the same seed, mean absolute difference in 0..255 pixel values.
HALF_TOLERANCE = 8.0


class Skip(Exception):
    """A check that cannot run on this machine; its message is the status."""


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def request(folder: Path, *, size: int, **fields: Any) -> Text2ImgRequest:
    options = {"num_inference_steps": 4, "guidance_scale": 5.0, "seed": 7, "sampler": "Euler"}
    return Text2ImgRequest(
        prompt="a red circle on a blue background", model=str(folder), width=size, height=size, **{**options, **fields}
    )


class Checks:
    def __init__(
        self, device: torch.device, folders: dict[str, Path], size: int, out: Path, report_dir: Path | None = None
    ) -> None:
        self.device, self.folders, self.size, self.out = device, folders, size, out
        self.report_dir = report_dir or out
        self.results: dict[str, Any] = {
            "kind": "atelier-gpu-checks",
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "size": size,
            "environment": {"device": device.type, "torch": torch.__version__, "name": _device_name(device)},
            "checks": [],
        }

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def image(self, engine: Engine, family: str = "sdxl", **fields: Any) -> np.ndarray:
        steps = {"guidance_scale": 3.5} if family == "flux" else {}
        return pixels(engine.run(request(self.folders[family], size=self.size, **{**steps, **fields})).images[0])

    def check(self, name: str, body: Callable[[], str]) -> None:
        started = time.perf_counter()
        try:
            status, detail = "passed", body()
        except Skip as skip:
            status, detail = str(skip), ""
        except AssertionError as error:
            status, detail = "failed", str(error)
        except Exception as error:  # a check reports every failure and the next one still runs
            status, detail = "failed", f"{type(error).__name__}: {error} {traceback.format_exc()[-600:]}"
        seconds = round(time.perf_counter() - started, 2)
        self.results["checks"].append({"name": name, "status": status, "seconds": seconds, "detail": detail})
        print(f"[checks] {name}: {status} ({seconds} s) {detail[:200]}", flush=True)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "checks.json").write_text(json.dumps(self.results, indent=2))
        self.report_dir.mkdir(parents=True, exist_ok=True)
        write_report([self.results], self.report_dir / "checks.md")
        _free(self.device)

    # -- the checks --------------------------------------------------------

    def dtype(self, name: str) -> str:
        reference = self.image(Engine(device=str(self.device), dtype="float32"))
        engine = Engine(device=str(self.device), dtype=name)
        first, again = self.image(engine), self.image(engine)
        assert first.std() > 1, f"{name} made a flat picture (standard deviation {first.std():.2f})"
        assert np.array_equal(first, again), f"{name}: a rerun differs by up to {np.abs(first - again).max()}"
        mean = float(np.abs(first - reference).mean())
        assert mean <= HALF_TOLERANCE, (
            f"{name} differs from float32 by {mean:.2f} on average (allowed {HALF_TOLERANCE})"
        )
        return f"rerun identical; against float32 mean abs {mean:.2f}, max {int(np.abs(first - reference).max())}"

    def cpu_offload(self) -> str:
        if not self.cuda:
            raise Skip(NEEDS_CUDA)
        kept = Engine(device=str(self.device))
        on_card = self.image(kept)
        resident = torch.cuda.memory_allocated(self.device)
        del kept
        _free(self.device)
        offloaded = Engine(device=str(self.device), switches=Switches(cpu_offload=True))
        image = self.image(offloaded)
        between = torch.cuda.memory_allocated(self.device)
        assert np.array_equal(image, on_card), f"offload changed pixels by up to {np.abs(image - on_card).max()}"
        assert between < resident, f"offload left {between} bytes on the card, not less than {resident}"
        return f"same pixels; on the card between runs {between / 2**20:.0f} MiB against {resident / 2**20:.0f} MiB"

    def compile_same_pixels(self) -> str:
        if not self.cuda:
            raise Skip(NEEDS_CUDA)
        plain = self.image(Engine(device=str(self.device)))
        _free(self.device)
        compiled_engine = Engine(device=str(self.device), switches=Switches(compile=True, compile_scope="regional"))
        compiled = self.image(compiled_engine)
        again = self.image(compiled_engine)
        assert np.array_equal(compiled, again), "a compiled rerun gave other pixels"
        diff = np.abs(compiled - plain)
        assert diff.mean() <= 1.0, f"compile moved pixels by {diff.mean():.2f} on average (max {diff.max()})"
        same = (
            "bit-identical" if diff.max() == 0 else f"not bit-identical: mean abs {diff.mean():.3f}, max {diff.max()}"
        )
        return f"compiled against plain: {same}; compiled reruns identical"

    def out_of_memory(self) -> str:
        if not self.cuda:
            raise Skip(NEEDS_CUDA)
        # The studio and its gallery: imported here so the other checks run where SQLAlchemy is missing.
        from storage import Gallery
        from webui.errors import StudioError
        from webui.settings import Settings
        from webui.studio import OUT_OF_MEMORY, Studio

        with tempfile.TemporaryDirectory() as data:
            settings = Settings(data_dir=Path(data))
            gallery = Gallery(url=settings.gallery_url, data_dir=settings.data_dir)
            # Plain math attention at 2048x2048 asks for a score matrix of hundreds of GB: a real OOM within a step.
            engine = Engine(device=str(self.device), switches=Switches(attention="math", vae_tiling="off"))
            studio = Studio(settings=settings, gallery=gallery, engine=engine)
            absurd = request(self.folders["sdxl"], size=2048, batch_size=16, num_inference_steps=2)
            try:
                studio.submit(absurd, user="bench")
            except StudioError as error:
                assert str(error) == OUT_OF_MEMORY, f"the studio said {error!r}"
            else:
                raise AssertionError("2048x2048 at batch 16 with math attention did not run out of memory")
            failed = gallery.list(limit=1)[0]
            assert (failed.status, failed.error) == ("failed", OUT_OF_MEMORY), (
                f"its record: {failed.status}, {failed.error!r}"
            )
            record = studio.submit(request(self.folders["sdxl"], size=self.size), user="bench")
            assert record.status == "succeeded", f"the request after the OOM ended {record.status}: {record.error}"
            return f"the studio said {OUT_OF_MEMORY!r}, its record says so; the next request succeeded"

    def two_models(self) -> str:
        engine = Engine(device=str(self.device), max_models=2)
        sdxl = self.image(engine, "sdxl")
        flux = self.image(engine, "flux")
        sdxl_again, flux_again = self.image(engine, "sdxl"), self.image(engine, "flux")
        assert engine.loads == 2, f"switching loaded a model again ({engine.loads} loads for 2 models)"
        assert sorted(engine.resident()) == sorted(str(f) for f in self.folders.values()), engine.resident()
        assert np.array_equal(sdxl, sdxl_again), "SDXL's pixels changed after switching to FLUX and back"
        assert np.array_equal(flux, flux_again), "FLUX's pixels changed after switching to SDXL and back"
        return "both resident; 2 loads for 4 runs; same pixels after each switch"

    def run_all(self) -> None:
        self.check("dtype_float16", lambda: self.dtype("float16"))
        self.check("dtype_bfloat16", lambda: self.dtype("bfloat16"))
        self.check("cpu_offload", self.cpu_offload)
        self.check("compile_same_pixels", self.compile_same_pixels)
        self.check("out_of_memory", self.out_of_memory)
        self.check("two_models", self.two_models)


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()


def _free(device: torch.device) -> None:
    import gc

    gc.collect()
    # Compiled code is kept per code object up to a recompile limit, and every engine brings new module
    # objects: without a reset the tuned path could hit the limit and run eagerly without saying so.
    # The compiled kernels stay on disk (TORCHINDUCTOR_CACHE_DIR), so the next compile is quicker.
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for checks.json and checks.md")
    parser.add_argument("--report-dir", type=Path, help="folder for checks.md (default: --out)")
    parser.add_argument("--full", action="store_true", help="the real model sizes (default: tiny widths)")
    parser.add_argument("--size", type=int, default=None, help="image size (default 64 tiny, 1024 full)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when there is one)")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    size = args.size or (1024 if args.full else 64)
    with tempfile.TemporaryDirectory(prefix="atelier-checks-") as work:
        folders = {}
        for family in gpu_models.FAMILIES:
            # Saved in float32: each engine casts to its own dtype on load, as it does with any model.
            pipe = gpu_models.build(family, tiny=not args.full, device=device, dtype=torch.float32)
            folders[family] = Path(work) / family
            gpu_models.save(pipe, folders[family])
            del pipe
            _free(device)
        checks = Checks(device, folders, size, args.out, args.report_dir)
        checks.run_all()
    failed = [c["name"] for c in checks.results["checks"] if c["status"] == "failed"]
    print(f"[checks] wrote {args.out / 'checks.json'}; failed: {', '.join(failed) or 'none'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
