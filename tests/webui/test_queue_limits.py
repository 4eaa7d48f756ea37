"""The per-user queue limit beside the global one (ATELIER_QUEUE_LIMIT_PER_USER)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from pipelines.requests import Text2ImgRequest
from webui.settings import Settings, SettingsError
from webui.studio import QueueFull, Studio


def _request(seed: int) -> Text2ImgRequest:
    return Text2ImgRequest(prompt="a cube", seed=seed, model="embedded", width=64, height=64, num_inference_steps=2)


def _send(studio: Studio, user: str, seed: int) -> bool:
    try:
        studio.enqueue(_request(seed), user=user)
    except QueueFull:
        return False
    return True


def test_twenty_users_sending_ten_each_at_once_are_all_queued(tmp_path) -> None:
    studio = Studio.from_settings(
        Settings(data_dir=tmp_path / "data", user="ada", queue_limit=200, queue_limit_per_user=10)
    )
    try:
        with ThreadPoolExecutor(8) as pool:
            sent = list(pool.map(lambda n: _send(studio, f"user{n % 20}", n), range(200)))
        assert all(sent)
        assert studio.gallery.count(status="queued") == 200
    finally:
        studio.close()


def test_one_user_cannot_fill_the_queue_for_all(tmp_path) -> None:
    studio = Studio.from_settings(Settings(data_dir=tmp_path / "data", user="ada"))  # defaults: 100 and 10 each
    try:
        sent = [_send(studio, "greedy", n) for n in range(150)]
        assert sum(sent) == 10 and all(sent[:10])
        with pytest.raises(
            QueueFull,
            match=r"^You have 10 jobs waiting, the most one person may queue; try again "
            r"when one has run\.$",
        ):
            studio.enqueue(_request(999), user="greedy")
        assert studio.gallery.count(status="queued") == 10
        assert _send(studio, "other", 1)  # everyone else still gets in
    finally:
        studio.close()


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("ATELIER_QUEUE_LIMIT_PER_USER", "0", "ATELIER_QUEUE_LIMIT_PER_USER must be at least 1; got 0."),
        ("ATELIER_EXECUTOR", "gpu", "ATELIER_EXECUTOR must be local or ray; got 'gpu'."),
        (
            "ATELIER_RAY_ADDRESS",
            "head",
            "ATELIER_RAY_ADDRESS must be HOST:PORT with a port from 1 to 65535; got 'head'.",
        ),
        ("ATELIER_RAY_MAX_REPLICAS", "-1", "ATELIER_RAY_MAX_REPLICAS must be 0 (one per GPU) or more; got -1."),
    ],
)
def test_pool_and_limit_settings_are_checked(variable, value, message) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({variable: value}, env_file=None)
    assert str(raised.value) == message
