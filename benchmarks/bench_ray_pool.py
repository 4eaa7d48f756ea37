"""Jobs per second through the Ray Serve pool with 1 and 2 CPU replicas, per-job time Ray vs local, cold start.

Starts its own Ray head on loopback (tests/webui/conftest.py's, stopped by
process id afterwards), then, in one run, on the embedded model at 64x64
with torch on one thread everywhere:

- the cold pool's time to its first job (deploy, replica start, model load, the job);
- jobs per second with 1 replica, then with 2, `--jobs` jobs sent as fast as
  the replicas take them (each replica warmed first);
- one job's time through the 1-replica pool against the same request run by
  an `Engine` in this process, in pairs, alternating which goes first.

Run from the repo root:
    .venv/bin/python benchmarks/bench_ray_pool.py [--jobs 16] [--pairs 7] [--steps 20]
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
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--pairs", type=int, default=7)
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

    def timed(run, seed: int) -> float:
        began = time.perf_counter()
        run(request(seed))
        return time.perf_counter() - began

    report: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d"),
        "cpus": os.cpu_count(),
        "torch_threads": 1,
        "jobs": args.jobs,
        "steps": args.steps,
    }
    began = time.perf_counter()
    cluster = contextlib.contextmanager(ray_cluster.__wrapped__)(free_port())
    with cluster as address:
        report["ray_head_start_s"] = round(time.perf_counter() - began, 2)
        for replicas in (1, 2):
            pool = RayExecutor(
                address=address,
                min_replicas=replicas,
                max_replicas=replicas,
                threads=1,
                engine_options={"device": "cpu"},
            )
            first = timed(pool.run, 0)
            if replicas == 1:
                report["cold_pool_first_job_s"] = round(first, 2)
            for _ in range(2):  # warm each replica
                with ThreadPoolExecutor(replicas) as threads:
                    list(threads.map(lambda n: pool.run(request(n)), range(replicas)))
            began = time.perf_counter()
            with ThreadPoolExecutor(replicas) as threads:
                list(threads.map(lambda n: pool.run(request(n)), range(args.jobs)))
            report[f"jobs_per_s_{replicas}_replica"] = round(args.jobs / (time.perf_counter() - began), 3)
            if replicas == 1:
                # The same request through the pool and here, in pairs, alternating which goes first.
                engine = Engine(device="cpu")
                engine.run(request(0))
                ray_times, local_times = [], []
                for n in range(args.pairs):
                    order = [(pool.run, ray_times), (engine.run, local_times)]
                    for run, times in order if n % 2 == 0 else reversed(order):
                        times.append(timed(run, n))
                report["ray_job_s"] = round(statistics.median(ray_times), 3)
                report["local_job_s"] = round(statistics.median(local_times), 3)
                report["ray_vs_local_pair_median"] = round(
                    statistics.median(r / lo for r, lo in zip(ray_times, local_times)), 3
                )
                del engine
            pool.close()
    report["ratio_2_vs_1"] = round(report["jobs_per_s_2_replica"] / report["jobs_per_s_1_replica"], 2)
    report["ray_vs_local"] = round(report["ray_job_s"] / report["local_job_s"], 3)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
