"""The one place that builds concrete objects from Settings."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from arq.connections import ArqRedis
from redis.exceptions import RedisError

from app.core.config import Settings
from app.core.domain import JSON, Routine, Run, is_local_repo
from app.core.errors import ConfigError, StoreError
from app.core.ports import Forge, ModelClient, SecretLookup, StoredSecret
from app.core.pricing import Pricer
from app.core.redact import Redactor
from app.forge.github import GitHubForge
from app.forge.github_outputs import GitHubOutputs
from app.forge.local import LocalForge
from app.git.mirrors import Mirrors
from app.models.anthropic import AnthropicModel
from app.routines.catalog import ApiRoutines, RoutineCatalog
from app.run.context import Reporting, RunnerDeps, RunSettings
from app.run.notify import notify, outcome_text
from app.run.starts import Starts
from app.sandbox.boundary import Boundaries
from app.sandbox.bwrap import sandbox_available
from app.sandbox.egress.policy import SystemResolver
from app.sandbox.images import ImageStore
from app.store import queue
from app.store.cancels import CancelFlags
from app.store.memory import RedisMemoryStore
from app.store.metrics import RedisMetrics
from app.store.runs import RedisStore
from app.store.vault import Vault, secret_key
from app.triggers.intake import DeliveryIntake
from app.triggers.tracking import update_tracking_comment

log = logging.getLogger(__name__)


@dataclass
class Services:
    """Long-lived resources of one process, built at startup and closed at shutdown."""

    settings: Settings
    store: RedisStore
    pool: ArqRedis
    catalog: RoutineCatalog
    mirrors: Mirrors
    metrics: RedisMetrics
    github: GitHubForge | None = None
    _model: ModelClient | None = None
    _sandbox_checked: bool = False
    _deliveries: DeliveryIntake | None = None
    _api_routines: ApiRoutines | None = None
    _boundaries: Boundaries | None = None
    _own_redactor: Redactor | None = None
    starts: Starts = field(default_factory=Starts)
    _model_made: asyncio.Lock = field(default_factory=asyncio.Lock)
    make_model: Callable[..., AnthropicModel] = AnthropicModel  # what makes the model client (tests note it)
    _stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    def forge_for(self, repo: str) -> Forge:
        if is_local_repo(repo):
            return LocalForge(root=Path.cwd())
        if self.github is None:
            raise ConfigError(
                f"repository {repo!r} is on GitHub but no GitHub App is configured; set GITHUB_APP_ID and "
                "GITHUB_APP_PRIVATE_KEY (or give the routine a local path as `repo:`)"
            )
        return self.github

    @property
    def api_routines(self) -> ApiRoutines:
        if self._api_routines is None:
            self._api_routines = ApiRoutines(self.store.redis, self.store.prefix)
        return self._api_routines

    async def refresh_routines(self) -> None:
        """Bring in the routines created, changed or deleted through the API (by any process). While Redis
        is unreachable the last ones read stay (what needs Redis next says it is down)."""
        try:
            await self.api_routines.refresh(self.catalog)
        except (RedisError, OSError) as exc:
            log.warning("could not read the API routines: Redis failed (%s); using the last ones read", exc)

    def deliveries(self) -> DeliveryIntake:
        """The web process's batched delivery enqueue, with connections of its own (closed with these)."""
        if self._deliveries is None:
            self._deliveries = DeliveryIntake(self.store.redis)
        return self._deliveries

    async def model(self) -> ModelClient:
        """The process's one model client. It is made in a thread: the SDK reads the system's trust store
        as it makes its client (0.2 s of CPU), which on the event loop would stop every run of the worker.
        A worker makes it at startup, so its first run does not wait for it either."""
        if self._model is None:
            async with self._model_made:
                if self._model is None:
                    s = self.settings
                    client = await asyncio.to_thread(
                        self.make_model,
                        api_key=s.require_anthropic(),
                        base_url=s.anthropic_base_url,
                        max_retries=s.model_max_retries,
                        timeout_s=max(s.http_timeout_s, 600.0),
                    )
                    self._model = await self._stack.enter_async_context(client)
        return self._model

    def boundaries(self) -> Boundaries:
        """The process's one Boundaries: its upstream TLS context (the system's trust store, read once)
        serves every run's egress proxy."""
        if self._boundaries is None:
            self._boundaries = self._new_boundaries()
        return self._boundaries

    def _new_boundaries(self) -> Boundaries:
        s = self.settings
        return Boundaries(
            kind=s.sandbox,
            max_output_bytes=s.tool_output_max_bytes,
            vault=self.vault(),
            resolver=SystemResolver(overrides=s.egress_hosts),
            upstream_ca_file=s.egress_ca_file,
        )

    def vault(self) -> Vault | None:
        """The vault, when ROUTINES_SECRET_KEY is set (routines without secrets need none)."""
        if self.settings.secret_key is None:
            return None
        return Vault(self.pool, secret_key(self.settings.secret_key))

    def redactor(self) -> Redactor:
        """A fresh redactor that already knows this process's own secrets: a child of one redactor of
        them, so that their many forms are compiled once per process rather than once per run."""
        if self._own_redactor is None:
            own = Redactor()
            for name, value in self.settings.own_secrets():
                own.add(name, value)
            self._own_redactor = own
        return self._own_redactor.child()

    def check_sandbox(self) -> None:
        """Refuse to run agents in a sandbox that does not work here; warn loudly about `local`."""
        if self.settings.sandbox == "local":
            log.warning(
                "ROUTINES_SANDBOX=local: agent commands run UNSANDBOXED on this machine, with its network and files"
            )
            return
        problem = sandbox_available()
        if problem is not None:
            raise ConfigError(problem)

    async def runner_deps(self) -> RunnerDeps:
        s = self.settings
        if not self._sandbox_checked:
            await asyncio.to_thread(self.check_sandbox)  # runs bwrap once: off the event loop
            # the first run would otherwise read the trust store and compile the redactor on the loop
            await asyncio.to_thread(lambda: (self.boundaries(), self.redactor().text("warm")))
            self._sandbox_checked = True
        vault = self.vault()
        return RunnerDeps(
            store=self.store,
            routine=self.catalog.get,
            code=self,
            sandboxes=self.boundaries(),
            model=await self.model(),
            price=Pricer(s.prices),
            settings=RunSettings(
                s.data_dir / "runs",
                s.run_url,
                command_timeout_s=s.command_timeout_s,
                setups_dir=s.setups_folder,
                setup_cache_bytes=int(s.setup_cache_gb * 1024**3),
            ),
            reporting=Reporting(
                redactor=self.redactor,
                cancel_check=CancelFlags(self.store.redis, self.store.prefix).check,
                on_finished=self.on_run_finished,
                notify=self.notify,
            ),
            memory_store=RedisMemoryStore(self.pool),
            connector_secret=vault,
            metrics=self.metrics,
            images=self.images() if s.sandbox == "bwrap" else None,
            starts=self.starts,
        )

    def images(self) -> ImageStore:
        """The environments' images this worker has pulled (data_dir/environments/images)."""
        s = self.settings
        return ImageStore(s.images_folder, insecure=s.insecure_registries, cap_bytes=int(s.image_cache_gb * 1024**3))

    @property
    def workspaces(self) -> Mirrors:
        return self.mirrors

    def outputs_for(self, forge: Forge) -> GitHubOutputs | None:
        """What the forge can deliver beside a branch: reviews and issues (GitHub only)."""
        return GitHubOutputs(forge) if isinstance(forge, GitHubForge) else None

    async def notify(self, routine: Routine, run: Run, links: list[tuple[str, str]]) -> list[JSON]:
        """Post the run's outcome to the routine's `outputs.notify` webhooks (URLs are vault secrets)."""
        vault = self.vault()
        secrets: SecretLookup = vault if vault is not None else _NoVault()
        text = outcome_text(run, self.settings.run_url(run.id), links)
        results = await notify(
            routine.outputs.get("notify") or [], text, secrets, timeout_s=self.settings.http_timeout_s
        )
        return [{"target": r.target, "ok": r.ok, "reason": r.reason} for r in results]

    async def on_run_finished(self, run: Run) -> None:
        """Tell the people who triggered the run how it ended (the tracking comment, if there is one)."""
        if self.github is not None:
            await update_tracking_comment(self.github, self.store, run, self.settings.run_url(run.id))

    async def close(self) -> None:
        await self.metrics.close()
        await self.mirrors.settle(spares=False)
        await self._stack.aclose()
        await self.pool.aclose()


class _NoVault:
    async def get(self, name: str) -> StoredSecret:
        raise ConfigError(f"notifications need the vault for {name}; set ROUTINES_SECRET_KEY")


async def build(settings: Settings, *, check_redis: bool = True) -> Services:
    """Build the clients; with `check_redis`, fail now with a clear StoreError when Redis is unreachable, and
    read the routines kept in Redis (API, `routines apply`) beside the files."""
    if settings.redis_url is None:
        raise ConfigError("REDIS_URL is not set; set it (e.g. redis://127.0.0.1:6379/0) or use `routines dev`")
    pool = queue.connect(settings.redis_url)
    store = RedisStore(pool)
    if check_redis:
        try:
            await store.ping()
        except StoreError:
            await pool.aclose()
            raise
    starts = Starts()
    mirrors = Mirrors(settings.data_dir, spares=settings.spares, before_background=starts.yield_to_others)
    catalog, metrics = RoutineCatalog(settings.routines_dir), RedisMetrics(pool)
    services = Services(settings, store, pool, catalog, mirrors, metrics, starts=starts)
    if settings.github_app_configured:
        forge = GitHubForge(
            settings.github_api_url,
            settings.github_app_id or "",
            settings.github_app_private_key or "",
            timeout_s=settings.http_timeout_s,
        )
        services.github = await services._stack.enter_async_context(forge)
    if check_redis:
        await services.refresh_routines()
    metrics.start()
    return services
