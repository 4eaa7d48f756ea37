"""Settings: read once at start-up from the environment (and ``.env``), then passed in.

Every name is ``ATELIER_<FIELD>``; the process environment wins over ``.env``.
Nothing else in the project reads the environment for configuration.
"""

from __future__ import annotations

import dataclasses
import getpass
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


class SettingsError(ValueError):
    """A setting with a value that cannot work; the message names it."""


def _read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise SettingsError(f"{path}:{number} must look like NAME=value; got {line!r}.")
        values[key.strip().removeprefix("export ").strip()] = value.strip().strip("'\"")
    return values


def _default_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, as in some containers
        return "studio"


@dataclass(frozen=True, kw_only=True)
class Settings:
    data_dir: Path = Path("data")
    database_url: str = ""  # empty: SQLite in the data folder
    model: str = "embedded"
    models_file: str = ""  # the model list (webui/models.py); empty: the data folder's models.json
    host: str = "127.0.0.1"
    port: int = 7860
    device: str = ""  # empty: CUDA, then Apple MPS, then CPU
    dtype: str = ""  # empty: float16 on GPUs, float32 on the CPU
    user: str = dataclasses.field(default_factory=_default_user)
    text_cache_size: int = 64
    gpu_workers: int = 1  # concurrent generations; one per GPU
    lease_seconds: float = 30.0  # a running job whose process stops renewing this long is interrupted
    queue_limit: int = 100  # queued jobs at most; beyond, a submit is refused and nothing is written
    max_models: int = 2  # models kept loaded; switching beyond this drops the least recently used
    loras_dir: str = ""  # empty: the data folder's loras/
    ip_adapter_sd15: str = ""  # a local IP-Adapter folder for SD 1.5 models; empty: the Hugging Face cache
    ip_adapter_sdxl: str = ""  # the same for SDXL
    attention: str = "sdpa"  # sdpa, math or xformers
    vae_tiling: str = "auto"  # auto (above 1536x1536), on or off
    cpu_offload: str = ""  # "1": keep model parts in CPU memory until used (small GPUs)
    compile: str = ""  # "1": torch.compile the UNet / transformer
    # GPU levers (pipelines/devices.py; benchmarks/gpu.py measures each). Empty: the engine's default, off.
    compile_scope: str = ""  # whole or regional (the repeated blocks only: a far shorter first image)
    compile_mode: str = ""  # default, max-autotune-no-cudagraphs, reduce-overhead (CUDA graphs) or max-autotune
    channels_last: str = ""  # "1": the UNet in channels-last memory layout
    fuse_qkv: str = ""  # "1": fused query/key/value projections
    vae_upcast: str = ""  # auto (the VAE's config decides) or off (decode in the model's dtype)
    queue_limit_per_user: int = 10  # queued jobs of one user at most, so one person cannot fill the queue for all
    executor: str = "local"  # local: the engine in this process; ray: a Ray Serve pool (webui/executors.py)
    ray_address: str = ""  # HOST:PORT of a Ray cluster's head; empty: start Ray here with all of this machine's GPUs
    ray_min_replicas: int = 1  # replicas kept running while idle
    ray_max_replicas: int = 0  # replicas at most (one per GPU); 0: one per GPU of the cluster when the pool starts
    ray_threads: int = 0  # torch threads per replica; 0: torch's default (CPU-only pools and tests pin it)
    # Safe on a network (issue 17, docs/security.md).
    allow_anonymous: str = ""  # "1": serve beyond this machine with no account (everyone may do anything)
    admin_user: str = ""  # with admin_password_file: this admin account is made at start if missing
    admin_password_file: str = ""  # a file holding the first admin's password (a Compose secret)
    session_hours: float = 12.0  # a login lasts this long
    login_lock_after: int = 10  # failed logins in a row that lock a name until `atelier user unlock NAME`
    login_delay: float = 1.0  # seconds of back-off after the first slowed failure; doubles with each one
    trusted_proxies: str = ""  # proxies' addresses (comma-separated IPs or networks) whose X-Forwarded-For counts
    root_path: str = ""  # the path the studio is served under behind a proxy, e.g. /atelier
    adherence_model: str = ""  # a CLIP folder or cached hub id that scores prompt adherence; never downloaded

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser())
        if not 1 <= self.port <= 65535:
            raise SettingsError(f"ATELIER_PORT must be from 1 to 65535; got {self.port}.")
        if self.gpu_workers < 1:
            raise SettingsError(f"ATELIER_GPU_WORKERS must be at least 1; got {self.gpu_workers}.")
        if not self.lease_seconds > 0:  # the gallery also refuses more than a day (storage/queue.py)
            raise SettingsError(f"ATELIER_LEASE_SECONDS must be more than 0 seconds; got {self.lease_seconds:g}.")
        if self.queue_limit < 1:
            raise SettingsError(f"ATELIER_QUEUE_LIMIT must be at least 1; got {self.queue_limit}.")
        if self.queue_limit_per_user < 1:
            raise SettingsError(f"ATELIER_QUEUE_LIMIT_PER_USER must be at least 1; got {self.queue_limit_per_user}.")
        _check_pool(self)
        if self.max_models < 1:
            raise SettingsError(f"ATELIER_MAX_MODELS must be at least 1; got {self.max_models}.")
        _check_security(self)
        for name in ("cpu_offload", "compile", "channels_last", "fuse_qkv"):
            if getattr(self, name) not in ("", "0", "1"):
                raise SettingsError(f"ATELIER_{name.upper()} must be 1 (on) or 0 (off); got {getattr(self, name)!r}.")

    @property
    def loras_folder(self) -> Path:
        return Path(self.loras_dir).expanduser() if self.loras_dir else self.data_dir / "loras"

    def switches(self):
        """The engine's memory and speed switches (pipelines.devices.Switches)."""
        from pipelines.devices import Switches

        levers = {
            name: getattr(self, name) for name in ("compile_scope", "compile_mode", "vae_upcast") if getattr(self, name)
        }
        return Switches(
            attention=self.attention,
            vae_tiling=self.vae_tiling,
            cpu_offload=self.cpu_offload == "1",
            compile=self.compile == "1",
            channels_last=self.channels_last == "1",
            fuse_qkv=self.fuse_qkv == "1",
            **levers,
        )

    @property
    def anonymous_allowed(self) -> bool:
        return self.allow_anonymous == "1"

    @property
    def proxies(self) -> tuple[str, ...]:
        """The trusted proxies, each an IP address or network."""
        return tuple(filter(None, (part.strip() for part in self.trusted_proxies.split(","))))

    @property
    def gallery_url(self) -> str:
        """The database URL: the setting, or SQLite inside the data folder."""
        return self.database_url or f"sqlite:///{self.data_dir.resolve() / 'gallery.db'}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, env_file: Path | None = Path(".env")) -> Settings:
        values = _read_env_file(env_file) if env_file else {}
        values.update(os.environ if environ is None else environ)
        if values.get("ATELIER_ADMIN_PASSWORD"):
            # A password in the environment shows in `docker inspect`, /proc and crash reports.
            raise SettingsError(
                "ATELIER_ADMIN_PASSWORD is not read: put the password in a file and name it in "
                "ATELIER_ADMIN_PASSWORD_FILE."
            )
        fields: dict[str, object] = {}
        for field in dataclasses.fields(cls):
            raw = values.get(f"ATELIER_{field.name.upper()}")
            if raw is None or raw == "":
                continue
            if field.type in ("int", int):
                try:
                    fields[field.name] = int(raw)
                except ValueError:
                    raise SettingsError(f"ATELIER_{field.name.upper()} must be a whole number; got {raw!r}.") from None
            elif field.type in ("float", float):
                try:
                    fields[field.name] = float(raw)
                except ValueError:
                    raise SettingsError(f"ATELIER_{field.name.upper()} must be a number; got {raw!r}.") from None
            else:
                fields[field.name] = raw
        return cls(**fields)

    def replace(self, **changes: object) -> Settings:
        """These settings with command-line overrides; ``None`` keeps a value."""
        changes = {name: value for name, value in changes.items() if value is not None}
        return dataclasses.replace(self, **changes)


EXECUTORS = ("local", "ray")


def _check_pool(settings: Settings) -> None:
    if settings.executor not in EXECUTORS:
        raise SettingsError(f"ATELIER_EXECUTOR must be local or ray; got {settings.executor!r}.")
    if settings.ray_address:
        host, sep, port = settings.ray_address.rpartition(":")
        if not (sep and host and port.isdigit() and 1 <= int(port) <= 65535):
            raise SettingsError(
                f"ATELIER_RAY_ADDRESS must be HOST:PORT with a port from 1 to 65535; got {settings.ray_address!r}."
            )
    if settings.ray_min_replicas < 0:
        raise SettingsError(f"ATELIER_RAY_MIN_REPLICAS must be 0 or more; got {settings.ray_min_replicas}.")
    if settings.ray_max_replicas < 0:
        raise SettingsError(
            f"ATELIER_RAY_MAX_REPLICAS must be 0 (one per GPU) or more; got {settings.ray_max_replicas}."
        )
    if settings.ray_max_replicas and settings.ray_min_replicas > settings.ray_max_replicas:
        raise SettingsError(
            f"ATELIER_RAY_MIN_REPLICAS must be at most ATELIER_RAY_MAX_REPLICAS "
            f"({settings.ray_max_replicas}); got {settings.ray_min_replicas}."
        )
    if settings.ray_threads < 0:
        raise SettingsError(f"ATELIER_RAY_THREADS must be 0 (torch's default) or more; got {settings.ray_threads}.")


def _check_security(settings: Settings) -> None:
    if settings.allow_anonymous not in ("", "0", "1"):
        raise SettingsError(f"ATELIER_ALLOW_ANONYMOUS must be 1 (on) or 0 (off); got {settings.allow_anonymous!r}.")
    if bool(settings.admin_user) != bool(settings.admin_password_file):
        raise SettingsError("ATELIER_ADMIN_USER and ATELIER_ADMIN_PASSWORD_FILE must be set together.")
    if not 0 < settings.session_hours <= 24 * 366:
        raise SettingsError(
            f"ATELIER_SESSION_HOURS must be more than 0 and at most 8784; got {settings.session_hours:g}."
        )
    if not 2 <= settings.login_lock_after <= 1000:
        raise SettingsError(f"ATELIER_LOGIN_LOCK_AFTER must be from 2 to 1000; got {settings.login_lock_after}.")
    if not 0 < settings.login_delay <= 60:
        raise SettingsError(
            f"ATELIER_LOGIN_DELAY must be more than 0 and at most 60 seconds; got {settings.login_delay:g}."
        )
    for proxy in filter(None, (part.strip() for part in settings.trusted_proxies.split(","))):
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise SettingsError(
                f"ATELIER_TRUSTED_PROXIES must be IP addresses or networks separated by commas; got {proxy!r}."
            ) from None
    if settings.root_path and not settings.root_path.startswith("/"):
        raise SettingsError(f"ATELIER_ROOT_PATH must start with '/'; got {settings.root_path!r}.")
