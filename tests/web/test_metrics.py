"""GET /metrics: what every process counted, read back through prometheus_client's own parser."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from app.core.config import Settings
from app.testing.anthropic_server import Script, Turn, bash, edit_str_replace, text
from app.testing.github_hooks import deliver
from app.testing.serve import serve_in_thread
from app.testing.stack import API_TOKEN, Stack, WorkerThread, running_stack
from app.testing.webhook_stack import SECRET
from app.web.app import create_app
from tests.support.paths import PAYLOADS

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

CALC = "def add(a, b):\n    return a - b\n"
TRIAGE = """---
name: triage
repo: "*"
on:
  github:
    issues: {types: [labeled], labels: [bug]}
---
Triage the issue.
"""


def routine_file(folder: Path, name: str, prompt: str, extra: str = "") -> None:
    (folder / f"{name}.md").write_text(f"---\nname: {name}\nrepo: acme/calc\non:\n  api: true\n{extra}---\n{prompt}\n")


def scrape(url: str, token: str | None = API_TOKEN) -> Samples:
    """Every sample of GET /metrics, by (sample name, labels), parsed as Prometheus parses it."""
    headers = {"authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(f"{url}/metrics", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def of(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name and v}


def issue_opened(stack: Stack) -> dict[str, Any]:
    data: dict[str, Any] = copy.deepcopy(json.loads((PAYLOADS / "issues.opened.json").read_text()))
    data["repository"]["full_name"] = "acme/calc"
    data["installation"] = {"id": stack.installation, "node_id": "x"}
    return data


def until(check: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"never saw {what}")
        time.sleep(0.1)


@pytest.fixture
def stack(tmp_path: Path, redis_url: str) -> Iterator[Stack]:
    routines = tmp_path / "routines"
    routines.mkdir()
    routine_file(routines, "fix-calc", "Make add() add. [script:fix]")
    routine_file(routines, "capped", "Look around. [script:look]", "limits: {runs_per_day: 1}\n")
    routine_file(routines, "paused", "Never runs. [script:never]")
    (routines / "triage.md").write_text(TRIAGE)
    source = tmp_path / "calc-src"
    source.mkdir()
    (source / "calc.py").write_text(CALC)
    with running_stack(tmp_path, redis_url, routines_dir=routines, worker=False, github_webhook_secret=SECRET) as s:
        s.github.add_repo("acme/calc", s.installation, source_dir=source)
        yield s


def test_metrics_count_exactly_what_happened_in_every_process(stack: Stack) -> None:
    denied = "curl -sS -o /dev/null -w '%{http_code}' https://not-allowed.example/ 2>&1; echo"
    fix = [
        Turn([bash(denied)]),
        Turn([edit_str_replace("calc.py", "return a - b", "return a + b")]),
        Turn([text("Fixed.")]),
    ]
    stack.anthropic.add_script(Script(match="[script:fix]", turns=fix))
    stack.anthropic.add_script(Script(match="[script:look]", turns=[Turn([text("Nothing to change.")])]))
    hook, guid = f"{stack.web_url}/webhooks/github", "delivery-1"
    deliver(stack.github, "issues", issue_opened(stack), hook, SECRET, guid)
    deliver(stack.github, "issues", issue_opened(stack), hook, SECRET, guid)
    deliver(stack.github, "issues", issue_opened(stack), hook, "not-the-secret")
    deliver(stack.github, "ping", {"zen": "Keep it simple."}, hook, SECRET)
    deliver(stack.github, "release", {"action": "published"}, hook, SECRET)
    assert [d["status_code"] for d in stack.github.hook_deliveries] == [202, 200, 401, 200, 202]
    fix_run = stack.fire("fix-calc").json()["run_id"]
    look_run = stack.fire("capped").json()["run_id"]
    assert stack.fire("capped").status_code == 429
    assert stack.client.post(f"{stack.web_url}/api/routines/paused/pause", headers=_admin()).status_code == 200
    assert stack.fire("paused").status_code == 409

    before = scrape(stack.web_url)
    assert of(before, "routines_webhook_deliveries_total") == {
        frozenset({("outcome", outcome)}): 1.0
        for outcome in ("queued", "duplicate", "bad_signature", "pong", "ignored")
    }
    assert of(before, "routines_runs_live") == {
        frozenset({("routine", "fix-calc"), ("state", "queued")}): 1,
        frozenset({("routine", "capped"), ("state", "queued")}): 1,
    }
    assert value(before, "routines_queue_jobs") == 2 and value(before, "routines_deliveries_waiting") == 1
    assert value(before, "routines_workers_alive") == 0

    worker = WorkerThread(stack.settings).start()
    try:
        fixed, looked = stack.wait(fix_run), stack.wait(look_run)
        assert (fixed["state"], looked["state"]) == ("succeeded", "no_changes"), fixed["error"]

        def drained() -> bool:
            now = scrape(stack.web_url)
            return value(now, "routines_queue_jobs") == 0 and value(now, "routines_deliveries_waiting") == 0

        until(drained, "the queue and the delivery stream emptied by the worker")
        until(lambda: value(scrape(stack.web_url), "routines_workers_alive") == 1, "the worker's heartbeat")
    finally:
        worker.stop()  # it sends what it counted as it stops

    after = scrape(stack.web_url)
    assert value(after, "routines_workers_alive") == 0, "a stopped worker is gone at once"
    assert of(after, "routines_runs_fired_total") == {
        frozenset({("routine", "fix-calc"), ("trigger", "api")}): 1,
        frozenset({("routine", "capped"), ("trigger", "api")}): 2,
        frozenset({("routine", "paused"), ("trigger", "api")}): 1,
    }
    assert of(after, "routines_runs_started_total") == {
        frozenset({("routine", "fix-calc")}): 1,
        frozenset({("routine", "capped")}): 1,
    }
    assert of(after, "routines_runs_ended_total") == {
        frozenset({("routine", "fix-calc"), ("state", "succeeded")}): 1,
        frozenset({("routine", "capped"), ("state", "no_changes")}): 1,
        frozenset({("routine", "capped"), ("state", "cancelled")}): 1,
        frozenset({("routine", "paused"), ("state", "cancelled")}): 1,
    }
    assert of(after, "routines_runs_refused_total") == {
        frozenset({("routine", "capped"), ("limit", "runs_per_day")}): 1,
        frozenset({("routine", "paused"), ("limit", "paused")}): 1,
    }
    assert of(after, "routines_runs_live") == {}
    attempts = [d["status_code"] for d in stack.github.hook_deliveries]  # the sweep had the 401 sent again
    assert of(after, "routines_webhook_deliveries_total") == {
        **of(before, "routines_webhook_deliveries_total"),
        frozenset({("outcome", "bad_signature")}): attempts.count(401),
    }
    assert sum(of(after, "routines_webhook_deliveries_total").values()) == len(attempts)

    fix_labels = {"routine": "fix-calc"}
    duration = value(after, "routines_run_duration_seconds_sum", **fix_labels, state="succeeded")
    assert value(after, "routines_run_duration_seconds_count", **fix_labels, state="succeeded") == 1
    assert 0 < duration <= fixed["updated_at"] - fixed["created_at"] + 0.01
    assert value(after, "routines_run_duration_seconds_bucket", **fix_labels, state="succeeded", le="+Inf") == 1

    events = stack.events(fix_run)
    first_request = next(e["ts"] for e in events if e["type"] == "model.request") - fixed["created_at"]
    assert value(after, "routines_run_first_model_request_seconds_count", **fix_labels) == 1
    assert value(after, "routines_run_first_model_request_seconds_sum", **fix_labels) == pytest.approx(
        first_request, abs=0.05
    )
    assert value(after, "routines_run_first_model_request_seconds_count", routine="capped") == 1

    assert value(after, "routines_model_turns_total", **fix_labels) == fixed["turns"] == 3
    for key, tokens in fixed["usage"].items():
        if key.endswith("_tokens"):
            kind = key.removesuffix("_tokens")
            assert value(after, "routines_model_tokens_total", **fix_labels, kind=kind) == tokens, kind
    assert value(after, "routines_model_cost_usd_total", **fix_labels) == pytest.approx(fixed["cost_usd"])
    assert fixed["cost_usd"] > 0
    denials = sum(e["type"] == "egress.denied" for e in events)
    assert denials >= 1 and value(after, "routines_egress_denied_total", **fix_labels) == denials
    assert of(after, "routines_sandbox_starts_total") == {
        frozenset({("routine", "fix-calc")}): 1,
        frozenset({("routine", "capped")}): 1,
    }
    assert of(after, "routines_sandbox_failures_total") == {}


def _admin() -> dict[str, str]:
    return {"authorization": f"Bearer {API_TOKEN}"}


def test_two_web_processes_on_one_redis_report_the_same_totals(tmp_path: Path, redis_url: str) -> None:
    routines = tmp_path / "routines"
    routines.mkdir()
    (routines / "triage.md").write_text(TRIAGE)
    settings = Settings(redis_url=redis_url, routines_dir=routines, data_dir=tmp_path, github_webhook_secret=SECRET)
    with serve_in_thread(create_app(settings)) as one, serve_in_thread(create_app(settings)) as two:
        hooks = [f"{one.url}/webhooks/github", f"{two.url}/webhooks/github"]
        _post(hooks[0], "ping", {}, "p-1")
        _post(hooks[0], "issues", {"action": "opened"}, "d-1")
        _post(hooks[1], "issues", {"action": "opened"}, "d-1")
        _post(hooks[1], "issues", {"action": "opened", "issue": {"number": 2}}, "d-2")
        _post(hooks[1], "issues", {"action": "opened"}, "d-3", secret="wrong")
        scrape(one.url, token=None), scrape(two.url, token=None)  # each sends its own counts when scraped
        seen_one, seen_two = scrape(one.url, token=None), scrape(two.url, token=None)

    assert seen_one == seen_two
    assert of(seen_one, "routines_webhook_deliveries_total") == {
        frozenset({("outcome", "pong")}): 1,
        frozenset({("outcome", "queued")}): 2,
        frozenset({("outcome", "duplicate")}): 1,
        frozenset({("outcome", "bad_signature")}): 1,
    }
    assert value(seen_one, "routines_deliveries_waiting") == 2


def _post(url: str, event: str, payload: dict[str, Any], guid: str, secret: str = SECRET) -> httpx.Response:
    body = json.dumps(payload).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    headers = {"x-github-event": event, "x-github-delivery": guid, "x-hub-signature-256": signature}
    return httpx.post(url, content=body, headers=headers, timeout=30)


def test_a_redis_error_while_counting_does_not_fail_the_webhook(tmp_path: Path, redis_url: str) -> None:
    routines = tmp_path / "routines"
    routines.mkdir()
    (routines / "triage.md").write_text(TRIAGE)
    settings = Settings(redis_url=redis_url, routines_dir=routines, data_dir=tmp_path, github_webhook_secret=SECRET)
    client = redis.Redis.from_url(redis_url)
    client.set("routines:metrics:counters", "not a hash")  # every count sent to it fails (WRONGTYPE)
    with serve_in_thread(create_app(settings)) as web:
        hook = f"{web.url}/webhooks/github"
        answers = [_post(hook, "issues", {"action": "opened", "issue": {"number": n}}, f"d-{n}") for n in range(3)]
        assert [(a.status_code, a.headers["x-routines-delivery"]) for a in answers] == [(202, "queued")] * 3
        assert httpx.get(f"{web.url}/metrics", timeout=30).status_code == 503, "the counts cannot be read either"
        assert client.xlen("routines:deliveries") == 3, "every delivery was taken in"
        client.delete("routines:metrics:counters")
        samples = scrape(web.url, token=None)
    client.close()
    assert value(samples, "routines_webhook_deliveries_total", outcome="queued") == 3, "kept, and sent once it could"


def test_metrics_need_the_admin_token_when_one_is_set(tmp_path: Path, redis_url: str) -> None:
    settings = Settings(redis_url=redis_url, routines_dir=tmp_path, data_dir=tmp_path, api_token=API_TOKEN)
    with serve_in_thread(create_app(settings)) as web:
        assert httpx.get(f"{web.url}/metrics", timeout=30).status_code == 401
        wrong = httpx.get(f"{web.url}/metrics", headers={"authorization": "Bearer nope"}, timeout=30)
        assert wrong.status_code == 401
        assert "routines_runs_fired_total" not in wrong.text
        samples = scrape(web.url)
        openmetrics = httpx.get(
            f"{web.url}/metrics", headers={**_admin(), "accept": "application/openmetrics-text"}, timeout=30
        )
    assert ("routines_queue_jobs", frozenset()) in samples
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.rstrip().endswith("# EOF")
