from __future__ import annotations

import glob
import os
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import make_url, text

from storage import Gallery, NewGeneration
from storage.db import make_engine

POSTGRES_URL_ENV = "ATELIER_TEST_POSTGRES_URL"


def _postgres_bin_dir() -> Path | None:
    """A directory holding both initdb and pg_ctl: PATH first, then Debian's versioned ones, newest first."""
    candidates: list[Path] = []
    on_path = shutil.which("initdb")
    if on_path:
        candidates += [Path(on_path).parent, Path(os.path.realpath(on_path)).parent]

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", Path(path).parent.name))

    candidates += [Path(d) for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)]
    for directory in candidates:
        if os.access(directory / "initdb", os.X_OK) and os.access(directory / "pg_ctl", os.X_OK):
            return directory
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL URL: $ATELIER_TEST_POSTGRES_URL, or a throwaway server of our own.

    The throwaway cluster lives in a temporary directory, trusts local connections
    and listens only on a Unix socket in that directory (no TCP at all). It is
    stopped and deleted at the end of the session.
    """
    given = os.environ.get(POSTGRES_URL_ENV)
    if given:
        yield given
        return

    bin_dir = _postgres_bin_dir()
    if bin_dir is None:
        pytest.fail(
            f"PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin: "
            f"install Debian's postgresql package (`make postgres`) or set {POSTGRES_URL_ENV}"
        )
    as_user: list[str] = []
    owner: str | None = None
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        runuser = shutil.which("runuser")
        if runuser is None:
            pytest.fail("running as root, the PostgreSQL server needs `runuser` to drop to the postgres user")
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root, the PostgreSQL server needs a `postgres` system user to run as")
        as_user = [runuser, "-u", "postgres", "--"]
        owner = "postgres"

    # Short and under the system temp dir: a Unix socket path may not exceed ~107 bytes.
    base = tempfile.gettempdir()
    if len(base) > 60 and os.path.isdir("/tmp"):
        base = "/tmp"
    root = Path(tempfile.mkdtemp(prefix="atelier-pg-", dir=base))
    data, log = root / "data", root / "server.log"
    port = _free_port()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*as_user, *args], cwd=root, capture_output=True, text=True, timeout=120)

    started = False
    try:
        if owner:
            shutil.chown(root, user=owner)
        init = run(
            str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
            "--encoding=UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        if init.returncode != 0:
            pytest.fail(f"initdb failed ({init.returncode}):\n{init.stdout}\n{init.stderr}")
        options = f"-k {root} -p {port} -c listen_addresses='' -c fsync=off -c full_page_writes=off"
        start = run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start")
        started = True
        if start.returncode != 0:
            server_log = log.read_text(errors="replace") if log.exists() else ""
            pytest.fail(f"pg_ctl start failed ({start.returncode}):\n{start.stdout}\n{start.stderr}\n{server_log}")
        yield f"postgresql+psycopg://postgres@/postgres?host={root}&port={port}"
    finally:
        if started:
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(postgres_url: str) -> Iterator[str]:
    """A URL whose tables live in a schema of this test's own, dropped afterwards."""
    schema = f"atelier_test_{uuid.uuid4().hex[:12]}"
    admin = make_engine(postgres_url)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield (
            make_url(postgres_url)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database on each backend the gallery supports."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/gallery.db"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def any_gallery(db_url: str, tmp_path: Path) -> Iterator[Gallery]:
    """A gallery on SQLite, then (a second run of the test) on PostgreSQL."""
    with Gallery(url=db_url, data_dir=tmp_path) as opened:
        yield opened


def _params(**overrides: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "task": "txt2img",
        "model": "embedded",
        "prompt": "a red circle",
        "negative_prompt": "blurry",
        "num_inference_steps": 20,
        "sampler": "Euler a",
        "guidance_scale": 7.0,
        "seed": 42,
        "width": 64,
        "height": 64,
        "batch_size": 2,
    }
    params.update(overrides)
    return params


@pytest.fixture
def new_generation() -> Callable[..., NewGeneration]:
    """A NewGeneration whose indexed columns agree with its params, as the studio builds them."""

    def build(*, user: str = "ann", parent_id: int | None = None, **overrides: Any) -> NewGeneration:
        params = _params(**overrides)
        return NewGeneration(
            user=user,
            task=params["task"],
            model=params["model"],
            params=params,
            prompt=params["prompt"],
            negative_prompt=params["negative_prompt"],
            seed=params["seed"],
            sampler=params["sampler"],
            num_inference_steps=params["num_inference_steps"],
            guidance_scale=params["guidance_scale"],
            width=params["width"],
            height=params["height"],
            batch_size=params["batch_size"],
            model_revision="main",
            parent_id=parent_id,
        )

    return build


@pytest.fixture
def gallery(tmp_path: Path) -> Iterator[Gallery]:
    with Gallery(url=f"sqlite:///{tmp_path}/gallery.db", data_dir=tmp_path) as opened:
        yield opened
