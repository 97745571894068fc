"""Handling a GitHub delivery in the worker: match it to the routines, check who caused it, fire once.

The web process took the delivery in (app.triggers.intake); the `handle_delivery` job (app.worker)
reads it back here: a follow-up of one of our draft pull requests, or each routine whose filters
pass (pull request paths applied to the files GitHub lists, the actor's access asked from GitHub),
fired once per (delivery, routine) and acknowledged on GitHub.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace

from arq.connections import ArqRedis

from app.core.domain import JSON, Routine, Run, RunState, Trigger, new_run_id
from app.core.errors import ForgeError, RunNotFound, StoreError
from app.store.delivery_log import DeliveryLog, DeliveryRecord
from app.store.runs import RedisStore
from app.triggers.dispatch import fire
from app.triggers.followups import follow_up, follow_up_trigger, refusal
from app.triggers.intake import CLAIM_TTL_S, claim_key, unpack_payload
from app.triggers.matching import WRITE_ACCESS, Match, check, github_trigger, paths_match
from app.triggers.tracking import Acknowledger

log = logging.getLogger(__name__)


@dataclass
class DeliveryDeps:
    """What handling a delivery touches; `ack` is None without a GitHub App (nothing is acknowledged)."""

    store: RedisStore
    pool: ArqRedis
    routines: Callable[[], Iterable[Routine]]
    ack: Acknowledger | None = None
    changed_files: Callable[[str, JSON], Awaitable[list[str]]] | None = None  # (event, payload) → file names
    permission: Callable[[str, str, JSON], Awaitable[str]] | None = None  # (repo, login, payload) → admin/write/…


async def process_delivery(deps: DeliveryDeps, guid: str) -> list[Run]:
    """Match the stored delivery against the routines, fire each match once, acknowledge on GitHub, then
    drop the raw payload (the runs keep what they need; the claim stays, so a redelivery is still refused).
    A failure before the end keeps it, so the retried job finds it."""
    runs = await _process(deps, guid)
    await deps.store.redis.delete(claim_key(guid) + ":payload")
    return runs


async def _process(deps: DeliveryDeps, guid: str) -> list[Run]:
    redis = deps.store.redis
    event_raw, body = await redis.mget([claim_key(guid), claim_key(guid) + ":payload"])
    if event_raw is None or body is None:
        log.warning("delivery %s: nothing stored (expired or never claimed); skipped", guid)
        return []
    event = event_raw.decode()
    payload = json.loads(unpack_payload(body))
    record = DeliveryRecord(
        guid,
        event,
        "no match",
        action=str(payload.get("action") or ""),
        repo=str((payload.get("repository") or {}).get("full_name") or ""),
        sender=str((payload.get("sender") or {}).get("login") or ""),
    )
    runs = await _handle(deps, guid, event, payload, record)
    record.fired = {run.routine: run.id for run in runs}
    record.why.update({run.routine: run.error or "refused" for run in runs if run.state is RunState.CANCELLED})
    record.outcome = "fired" if any(run.state is not RunState.CANCELLED for run in runs) else record.outcome
    if runs and record.outcome != "fired":
        record.outcome = "refused"
    try:
        await DeliveryLog(redis, deps.store.prefix).record(record)
    except StoreError as exc:
        log.warning("delivery %s: not written to the delivery log: %s", guid, exc)
    return runs


async def _handle(deps: DeliveryDeps, guid: str, event: str, payload: JSON, record: DeliveryRecord) -> list[Run]:
    routines = list(deps.routines())
    wanted = follow_up(event, payload, {r.name: r for r in routines})
    if wanted is not None:
        why = refusal(wanted, await _run_or_none(deps.store, wanted.parent_run))
        login = str((payload.get("sender") or {}).get("login") or "")
        level = await _permission(deps, wanted.repo, login, payload) if why is None else ""
        if why is None and level not in WRITE_ACCESS:
            why = f"{login!r} has {level} access to {wanted.repo}, not write"
        if why is not None:
            log.warning("delivery %s (%s): follow-up of %s refused: %s", guid, event, wanted.branch, why)
            record.why[wanted.routine.name] = f"follow-up refused: {why}"
            return []
        trigger = follow_up_trigger(github_trigger(event, payload, guid), wanted)
        run = await _fire_once(deps, guid, Match(wanted.routine, wanted.repo, ("follow-up",)), trigger)
        if deps.ack is not None:
            await deps.ack.acknowledge(trigger, [run] if run.state is not RunState.CANCELLED else [], [])
        return [run]
    matches = []
    for routine in routines:
        result = check(routine, event, payload)
        if isinstance(result, str):
            log.debug("delivery %s (%s): routine %s %s", guid, event, routine.name, result)
            record.why[routine.name] = result
        else:
            matches.append(result)
    matches = await _apply_paths(deps, guid, event, payload, matches, record.why)
    matches = await _apply_actors(deps, guid, payload, matches, record.why)
    if not matches:
        log.info("delivery %s (%s.%s): no routine wants it; ignored", guid, event, payload.get("action") or "")
        return []
    trigger = github_trigger(event, payload, guid)
    runs = [await _fire_once(deps, guid, found, trigger) for found in matches]
    if deps.ack is not None:
        started = [run for run in runs if run.state is not RunState.CANCELLED]
        refused = [(run.routine, run.error or "refused") for run in runs if run.state is RunState.CANCELLED]
        await deps.ack.acknowledge(trigger, started, refused)
    return runs


async def _run_or_none(store: RedisStore, run_id: str) -> Run | None:
    try:
        return await store.get_run(run_id)
    except RunNotFound:
        return None


async def _apply_paths(
    deps: DeliveryDeps, guid: str, event: str, payload: JSON, matches: list[Match], why: dict[str, str]
) -> list[Match]:
    """Apply the `paths` filters a pull request's payload cannot answer to the files GitHub lists for it
    (listed once per delivery). If they cannot be listed, the routine fires with a note: a missed run is
    worse than an extra one, and the note says the filter was not applied."""
    if not any(m.paths for m in matches):
        return matches
    files: list[str] | str
    if deps.changed_files is None:
        files = "no GitHub App to list the pull request's files"
    else:
        try:
            files = await deps.changed_files(event, payload)
        except ForgeError as exc:
            files = str(exc)
    kept = []
    for found in matches:
        if not found.paths:
            kept.append(found)
        elif isinstance(files, str):
            kept.append(replace(found, paths=(), notes=(*found.notes, f"paths filter not applied: {files}")))
        elif paths_match(found.paths, files):
            kept.append(replace(found, paths=()))
        else:
            log.info("delivery %s: routine %s: no changed file matches paths", guid, found.routine.name)
            why[found.routine.name] = "no changed file matches paths"
    return kept


async def _apply_actors(
    deps: DeliveryDeps, guid: str, payload: JSON, matches: list[Match], why: dict[str, str]
) -> list[Match]:
    """Keep the CI-event matches whose actor GitHub says has write access to the repository (asked once
    per actor and repository). Without a GitHub App, or when GitHub cannot say, nothing fires: a run
    an untrusted actor caused is worse than a missed one, and the log says why."""
    known: dict[tuple[str, str], str] = {}
    kept = []
    for found in matches:
        if found.actor is None:
            kept.append(found)
            continue
        key = (found.repo, found.actor)
        if key not in known:
            known[key] = await _permission(deps, found.repo, found.actor, payload)
        if known[key] in found.access:
            kept.append(replace(found, actor=None))
        else:
            why[found.routine.name] = f"{found.actor!r} has {known[key]} access to {found.repo}, too little"
            log.warning(
                "delivery %s: routine %s not fired: %r has %s access to %s, too little (name them in authors to allow)",
                guid,
                found.routine.name,
                found.actor,
                known[key],
                found.repo,
            )
    return kept


async def _permission(deps: DeliveryDeps, repo: str, login: str, payload: JSON) -> str:
    if not login:
        return "no known"
    if deps.permission is None:
        return "unknown (no GitHub App to ask)"
    try:
        return await deps.permission(repo, login, payload)
    except ForgeError as exc:
        return f"unknown ({exc})"


async def _fire_once(deps: DeliveryDeps, guid: str, found: Match, trigger: Trigger) -> Run:
    """Fire `found` with a run id fixed per (delivery, routine) before the first try: a retried job
    (after a crash or a Redis failure) starts the same run, never a second one."""
    for note in found.notes:
        log.info("delivery %s: routine %s: %s", guid, found.routine.name, note)
    redis = deps.store.redis
    fired_key = claim_key(guid) + ":fired"
    run_id = new_run_id()
    if await redis.hsetnx(fired_key, found.routine.name, run_id):  # type: ignore[misc]
        await redis.expire(fired_key, CLAIM_TTL_S)
    else:
        run_id = (await redis.hget(fired_key, found.routine.name)).decode()  # type: ignore[misc]
    run = await fire(deps.store, deps.pool, found.routine, trigger, repo=found.repo, run_id=run_id)
    log.info("delivery %s: routine %s → run %s (%s)", guid, found.routine.name, run.id, run.state.value)
    return run
