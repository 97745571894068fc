"""Settings: the only place that reads the environment."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from app.core.errors import ConfigError
from app.core.pricing import Price, parse_prices


@dataclass(frozen=True)
class Settings:
    redis_url: str | None = None
    github_api_url: str = "https://api.github.com"
    github_app_id: str | None = None
    github_app_private_key: str | None = field(default=None, repr=False)
    github_webhook_secret: str | None = field(default=None, repr=False)
    anthropic_api_key: str | None = field(default=None, repr=False)
    anthropic_base_url: str | None = None
    routines_dir: Path = Path("routines")
    data_dir: Path = Path("data")
    api_token: str | None = field(default=None, repr=False)
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str = ""
    sandbox: str = "bwrap"
    poll_delay_ms: int = 50
    max_jobs: int = 4
    spares: int = 1
    job_timeout_s: int = 3 * 3600
    command_timeout_s: float = 600.0
    tool_output_max_bytes: int = 30_000
    model_max_retries: int = 4
    http_timeout_s: float = 30.0
    secret_key: str | None = field(default=None, repr=False)
    egress_hosts: dict[str, str] = field(default_factory=dict)
    egress_ca_file: Path | None = None
    prices: dict[str, Price] = field(default_factory=dict)
    max_runs_per_day: int | None = None
    schedule_tick_s: float = 5.0
    delivery_sweep_s: float = 300.0
    lease_s: float = 15.0
    reaper_s: float = 5.0
    max_resumes: int = 3
    log_format: str = "text"
    retention_days: float | None = None
    archive_dir: Path | None = None  # default: data_dir / "archive"
    insecure_registries: tuple[str, ...] = ()  # registries (host:port) reached over plain HTTP
    image_cache_gb: float = 20.0
    setup_cache_gb: float = 10.0

    @property
    def base_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"

    @property
    def github_app_configured(self) -> bool:
        return bool(self.github_app_id and self.github_app_private_key)

    def run_url(self, run_id: str) -> str:
        return f"{self.base_url}/runs/{run_id}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and check every setting; a bad value raises ConfigError naming the variable and the fix."""
        env = os.environ if env is None else env

        def text(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        def number(name: str, default: float, *, integer: bool = True, minimum: float = 0) -> float:
            raw = text(name)
            if raw is None:
                return default
            try:
                value = int(raw) if integer else float(raw)
            except ValueError:
                kind = "a whole number" if integer else "a number"
                raise ConfigError(f"{name}={raw!r} is not {kind}; set it to {kind} such as {default}") from None
            if value < minimum:
                raise ConfigError(f"{name}={raw!r} is too small; set it to at least {minimum}")
            return value

        key = text("GITHUB_APP_PRIVATE_KEY")
        key_path = text("GITHUB_APP_PRIVATE_KEY_PATH")
        if key and key_path:
            raise ConfigError("GITHUB_APP_PRIVATE_KEY and GITHUB_APP_PRIVATE_KEY_PATH are both set; keep only one")
        if key_path:
            try:
                key = Path(key_path).expanduser().read_text()
            except OSError as exc:
                raise ConfigError(
                    f"GITHUB_APP_PRIVATE_KEY_PATH={key_path!r} cannot be read ({exc.strerror}); "
                    "point it at the .pem file downloaded from the GitHub App settings"
                ) from None
        if key is not None:
            key = key.replace("\\n", "\n")
            if "PRIVATE KEY-----" not in key:
                source = "GITHUB_APP_PRIVATE_KEY_PATH" if key_path else "GITHUB_APP_PRIVATE_KEY"
                raise ConfigError(
                    f"{source} does not hold a PEM private key; use the .pem file from the GitHub App settings"
                )
        app_id = text("GITHUB_APP_ID")
        if app_id is not None and not app_id.isdigit():
            raise ConfigError(f"GITHUB_APP_ID={app_id!r} is not a number; copy the App ID from the App settings")
        if bool(app_id) != bool(key):
            missing = "GITHUB_APP_PRIVATE_KEY (or _PATH)" if app_id else "GITHUB_APP_ID"
            raise ConfigError(f"{missing} is not set; a GitHub App needs both its id and its private key")

        github_api_url = (text("GITHUB_API_URL") or cls.github_api_url).rstrip("/")
        if not github_api_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"GITHUB_API_URL={github_api_url!r} is not an http(s) URL; "
                "use https://api.github.com or https://HOST/api/v3 for GitHub Enterprise"
            )
        sandbox = text("ROUTINES_SANDBOX") or ("bwrap" if sys.platform == "linux" else "local")
        if sandbox not in ("local", "bwrap"):
            raise ConfigError(f"ROUTINES_SANDBOX={sandbox!r} is unknown; use 'bwrap' or 'local'")
        redis_url = text("REDIS_URL")
        if redis_url is not None and not redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"REDIS_URL={redis_url!r} is not a redis:// URL; e.g. redis://127.0.0.1:6379/0")

        log_format = (text("ROUTINES_LOG_FORMAT") or cls.log_format).lower()
        if log_format not in ("text", "json"):
            raise ConfigError(f"ROUTINES_LOG_FORMAT={log_format!r} is unknown; use 'text' or 'json'")
        cap = text("ROUTINES_MAX_RUNS_PER_DAY")
        keep = text("ROUTINES_RETENTION_DAYS")
        insecure = tuple(r.strip() for r in (text("ROUTINES_INSECURE_REGISTRIES") or "").split(",") if r.strip())
        for registry in insecure:
            if "/" in registry or " " in registry:
                raise ConfigError(
                    f"ROUTINES_INSECURE_REGISTRIES names {registry!r}; list registries as host:port, comma-separated"
                )
        return cls(
            log_format=log_format,
            insecure_registries=insecure,
            image_cache_gb=number("ROUTINES_IMAGE_CACHE_GB", cls.image_cache_gb, integer=False, minimum=0.1),
            setup_cache_gb=number("ROUTINES_SETUP_CACHE_GB", cls.setup_cache_gb, integer=False, minimum=0.01),
            retention_days=number("ROUTINES_RETENTION_DAYS", 0, integer=False, minimum=0.01) if keep else None,
            archive_dir=Path(folder) if (folder := text("ROUTINES_ARCHIVE_DIR")) else None,
            max_runs_per_day=int(number("ROUTINES_MAX_RUNS_PER_DAY", 0, minimum=1)) if cap else None,
            schedule_tick_s=number("ROUTINES_SCHEDULE_TICK_S", cls.schedule_tick_s, integer=False, minimum=0.1),
            delivery_sweep_s=number("ROUTINES_DELIVERY_SWEEP_S", cls.delivery_sweep_s, integer=False, minimum=10),
            lease_s=number("ROUTINES_LEASE_S", cls.lease_s, integer=False, minimum=0.3),
            reaper_s=number("ROUTINES_REAPER_S", cls.reaper_s, integer=False, minimum=0.1),
            max_resumes=int(number("ROUTINES_MAX_RESUMES", cls.max_resumes)),
            prices=parse_prices(text("ROUTINES_PRICES"), "ROUTINES_PRICES"),
            secret_key=text("ROUTINES_SECRET_KEY"),
            egress_hosts=_host_pins(text("ROUTINES_EGRESS_HOSTS")),
            egress_ca_file=Path(ca) if (ca := text("ROUTINES_EGRESS_CA_FILE")) else None,
            redis_url=redis_url,
            github_api_url=github_api_url,
            github_app_id=app_id,
            github_app_private_key=key,
            github_webhook_secret=text("GITHUB_WEBHOOK_SECRET"),
            anthropic_api_key=text("ANTHROPIC_API_KEY"),
            anthropic_base_url=text("ANTHROPIC_BASE_URL"),
            routines_dir=Path(text("ROUTINES_DIR") or "routines"),
            data_dir=Path(text("ROUTINES_DATA_DIR") or "data"),
            api_token=text("ROUTINES_API_TOKEN"),
            host=text("HOST") or cls.host,
            port=int(number("PORT", cls.port, minimum=1)),
            public_url=(text("ROUTINES_PUBLIC_URL") or "").rstrip("/"),
            sandbox=sandbox,
            poll_delay_ms=int(number("ROUTINES_POLL_DELAY_MS", cls.poll_delay_ms, minimum=1)),
            max_jobs=int(number("ROUTINES_MAX_JOBS", cls.max_jobs, minimum=1)),
            spares=int(number("ROUTINES_SPARES", cls.spares)),
            job_timeout_s=int(number("ROUTINES_JOB_TIMEOUT_S", cls.job_timeout_s, minimum=1)),
            command_timeout_s=number("ROUTINES_COMMAND_TIMEOUT_S", cls.command_timeout_s, integer=False),
            model_max_retries=int(number("ROUTINES_MODEL_MAX_RETRIES", cls.model_max_retries)),
        )

    @property
    def archive_folder(self) -> Path:
        """Where retention exports old runs (ROUTINES_ARCHIVE_DIR, else ROUTINES_DATA_DIR/archive)."""
        return self.archive_dir or self.data_dir / "archive"

    @property
    def images_folder(self) -> Path:
        """Where pulled environment images are unpacked, one folder per digest."""
        return self.data_dir / "environments" / "images"

    @property
    def setups_folder(self) -> Path:
        """Where the saved results of environments' setups are kept."""
        return self.data_dir / "environments" / "setups"

    def own_secrets(self) -> list[tuple[str, str]]:
        """(name, value) of every secret this process holds, for redaction."""
        named = (
            ("GITHUB_APP_PRIVATE_KEY", self.github_app_private_key),
            ("ANTHROPIC_API_KEY", self.anthropic_api_key),
            ("GITHUB_WEBHOOK_SECRET", self.github_webhook_secret),
            ("ROUTINES_API_TOKEN", self.api_token),
            ("ROUTINES_SECRET_KEY", self.secret_key),
        )
        return [(name, value) for name, value in named if value]

    def require_anthropic(self) -> str:
        if not self.anthropic_api_key:
            raise ConfigError(
                "ANTHROPIC_API_KEY is not set; set it to an API key from the Claude Console "
                "(or point ANTHROPIC_BASE_URL at a test server and set any value)"
            )
        return self.anthropic_api_key


def _host_pins(raw: str | None) -> dict[str, str]:
    """ROUTINES_EGRESS_HOSTS="api.internal=10.0.0.5,sentry.internal=10.0.0.6": trusted name → address pins."""
    pins: dict[str, str] = {}
    for item in (raw or "").split(","):
        if not item.strip():
            continue
        host, sep, address = item.partition("=")
        if not sep or not host.strip() or not address.strip():
            raise ConfigError(
                f"ROUTINES_EGRESS_HOSTS has {item.strip()!r}; write host=address pairs separated by commas"
            )
        pins[host.strip().lower()] = address.strip()
    return pins
