"""Jobs per second through the Ray Serve pool with 1 and 2 CPU replicas, per-job time Ray vs local, cold start.

Starts its own Ray head on loopback (stopped by process id afterwards). Run from the repo root:
    .venv/bin/python benchmarks/bench_ray_pool.py [--jobs 8] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    import contextlib

    import torch

    from pipelines.engine import Engine
    from pipelines.requests import Text2ImgRequest
    from tests.webui.conftest import free_port, ray_cluster
    from webui.executors import RayExecutor

    torch.set_num_threads(1)

    def request(seed: int) -> Text2ImgRequest:
        return Text2ImgRequest(
            prompt="a red cube",
            seed=seed,
            model="embedded",
            width=64,
            height=64,
            num_inference_steps=args.steps,
            sampler="Euler",
        )

    report = {}
    cluster = contextlib.contextmanager(ray_cluster.__wrapped__)(free_port())
    with cluster as address:
        for replicas in (1, 2):
            pool = RayExecutor(
                address=address,
                min_replicas=replicas,
                max_replicas=replicas,
                threads=1,
                engine_options={"device": "cpu"},
            )
            began = time.perf_counter()
            pool.run(request(0))
            if replicas == 1:
                report["cold_pool_first_job_s"] = round(time.perf_counter() - began, 2)
            for _ in range(2):  # warm each replica
                with ThreadPoolExecutor(replicas) as threads:
                    list(threads.map(lambda n: pool.run(request(n)), range(replicas)))
            began = time.perf_counter()
            with ThreadPoolExecutor(replicas) as threads:
                list(threads.map(lambda n: pool.run(request(n)), range(args.jobs)))
            report[f"jobs_per_s_{replicas}_replica"] = round(args.jobs / (time.perf_counter() - began), 3)
            if replicas == 1:
                times = []
                for n in range(5):
                    began = time.perf_counter()
                    pool.run(request(n))
                    times.append(time.perf_counter() - began)
                report["ray_job_s"] = round(statistics.median(times), 3)
            pool.close()
    engine = Engine(device="cpu")
    engine.run(request(0))
    times = []
    for n in range(5):
        began = time.perf_counter()
        engine.run(request(n))
        times.append(time.perf_counter() - began)
    report["local_job_s"] = round(statistics.median(times), 3)
    report["ratio_2_vs_1"] = round(report["jobs_per_s_2_replica"] / report["jobs_per_s_1_replica"], 2)
    report["ray_vs_local"] = round(report["ray_job_s"] / report["local_job_s"], 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
