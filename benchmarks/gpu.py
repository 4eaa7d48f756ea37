"""Stock diffusers against Atelier's engine on one card: SDXL and FLUX architectures, random weights (issue 18).

For each family (``gpu_models`` builds it from the public configs in
``configs/``, random weights, and saves it as a folder the engine loads like
any model):

1. **stock**: the diffusers pipeline as a user of diffusers runs it (SDXL in
   float16, FLUX in bfloat16, the default attention), batch 1 and 4;
2. **engine**: the same model through ``pipelines.engine.Engine`` at the
   studio's defaults, batch 1 and 4;
3. **levers** (SDXL, batch 1, ``--lever-steps`` steps): each one on against
   the engine's defaults, one at a time: bf16, attention (sdpa against the
   plain math kernel), channels_last, fused QKV, regional torch.compile
   (default mode, and reduce-overhead, which adds CUDA graphs), the VAE's
   fp32 upcast, VAE tiling, the prompt-embedding cache, live previews;
4. **tuned**: the engine with every lever that helped (more than 2% faster)
   at once, batch 1 and 4;
5. **quality**: stock against engine and tuned images on the same seed
   (mean and largest absolute pixel difference, against ``TOLERANCE``), and
   the tuned path rerun, which must be bit-identical.

Every timed figure comes after a warm-up run of the same shape, whose time
is reported apart as the first image's. "Compute bound": the FLOPs of one
guided denoising step (torch's FLOP counter on the real shapes) times the
steps, over the card's measured bf16 matmul rate; the share is that bound
over the measured time (the text encoders and the VAE are outside the
bound, so 100% is out of reach).

    python benchmarks/gpu.py --out results/            # the card: 1024x1024, SDXL 30 steps, FLUX 8
    python benchmarks/gpu.py --tiny --out /tmp/gpu     # toy widths, 64x64: the same code on a CPU in seconds

Results go to ``OUT/gpu.json`` (rewritten after every measurement, so a run
stopped by its time box keeps what it measured) and ``OUT/gpu.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
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

import diffusers  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_models  # noqa: E402
from gpu_report import write_report  # noqa: E402

from pipelines.devices import Switches  # noqa: E402
from pipelines.engine import Engine  # noqa: E402
from pipelines.prompt_cache import TextEmbeddingCache  # noqa: E402
from pipelines.requests import Text2ImgRequest  # noqa: E402

PROMPT = "a lighthouse on a cliff at dusk, oil painting"
SEED = 1234
GUIDANCE = {"sdxl": 5.0, "flux": 3.5}
STOCK_DTYPE = {"sdxl": torch.float16, "flux": torch.bfloat16}  # what each model's card tells diffusers users to run
# Stock and optimised images on the same seed: mean absolute difference in 0..255 pixel values. Random
# weights amplify every rounding change over the steps more than trained ones do, so this is loose;
# the rerun check, which must be exact, is the strict one.
TOLERANCE = {"mean_abs": 8.0}
KEEP_IF_FASTER = 0.98  # a lever is kept when it takes under 98% of the time without it
# The levers the tuned path may keep; the others are costs to know (tiling, previews) or the cache, on by default.
TUNABLE = ("bf16", "attention_math", "channels_last", "fuse_qkv", "vae_upcast_off")
TUNABLE += ("compile_regional", "compile_regional_cudagraphs")


def stock_dtype(family: str, device: torch.device) -> torch.dtype:
    # Half precision on a CPU is slow and says nothing about a card: the tiny CPU run uses float32.
    return STOCK_DTYPE[family] if device.type == "cuda" else torch.float32


@dataclasses.dataclass
class Setup:
    device: torch.device
    tiny: bool
    size: int
    steps: dict[str, int]
    lever_steps: int
    lever_budget: float | None  # seconds for all the levers, so the tuned path after them still runs
    batches: tuple[int, ...]
    out: Path
    work: Path
    name: str = "gpu"
    levers_from: Path | None = None  # an earlier run's JSON whose SDXL lever figures pick the tuned switches
    report_dir: Path | None = None  # where the markdown goes, when not beside the JSON


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, call: Callable[[], Any]) -> tuple[float, Any]:
    sync(device)
    started = time.perf_counter()
    value = call()
    sync(device)
    return time.perf_counter() - started, value


def peak_memory_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def matmul_tflops(device: torch.device) -> dict[str, Any]:
    """The card's measured matmul rate: the ceiling the compute bound is taken against."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (512, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    reps = 10
    seconds, _ = timed(device, lambda: [a @ b for _ in range(reps)])
    return {"dtype": str(dtype).removeprefix("torch."), "n": n, "tflops": 2 * n**3 * reps / seconds / 1e12}


def measure(setup: Setup, run: Callable[[], list], *, batch: int, steps: int, repeats: int) -> dict[str, Any]:
    """A warm-up call (the first image's time), then ``repeats`` timed calls; the fastest counts."""
    reset_peak(setup.device)
    warmup, images = timed(setup.device, run)
    times = [timed(setup.device, run)[0] for _ in range(repeats)]
    best = min(times)
    return {
        "batch": batch,
        "steps": steps,
        "warmup_s": round(warmup, 4),
        "call_s": round(best, 4),
        "seconds_per_image": round(best / batch, 4),
        "it_per_s": round(steps / best, 3),
        "peak_memory_gb": None if peak_memory_gb(setup.device) is None else round(peak_memory_gb(setup.device), 2),
        "images": images,
    }


def stock_runner(pipe, family: str, *, size: int, steps: int, batch: int) -> Callable[[], list]:
    def run() -> list:
        generators = [torch.Generator("cpu").manual_seed(SEED + i) for i in range(batch)]
        return pipe(
            prompt=PROMPT,
            num_images_per_prompt=batch,
            width=size,
            height=size,
            num_inference_steps=steps,
            guidance_scale=GUIDANCE[family],
            generator=generators,
        ).images

    return run


def engine_runner(engine: Engine, folder: Path, family: str, *, size: int, steps: int, batch: int, **run_options):
    request = Text2ImgRequest(
        prompt=PROMPT,
        model=str(folder),
        width=size,
        height=size,
        num_inference_steps=steps,
        guidance_scale=GUIDANCE[family],
        sampler="Euler",
        seed=SEED,
        batch_size=batch,
    )
    return lambda: engine.run(request, **run_options).images


def pixel_difference(a, b) -> dict[str, Any]:
    x, y = np.asarray(a, dtype=np.int16), np.asarray(b, dtype=np.int16)
    diff = np.abs(x - y)
    return {
        "mean_abs": round(float(diff.mean()), 3),
        "max_abs": int(diff.max()),
        "identical": bool(diff.max() == 0),
        "within_tolerance": bool(diff.mean() <= TOLERANCE["mean_abs"]),
    }


def bound(result: dict[str, Any], flops: int, peak: dict[str, Any]) -> None:
    bound_s = flops * result["steps"] / (peak["tflops"] * 1e12)
    result["compute_bound_s"] = round(bound_s, 4)
    result["bound_share"] = round(bound_s / result["call_s"], 4)


class Bench:
    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.results: dict[str, Any] = {
            "kind": "atelier-gpu-benchmark",
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "tiny": setup.tiny,
            "size": setup.size,
            "steps": setup.steps,
            "lever_steps": setup.lever_steps,
            "batches": list(setup.batches),
            "tolerance": TOLERANCE,
            "environment": environment(setup.device),
            "families": {},
            "errors": [],
        }

    def save(self) -> None:
        self.setup.out.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.results, indent=2, default=str)
        (self.setup.out / f"{self.setup.name}.json").write_text(text)
        write_report([self.results], (self.setup.report_dir or self.setup.out) / f"{self.setup.name}.md")

    def section(self, name: str, body: Callable[[], None]) -> None:
        """One part; a failure is recorded and the next part still runs."""
        started = time.perf_counter()
        try:
            body()
        except Exception as error:  # a benchmark reports every failure and carries on
            self.results["errors"].append(
                {"part": name, "error": f"{type(error).__name__}: {error}", "trace": traceback.format_exc()[-2000:]}
            )
            print(f"[gpu] {name} failed: {type(error).__name__}: {error}", flush=True)
            if self.setup.device.type == "cuda":
                torch.cuda.empty_cache()
        print(f"[gpu] {name}: {time.perf_counter() - started:.1f} s", flush=True)
        self.save()

    def run(self, families: list[str], parts: set[str]) -> None:
        self.section("peak", lambda: self.results.update(peak=matmul_tflops(self.setup.device)))
        for family in families:
            self.results["families"][family] = {"runs": [], "levers": [], "quality": {}}
            self.family(family, parts)

    def family(self, family: str, parts: set[str]) -> None:
        setup, record = self.setup, self.results["families"][family]
        steps, size = setup.steps[family], setup.size
        state: dict[str, Any] = {}
        if parts == {"restart"} and setup.device.type != "cuda":  # nothing to build for
            record["restart"] = {"status": "needs CUDA"}
            self.save()
            return

        def build() -> None:
            dtype = stock_dtype(family, setup.device)
            seconds, pipe = timed(
                setup.device, lambda: gpu_models.build(family, tiny=setup.tiny, device=setup.device, dtype=dtype)
            )
            folder = setup.work / family
            record["build_s"] = round(seconds, 2)
            record["save_s"] = round(gpu_models.save(pipe, folder), 2)
            record["parameters"] = sum(p.numel() for p in gpu_models.denoiser(pipe, family).parameters())
            record["step_flops"] = {
                str(b): gpu_models.step_flops(pipe, family, batch=b, width=size, height=size) for b in setup.batches
            }
            state.update(pipe=pipe, folder=folder)

        self.section(f"{family}: build", build)
        if "pipe" not in state:
            return
        peak = self.results.get("peak")

        def add(path: str, result: dict[str, Any], dtype: str, extra: dict[str, Any] | None = None) -> None:
            images = result.pop("images")
            if peak:
                bound(result, record["step_flops"][str(result["batch"])], peak)
            record["runs"].append({"path": path, "dtype": dtype, **(extra or {}), **result})
            if result["batch"] == 1:
                state.setdefault("first_image", {})[path] = images[0]

        if "stock" in parts:

            def stock() -> None:
                for batch in setup.batches:
                    run = stock_runner(state["pipe"], family, size=size, steps=steps, batch=batch)
                    add(
                        "stock",
                        measure(setup, run, batch=batch, steps=steps, repeats=2 if batch == 1 else 1),
                        str(stock_dtype(family, setup.device)).removeprefix("torch."),
                    )

            self.section(f"{family}: stock", stock)
        # The stock pipeline's memory goes before the engine loads its own copy.
        state.pop("pipe")
        free(setup.device)

        def engine_paths(path: str, switches: Switches, dtype: str) -> None:
            engine = Engine(device=str(setup.device), dtype=dtype, switches=switches)
            try:
                for batch in setup.batches:
                    run = engine_runner(engine, state["folder"], family, size=size, steps=steps, batch=batch)
                    result = measure(setup, run, batch=batch, steps=steps, repeats=2 if batch == 1 else 1)
                    add(path, result, dtype, {"switches": switches.fingerprint()})
                if path == "tuned":  # the rerun must give the very same pixels
                    again = engine_runner(engine, state["folder"], family, size=size, steps=steps, batch=1)()[0]
                    record["quality"]["tuned_rerun"] = pixel_difference(state["first_image"]["tuned"], again)
            finally:
                del engine
                free(setup.device)

        default_dtype = "float16" if setup.device.type == "cuda" else "float32"
        if "engine" in parts:
            self.section(f"{family}: engine", lambda: engine_paths("engine", Switches(), default_dtype))
        if "levers" in parts and family == "sdxl":
            self.section(f"{family}: levers", lambda: self.levers(family, state["folder"], record, default_dtype))
        if "tuned" in parts:
            tuned, tuned_dtype = self.tuned(record, default_dtype)
            record["tuned"] = {"dtype": tuned_dtype, "switches": tuned.fingerprint()}
            self.section(f"{family}: tuned", lambda: engine_paths("tuned", tuned, tuned_dtype))
        if "restart" in parts:
            self.section(f"{family}: restart", lambda: self.restart(family, state["folder"], record, default_dtype))
        self.section(f"{family}: quality", lambda: self.quality(record, state))
        if not setup.tiny:
            import shutil

            shutil.rmtree(state["folder"], ignore_errors=True)

    def levers(self, family: str, folder: Path, record: dict[str, Any], dtype: str) -> None:
        """Each lever on against the engine's defaults, one at a time, at batch 1.

        The levers read at each run (VAE tiling, the prompt cache, previews) are turned on the baseline's
        engine, the others are switches set when a model loads, so each gets an engine of its own.
        """
        setup = self.setup
        per_run: dict[str, Callable[[Engine], dict[str, Any]]] = {
            "vae_tiling_on": lambda engine: _set(
                engine, switches=dataclasses.replace(engine.switches, vae_tiling="on")
            ),
            "prompt_cache_off": lambda engine: _set(engine, text_cache=TextEmbeddingCache(0)),
            "previews": lambda engine: {"preview": lambda image: None},
        }
        # The likeliest wins first: when the lever budget runs out, what is left out matters least.
        # Compile and CUDA graphs only on a card: on a CPU the first image takes minutes and says nothing of a GPU.
        cuda = setup.device.type == "cuda"
        at_load: dict[str, tuple[str, Switches]] = {"bf16": ("bfloat16", Switches())}
        if cuda:
            at_load["compile_regional"] = (dtype, Switches(compile=True, compile_scope="regional"))
        at_load["channels_last"] = (dtype, Switches(channels_last=True))
        at_load["fuse_qkv"] = (dtype, Switches(fuse_qkv=True))
        at_load["vae_upcast_off"] = (dtype, Switches(vae_upcast="off"))
        at_load["attention_math"] = (dtype, Switches(attention="math"))
        if cuda:
            cudagraphs = Switches(compile=True, compile_scope="regional", compile_mode="reduce-overhead")
            at_load["compile_regional_cudagraphs"] = (dtype, cudagraphs)
        else:
            record["levers_needing_cuda"] = ["compile_regional", "compile_regional_cudagraphs"]
        started = time.perf_counter()
        baseline: dict[str, float] = {}

        def lever(name: str, engine: Engine, lever_dtype: str, run_options: dict[str, Any]) -> None:
            try:
                run = engine_runner(
                    engine, folder, family, size=setup.size, steps=setup.lever_steps, batch=1, **run_options
                )
                result = measure(setup, run, batch=1, steps=setup.lever_steps, repeats=2)
            except Exception as error:  # one lever failing (an unsupported kernel, say) must not lose the rest
                record["levers"].append({"lever": name, "error": f"{type(error).__name__}: {error}"})
                return
            if name == "baseline":
                baseline["call_s"] = result["call_s"]
            base = baseline.get("call_s")
            record["levers"].append(
                {
                    "lever": name,
                    "dtype": lever_dtype,
                    "switches": engine.switches.fingerprint(),
                    "call_s": result["call_s"],
                    "warmup_s": result["warmup_s"],
                    "peak_memory_gb": result["peak_memory_gb"],
                    "vs_baseline": round(result["call_s"] / base, 4) if base else None,
                    "helps": result["call_s"] < base * KEEP_IF_FASTER if base and name in TUNABLE else None,
                }
            )
            self.save()

        engine = Engine(device=str(setup.device), dtype=dtype)
        lever("baseline", engine, dtype, {})
        for name, turn_on in per_run.items():
            switches, text_cache = engine.switches, engine.text_cache
            lever(name, engine, dtype, turn_on(engine))
            engine.switches, engine.text_cache = switches, text_cache
        del engine
        free(setup.device)
        for name, (lever_dtype, switches) in at_load.items():
            # The tuned path runs after the levers in the same time box: past the budget, levers are left out.
            if setup.lever_budget and time.perf_counter() - started > setup.lever_budget:
                record["levers"].append(
                    {"lever": name, "skipped": f"the lever budget ({setup.lever_budget} s) was spent"}
                )
                continue
            try:
                engine = Engine(device=str(setup.device), dtype=lever_dtype, switches=switches)
            except Exception as error:
                record["levers"].append({"lever": name, "error": f"{type(error).__name__}: {error}"})
                continue
            lever(name, engine, lever_dtype, {})
            del engine
            free(setup.device)

    def restart(self, family: str, folder: Path, record: dict[str, Any], dtype: str) -> None:
        """The first image with regional compile: run twice, in two processes sharing TORCHINDUCTOR_CACHE_DIR,
        the second shows what a restarted studio pays once the compiled code is on disk."""
        if self.setup.device.type != "cuda":
            record["restart"] = {"status": "needs CUDA"}
            return
        engine = Engine(
            device=str(self.setup.device), dtype=dtype, switches=Switches(compile=True, compile_scope="regional")
        )
        run = engine_runner(engine, folder, family, size=self.setup.size, steps=self.setup.lever_steps, batch=1)
        first, _ = timed(self.setup.device, run)
        again, _ = timed(self.setup.device, run)
        record["restart"] = {
            "first_image_s": round(first, 3),
            "next_image_s": round(again, 3),
            "steps": self.setup.lever_steps,
            "cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR", "(torch's default)"),
        }

    def tuned(self, record: dict[str, Any], dtype: str) -> tuple[Switches, str]:
        """The engine's switches with every lever that helped; without lever figures, the defaults."""
        helped = {lever["lever"] for lever in record.get("levers", []) if lever.get("helps")}
        if not helped:  # FLUX takes SDXL's findings: the levers are measured once, on SDXL
            sdxl = self.results["families"].get("sdxl", {})
            if not sdxl.get("levers") and self.setup.levers_from and self.setup.levers_from.is_file():
                sdxl = json.loads(self.setup.levers_from.read_text()).get("families", {}).get("sdxl", {})
            helped = {lever["lever"] for lever in sdxl.get("levers", []) if lever.get("helps")}
        options: dict[str, Any] = {}
        if "channels_last" in helped:
            options["channels_last"] = True
        if "fuse_qkv" in helped:
            options["fuse_qkv"] = True
        if "vae_upcast_off" in helped:
            options["vae_upcast"] = "off"
        if "compile_regional_cudagraphs" in helped:
            options.update(compile=True, compile_scope="regional", compile_mode="reduce-overhead")
        elif "compile_regional" in helped:
            options.update(compile=True, compile_scope="regional")
        if "attention_math" in helped:
            options["attention"] = "math"
            options.pop("fuse_qkv", None)
        return Switches(**options), "bfloat16" if "bf16" in helped else dtype

    def quality(self, record: dict[str, Any], state: dict[str, Any]) -> None:
        first = state.get("first_image", {})
        if "stock" not in first:
            return
        for path in ("engine", "tuned"):
            if path in first:
                record["quality"][f"stock_vs_{path}"] = pixel_difference(first["stock"], first[path])
        speed = {}
        for batch in self.setup.batches:
            stock = [r for r in record["runs"] if r["path"] == "stock" and r["batch"] == batch]
            for path in ("engine", "tuned"):
                ours = [r for r in record["runs"] if r["path"] == path and r["batch"] == batch]
                if stock and ours:
                    speed[f"{path}_b{batch}"] = round(stock[0]["call_s"] / ours[0]["call_s"], 3)
        record["speedup_vs_stock"] = speed


def _set(engine: Engine, **attributes: Any) -> dict[str, Any]:
    """Turn a lever the engine reads at each run; no run options."""
    for name, value in attributes.items():
        setattr(engine, name, value)
    return {}


def free(device: torch.device) -> None:
    import gc

    gc.collect()
    # Compiled code is kept per code object up to a recompile limit, and every engine brings new module
    # objects: without a reset the tuned path could hit the limit and run eagerly without saying so.
    # The compiled kernels stay on disk (TORCHINDUCTOR_CACHE_DIR), so the next compile is quicker.
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def environment(device: torch.device) -> dict[str, Any]:
    env = {
        "device": device.type,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(name=props.name, memory_gb=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    else:
        env.update(name=platform.machine(), threads=torch.get_num_threads())
    return env


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu.json and gpu.md")
    parser.add_argument("--tiny", action="store_true", help="toy widths and depths at 64x64: runs on a CPU")
    parser.add_argument("--size", type=int, help="image width and height (default 1024, 64 with --tiny)")
    parser.add_argument("--steps", type=int, default=30, help="SDXL's steps (default 30)")
    parser.add_argument("--flux-steps", type=int, default=8, help="FLUX's steps (default 8: its steps cost 8x SDXL's)")
    parser.add_argument("--lever-steps", type=int, default=10, help="steps of each lever's run (default 10)")
    parser.add_argument(
        "--lever-budget", type=float, default=130, help="seconds for all levers; 0: no limit (default 130)"
    )
    parser.add_argument("--families", default="sdxl,flux", help="comma-separated: sdxl, flux")
    parser.add_argument(
        "--parts", default="stock,engine,levers,tuned", help="comma-separated: stock, engine, levers, tuned"
    )
    parser.add_argument("--batches", default="1,4", help="batch sizes (default 1,4)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when there is one)")
    parser.add_argument("--name", default="gpu", help="the results' file name, without .json/.md (default gpu)")
    parser.add_argument("--report-dir", type=Path, help="folder for the markdown (default: --out)")
    parser.add_argument(
        "--levers-from", type=Path, help="an earlier run's JSON whose SDXL levers pick FLUX's tuned switches"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    families = [name for name in args.families.split(",") if name]
    for name in families:
        if name not in gpu_models.FAMILIES:
            raise SystemExit(f"--families must name sdxl and/or flux; got {name!r}.")
    with tempfile.TemporaryDirectory(prefix="atelier-gpu-") as work:
        setup = Setup(
            device=device,
            tiny=args.tiny,
            size=args.size or (64 if args.tiny else 1024),
            steps={"sdxl": args.steps, "flux": args.flux_steps},
            lever_steps=args.lever_steps,
            lever_budget=args.lever_budget or None,
            batches=tuple(int(b) for b in args.batches.split(",")),
            out=args.out,
            work=Path(work),
            name=args.name,
            levers_from=args.levers_from,
            report_dir=args.report_dir,
        )
        bench = Bench(setup)
        bench.run(families, set(args.parts.split(",")))
    print(f"[gpu] wrote {args.out / args.name}.json and .md", flush=True)
    return 1 if bench.results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
