"""The lent GPU machine's one command, benchmarks/gpu_check.sh, end to end on this CPU at toy size.

A card is lent for minutes, so what runs there must already have run here:
every part starts and ends, and the JSON and the markdown it brings back hold
the figures issue 18 asks for. The CUDA-only checks must say "needs CUDA",
never "passed".
"""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN_FIELDS = {"path", "dtype", "batch", "steps", "warmup_s", "call_s", "seconds_per_image", "it_per_s"}
RUN_FIELDS |= {"compute_bound_s", "bound_share", "peak_memory_gb"}


def test_gpu_check_runs_every_part_at_toy_size(tmp_path):
    out = tmp_path / "out"
    environment = {**os.environ, "OUT": str(out), "TINY": "1", "WHEELS": "0", "PYTHON": sys.executable}
    environment["PYTHONPATH"] = str(REPO)
    finished = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh")],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=400,
    )
    log = finished.stdout + finished.stderr
    assert finished.returncode == 0, log[-3000:]
    for name in ("sdxl", "checks", "flux", "restart"):
        assert f"== {name}: done" in log, log[-3000:]
    assert {p.name for p in out.iterdir()} == {
        "gpu_sdxl.json",
        "gpu_flux.json",
        "checks.json",
        "restart.json",
        "performance.md",
        "log.txt",
    }

    for family in ("sdxl", "flux"):
        result = json.loads((out / f"gpu_{family}.json").read_text())
        assert result["errors"] == []
        assert result["peak"]["tflops"] > 0
        record = result["families"][family]
        assert record["step_flops"]["1"] > 0 and record["step_flops"]["4"] == 4 * record["step_flops"]["1"]
        runs = {(run["path"], run["batch"]): run for run in record["runs"]}
        paths = ("stock", "engine", "tuned") if family == "sdxl" else ("stock", "tuned")
        assert set(runs) == {(path, batch) for path in paths for batch in (1, 4)}
        for run in runs.values():
            assert RUN_FIELDS <= set(run)
            assert run["seconds_per_image"] > 0 and 0 < run["bound_share"]
        assert set(record["speedup_vs_stock"]) == {f"{path}_b{batch}" for path in paths[1:] for batch in (1, 4)}
        # Same seed, same weights: the engine's image is stock diffusers' within the stated tolerance,
        # and the tuned path reruns to the very same pixels.
        assert record["quality"][f"stock_vs_{paths[1]}"]["within_tolerance"]
        assert record["quality"]["tuned_rerun"]["identical"]

    levers = {
        lever["lever"]: lever for lever in json.loads((out / "gpu_sdxl.json").read_text())["families"]["sdxl"]["levers"]
    }
    assert set(levers) == {
        "baseline",
        "bf16",
        "attention_math",
        "channels_last",
        "fuse_qkv",
        "vae_upcast_off",
        "vae_tiling_on",
        "prompt_cache_off",
        "previews",
    }
    assert all("error" not in lever and lever["call_s"] > 0 for lever in levers.values())

    checks = {c["name"]: c["status"] for c in json.loads((out / "checks.json").read_text())["checks"]}
    assert checks == {
        "dtype_float16": "passed",
        "dtype_bfloat16": "passed",
        "cpu_offload": "needs CUDA",
        "compile_same_pixels": "needs CUDA",
        "out_of_memory": "needs CUDA",
        "two_models": "passed",
    }
    assert json.loads((out / "restart.json").read_text())["families"]["sdxl"]["restart"] == {"status": "needs CUDA"}

    page = (out / "performance.md").read_text()
    assert (
        "| family | path | dtype | batch | s/image | it/s | first call s | bound s | share of bound | peak GB |" in page
    )
    assert "| sdxl | stock | float32 | 4 |" in page and "| flux | tuned |" in page
    assert "| out_of_memory | needs CUDA |" in page
    assert "stock time over ours" in page


def test_the_kept_configs_are_the_published_models():
    """Built on the meta device (no memory, no arithmetic): the sizes the model cards publish, and the
    13.5 TFLOP a guided SDXL step costs at 1024x1024 that issue 18's compute bound starts from."""
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_models

    sdxl = gpu_models.build("sdxl", tiny=False, device="meta", dtype=torch.float16)
    assert round(sum(p.numel() for p in sdxl.unet.parameters()) / 1e9, 2) == 2.57
    assert round(sum(p.numel() for p in sdxl.text_encoder_2.parameters()) / 1e9, 3) == 0.695
    flops = gpu_models.step_flops(sdxl, "sdxl", batch=1, width=1024, height=1024)
    assert round(flops / 1e12, 1) == 13.5
    flux = gpu_models.build("flux", tiny=False, device="meta", dtype=torch.bfloat16)
    assert round(sum(p.numel() for p in flux.transformer.parameters()) / 1e9, 1) == 11.9
    assert round(sum(p.numel() for p in flux.text_encoder_2.parameters()) / 1e9, 2) == 4.76
