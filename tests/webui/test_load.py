"""The load test, reduced: four users send three requests each, all at once, to a launched app.

The same code as benchmarks/load_test.py (which runs 20 users x 10 requests
against `atelier serve`) with its invariants: every request ends in a result
or the queue-full message, every result is one row and one file of its own,
a refused request writes nothing. Here the GPU is first held busy (the `Gate`)
until every request has been queued or refused, so the order the queue
chose can be checked too: round robin between the users.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from gradio_client import Client

from storage import Users
from webui.app import launch
from webui.settings import Settings
from webui.studio import Studio

from .conftest import free_port, wait_until

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("benchmarks_load_test", REPO / "benchmarks" / "load_test.py")
load = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = load  # dataclasses look their module up there
_spec.loader.exec_module(load)

HOLDER = ("holder", "the holder's password")


class Held:
    """A launched studio whose GPU is held by one run until `release`, counting the requests that reach the queue."""

    def __init__(self, tmp_path: Path, users: dict[str, str], *, queue_limit: int) -> None:
        settings = Settings(data_dir=tmp_path / "data", user="ada", port=free_port(), queue_limit=queue_limit)
        self.studio = Studio.from_settings(settings)
        with Users(url=settings.gallery_url) as store:
            for name, password in {**users, HOLDER[0]: HOLDER[1]}.items():
                store.add_user(name, password)
        self.url = f"http://127.0.0.1:{settings.port}/"
        self.holding, self.released = threading.Event(), threading.Event()
        self.asked = 0
        engine, studio = self.studio.engine, self.studio
        run, enqueue = engine.run, studio.enqueue

        def held_run(request, *, progress=None, cancel=None, preview=None):
            if request.prompt.startswith("hold"):
                self.holding.set()
                self.released.wait(120)
            return run(request, progress=progress, cancel=cancel, preview=preview)

        def counted_enqueue(*args, **kwargs):
            try:
                return enqueue(*args, **kwargs)
            finally:
                self.asked += 1  # under the workers' lock: one enqueue at a time

        engine.run, studio.enqueue = held_run, counted_enqueue
        self.app = launch(self.studio, prevent_thread_lock=True, quiet=True)
        self.holder = Client(self.url, auth=HOLDER, verbose=False)
        self.hold = self.holder.submit("hold the GPU", "", "Euler", 2, 5.0, 64, 64, 1, 1, api_name="/txt2img")
        assert self.holding.wait(60)
        self.asked = 0

    def simulate(self, users: dict[str, str], requests: int) -> list:
        """Every user sends all its requests at once; the GPU is let go once each one is queued or refused."""
        ended: list = []
        thread = threading.Thread(
            target=lambda: ended.extend(load.simulate(self.url, users, requests, steps=3, burst=True))
        )
        thread.start()
        wait_until(lambda: self.asked == len(users) * requests, what="every request to reach the queue")
        self.released.set()
        thread.join(300)
        assert not thread.is_alive(), "a simulated user is still waiting"
        self.hold.result(timeout=60)
        return ended

    def close(self) -> None:
        self.released.set()
        self.holder.close()
        self.app.close()
        self.studio.close()


@pytest.fixture
def users() -> dict[str, str]:
    return load.accounts(4)


@pytest.fixture
def held(request: pytest.FixtureRequest, tmp_path: Path, users: dict[str, str]) -> Iterator[Held]:
    server = Held(tmp_path, users, queue_limit=request.param)
    yield server
    server.close()


@pytest.mark.parametrize("held", [100], indirect=True)
def test_four_users_at_once_get_their_own_results_in_turns(held: Held, users: dict[str, str]) -> None:
    outcomes = held.simulate(users, 3)

    assert len(outcomes) == 12 and all(o.record_id is not None for o in outcomes)
    assert load.check(held.studio.gallery, outcomes, users=users) == []
    # Round robin: the queue held all twelve at once, and each round of four starts gave every user one turn.
    records = sorted((held.studio.gallery.get(o.record_id) for o in outcomes), key=lambda r: r.started_at)
    order = [record.user for record in records]
    rounds = [order[start : start + 4] for start in (0, 4, 8)]
    assert sorted(rounds[0]) == sorted(users)
    assert rounds[0] == rounds[1] == rounds[2]
    figures = load.figures(held.studio.gallery, outcomes, wall_seconds=1.0)
    assert figures["results"] == 12 and figures["queue_full"] == figures["errors"] == 0
    assert figures["wait_p95_s"] >= figures["wait_p50_s"] > 0


@pytest.mark.parametrize("held", [5], indirect=True)
def test_beyond_the_queue_limit_a_request_gets_the_queue_full_message_and_writes_nothing(
    held: Held, users: dict[str, str]
) -> None:
    outcomes = held.simulate(users, 3)

    results = [o for o in outcomes if o.record_id is not None]
    refused = [o for o in outcomes if o.refused is not None]
    assert (len(results), len(refused)) == (5, 7)
    assert all("The queue is full (5 jobs waiting); try again in a minute." in o.refused for o in refused)
    assert load.check(held.studio.gallery, outcomes, users=users) == []
