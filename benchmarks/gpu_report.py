"""Markdown tables from the GPU benchmark's and checks' JSON (``gpu.py``, ``gpu_checks.py``).

    python benchmarks/gpu_report.py OUT.md gpu_sdxl.json gpu_flux.json checks.json

Columns of the speed table (docs/performance.md explains them too): the path
(stock diffusers, the engine at its defaults, the engine tuned), the batch,
seconds per image (the fastest timed call over the batch), iterations per
second (denoising steps per second of one call, as diffusers' progress bar
counts them), the first call's time (warm-up: kernels chosen, compiled code
built), the compute bound (guided-step FLOPs times steps over the card's
measured matmul rate) and the share of it reached, and peak GPU memory.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _cell(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _benchmark(doc: dict[str, Any]) -> list[str]:
    env = doc.get("environment", {})
    peak = doc.get("peak") or {}
    lines = [
        f"### Speed: {env.get('name', '?')} ({env.get('device', '?')}), torch {env.get('torch', '?')}, "
        f"diffusers {env.get('diffusers', '?')}{' — tiny configs' if doc.get('tiny') else ''}",
        "",
        f"Image {doc.get('size')}x{doc.get('size')}; steps {doc.get('steps')}; measured matmul rate "
        f"{_cell(peak.get('tflops'))} TFLOP/s ({peak.get('dtype', '?')}).",
        "",
        "| family | path | dtype | batch | s/image | it/s | first call s | bound s | share of bound | peak GB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for family, record in doc.get("families", {}).items():
        for run in record.get("runs", []):
            lines.append(
                f"| {family} | {run['path']} | {run['dtype']} | {run['batch']} | {_cell(run['seconds_per_image'])} | "
                f"{_cell(run['it_per_s'])} | {_cell(run['warmup_s'])} | {_cell(run.get('compute_bound_s'))} | "
                f"{_cell(run.get('bound_share'))} | {_cell(run.get('peak_memory_gb'))} |"
            )
    for family, record in doc.get("families", {}).items():
        if record.get("speedup_vs_stock"):
            ratios = ", ".join(f"{k} {v}x" for k, v in record["speedup_vs_stock"].items())
            lines += ["", f"**{family}, stock time over ours:** {ratios}."]
        if record.get("tuned"):
            lines.append(f"Tuned: {record['tuned']['dtype']}, switches {record['tuned']['switches']}.")
        if record.get("levers"):
            lines += [
                "",
                f"#### {family} levers (batch 1, {doc.get('lever_steps')} steps; each on alone against the engine's defaults)",
                "",
                "| lever | s/call | vs defaults | first call s | peak GB | helps |",
                "| --- | --- | --- | --- | --- | --- |",
            ]
            for lever in record["levers"]:
                if "error" in lever or "skipped" in lever:
                    why = f"failed: {lever['error'][:80]}" if "error" in lever else f"skipped: {lever['skipped']}"
                    lines.append(f"| {lever['lever']} | {why} | | | | |")
                    continue
                lines.append(
                    f"| {lever['lever']} | {_cell(lever['call_s'])} | {_cell(lever['vs_baseline'])} | "
                    f"{_cell(lever['warmup_s'])} | {_cell(lever['peak_memory_gb'])} | {_cell(lever['helps'])} |"
                )
            if record.get("levers_needing_cuda"):
                lines.append(f"\nNot run here (needs CUDA): {', '.join(record['levers_needing_cuda'])}.")
        if record.get("restart"):
            lines += ["", f"{family} regional compile, first image: {record['restart']}."]
        if record.get("quality"):
            lines += [
                "",
                f"#### {family} quality (tolerance: mean absolute pixel difference ≤ {doc['tolerance']['mean_abs']})",
                "",
            ]
            lines += [
                "| comparison | mean abs | max abs | identical | within tolerance |",
                "| --- | --- | --- | --- | --- |",
            ]
            for name, diff in record["quality"].items():
                lines.append(
                    f"| {name} | {_cell(diff['mean_abs'])} | {diff['max_abs']} | {diff['identical']} | {diff['within_tolerance']} |"
                )
    for error in doc.get("errors", []):
        lines.append(f"\n- failed: {error['part']}: {error['error']}")
    return lines


def _checks(doc: dict[str, Any]) -> list[str]:
    env = doc.get("environment", {})
    lines = [
        f"### CUDA checks of the studio: {env.get('name', '?')} ({env.get('device', '?')})",
        "",
        "| check | status | seconds | detail |",
        "| --- | --- | --- | --- |",
    ]
    for check in doc.get("checks", []):
        detail = str(check.get("detail", "")).replace("|", "/").replace("\n", " ")[:160]
        lines.append(f"| {check['name']} | {check['status']} | {_cell(check.get('seconds'))} | {detail} |")
    return lines


def render(documents: list[dict[str, Any]]) -> str:
    lines: list[str] = []
    for doc in documents:
        lines += _checks(doc) if doc.get("kind") == "atelier-gpu-checks" else _benchmark(doc)
        lines.append("")
    return "\n".join(lines)


def write_report(documents: list[dict[str, Any]], path: Path) -> None:
    path.write_text(render(documents))


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        raise SystemExit("usage: gpu_report.py OUT.md RESULT.json [RESULT.json ...]")
    documents = [json.loads(Path(name).read_text()) for name in argv[1:] if Path(name).is_file()]
    write_report(documents, Path(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
