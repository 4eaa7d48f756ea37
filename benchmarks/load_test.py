"""Load test: simulated users, each a logged-in gradio_client session, against a studio on loopback.

    .venv/bin/python benchmarks/load_test.py [--users 20] [--requests 10] [--steps 20]
        [--queue-limit 100] [--gpu-workers 1] [--burst] [--json]

Starts `atelier serve` on a free port with a scratch data folder and one
account per user, on the embedded model. Each user is a thread with its own
Client: by default it sends its requests one after another, waiting for each
result, as a person at a tab does; with --burst it sends them all at once, as
a script does. Then it checks what the issue asks of the studio under load:

- every request ends in a result or in the queue-full message, nothing else;
- every result is exactly one generation row of that user and prompt, with
  one output image whose file holds exactly the bytes its sha256 names, and
  the data folder holds those files and nothing else (pending/ is empty);
- a refused request wrote nothing; the database passes integrity_check.

It reports throughput (results per second of wall time) and p50/p95 of the
wait (queued -> started, from the records) and of the whole request as the
client saw it. tests/webui/test_load.py runs the same code on a reduced load.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

QUEUE_FULL = "The queue is full"
PROMPT = "a red circle on a blue background"


@dataclass(frozen=True)
class Outcome:
    """How one request ended, as its user saw it."""

    user: str
    number: int
    prompt: str
    seed: int
    seconds: float  # from sending it to its answer
    record_id: int | None = None  # a result
    refused: str | None = None  # the queue-full message
    error: str | None = None  # anything else: a failure of the studio


def accounts(count: int) -> dict[str, str]:
    return {f"user{number:02d}": f"password of user{number:02d}" for number in range(1, count + 1)}


def simulate(url: str, users: dict[str, str], requests: int, *, steps: int, burst: bool = False) -> list[Outcome]:
    """Every user sends `requests` text-to-image requests on its own session; how each one ended."""
    from gradio_client import Client

    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def ask(client: Client, user: str, number: int) -> tuple[str, int, Any]:
        prompt = f"{PROMPT}, {user} request {number}"
        seed = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16)  # a seed of its own: a file of its own
        job = client.submit(prompt, "", "Euler", steps, 5.0, 64, 64, seed, 1, api_name="/txt2img")
        # When the answer came, not when this thread got round to reading it (a burst reads them in order).
        job.add_done_callback(lambda _: setattr(job, "answered_at", time.perf_counter()))
        return prompt, seed, job

    def answer(user: str, number: int, prompt: str, seed: int, job: Any, sent: float) -> Outcome:
        try:
            _, _, details = job.result()
        except Exception as error:  # gradio_client's AppError carries the handler's message
            message = str(error)
            ended = getattr(job, "answered_at", time.perf_counter()) - sent
            if QUEUE_FULL in message:
                return Outcome(user, number, prompt, seed, ended, refused=message)
            return Outcome(user, number, prompt, seed, ended, error=f"{type(error).__name__}: {message}")
        return Outcome(
            user, number, prompt, seed, getattr(job, "answered_at", time.perf_counter()) - sent, record_id=details["id"]
        )

    def person(user: str, password: str) -> None:
        client = Client(url, auth=(user, password), verbose=False)
        try:
            ended = []
            if burst:
                sent = [(number, time.perf_counter(), *ask(client, user, number)) for number in range(requests)]
                ended = [answer(user, number, prompt, seed, job, at) for number, at, prompt, seed, job in sent]
            else:
                for number in range(requests):
                    at = time.perf_counter()
                    prompt, seed, job = ask(client, user, number)
                    ended.append(answer(user, number, prompt, seed, job, at))
            with lock:
                outcomes.extend(ended)
        finally:
            client.close()

    threads = [threading.Thread(target=person, args=item, name=item[0]) for item in users.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(outcomes, key=lambda outcome: (outcome.user, outcome.number))


def check(gallery: Any, outcomes: Iterable[Outcome], *, users: Iterable[str]) -> list[str]:
    """What went wrong, one sentence each; empty when every invariant holds."""
    outcomes = list(outcomes)
    problems = [f"{o.user} request {o.number} ended in an error: {o.error}" for o in outcomes if o.error]
    problems += [
        f"{o.user} request {o.number} had no answer"
        for o in outcomes
        if o.record_id is None and o.refused is None and o.error is None
    ]
    results = [o for o in outcomes if o.record_id is not None]
    ids = [o.record_id for o in results]
    if len(set(ids)) != len(ids):
        problems.append("two requests were answered with the same record")
    shas = set()
    for outcome in results:
        record = gallery.get(outcome.record_id)
        if (record.status, record.user, record.prompt, record.seed) != (
            "succeeded",
            outcome.user,
            outcome.prompt,
            outcome.seed,
        ):
            problems.append(f"record {record.id} is not {outcome.user}'s succeeded request {outcome.number}")
        if [image.role for image in record.images] != ["output"]:
            problems.append(f"record {record.id} has images {[image.role for image in record.images]}, not one output")
            continue
        image = record.images[0]
        path = gallery.path(image.path)
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != image.sha256:
            problems.append(f"record {record.id}'s file {image.path} is missing or not its bytes")
        shas.add(image.sha256)
    # Rows: one per result and none for a refused request.
    for user in users:
        rows, answered = gallery.count(user=user), sum(o.user == user for o in results)
        if rows != answered:
            problems.append(f"the gallery holds {rows} rows of {user}'s for {answered} results")
    # Files: one per result, and none that no row names (a run of anyone else's has its own).
    data = gallery.data_dir
    files = {p.stem for p in (data / "images").rglob("*.png")}
    if shas - files:
        problems.append(f"{len(shas - files)} results have no file under images/")
    orphans = files - _named(gallery)
    if orphans:
        problems.append(f"images/ holds {len(orphans)} files that no row names")
    return problems + left_pending(data)


def _named(gallery: Any) -> set[str]:
    """The sha256 of every image some row of the gallery names."""
    named: set[str] = set()
    before = None
    while page := gallery.list(limit=1000, before_id=before):
        named.update(image.sha256 for record in page for image in record.images)
        before = page[-1].id
    return named


def left_pending(data: Path) -> list[str]:
    """Files a landing left behind; look before a Gallery opens the folder, since its recovery clears them."""
    pending = sorted(p.name for p in (data / "pending").iterdir())
    return [f"pending/ still holds {pending}"] if pending else []


def figures(gallery: Any, outcomes: Iterable[Outcome], *, wall_seconds: float) -> dict[str, Any]:
    """Throughput and waits: what goes in docs/queue.md."""
    outcomes = list(outcomes)
    results = [o for o in outcomes if o.record_id is not None]
    records = [gallery.get(o.record_id) for o in results]
    waits = [(r.started_at - r.created_at).total_seconds() for r in records]
    answered = [o.seconds for o in results]
    return {
        "requests": len(outcomes),
        "results": len(results),
        "queue_full": sum(o.refused is not None for o in outcomes),
        "errors": sum(o.error is not None for o in outcomes),
        "wall_s": round(wall_seconds, 1),
        "throughput_per_s": round(len(results) / wall_seconds, 2) if wall_seconds else 0.0,
        "wait_p50_s": _percentile(waits, 50),
        "wait_p95_s": _percentile(waits, 95),
        "request_p50_s": _percentile(answered, 50),
        "request_p95_s": _percentile(answered, 95),
        "run_p50_s": _percentile([r.timings.get("run_ms", 0) / 1000 for r in records], 50),
        "queue_full_p50_s": _percentile([o.seconds for o in outcomes if o.refused is not None], 50),
    }


def _percentile(values: list[float], percent: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 2)
    return round(statistics.quantiles(values, n=100, method="inclusive")[percent - 1], 2)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(data: Path, port: int, args: argparse.Namespace) -> subprocess.Popen:
    import httpx

    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "ATELIER_QUEUE_LIMIT": str(args.queue_limit),
        "ATELIER_GPU_WORKERS": str(args.gpu_workers),
    }
    atelier = Path(sys.executable).with_name("atelier")
    server = subprocess.Popen(
        [str(atelier), "serve", "--data", str(data), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"atelier serve exited with {server.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).is_success:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.kill()
    raise SystemExit("atelier serve did not answer within three minutes")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--requests", type=int, default=10, help="per user")
    parser.add_argument("--steps", type=int, default=20, help="num_inference_steps (the embedded model's default)")
    parser.add_argument("--queue-limit", type=int, default=100)
    parser.add_argument("--gpu-workers", type=int, default=1)
    parser.add_argument("--burst", action="store_true", help="each user sends all its requests at once")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from storage import Gallery, Users

    with tempfile.TemporaryDirectory() as scratch:
        data, port = Path(scratch) / "data", _free_port()
        data.mkdir()
        users = accounts(args.users)
        gallery_url = f"sqlite:///{data.resolve() / 'gallery.db'}"
        with Users(url=gallery_url) as store:
            for name, password in users.items():
                store.add_user(name, password)
        server = _serve(data, port, args)
        try:
            started = time.perf_counter()
            outcomes = simulate(f"http://127.0.0.1:{port}/", users, args.requests, steps=args.steps, burst=args.burst)
            wall = time.perf_counter() - started
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        leftovers = left_pending(data)
        with Gallery(url=gallery_url, data_dir=data) as gallery:
            problems = leftovers + check(gallery, outcomes, users=users)
            report = figures(gallery, outcomes, wall_seconds=wall)
        import sqlite3

        with sqlite3.connect(data / "gallery.db") as connection:
            integrity = connection.execute("PRAGMA integrity_check").fetchone()[0]
        if integrity != "ok":
            problems.append(f"integrity_check says {integrity}")
    report.update(
        users=args.users,
        per_user=args.requests,
        steps=args.steps,
        queue_limit=args.queue_limit,
        gpu_workers=args.gpu_workers,
        mode="burst" if args.burst else "one after another",
        problems=problems,
    )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:>18}: {value}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
