"""Services: what one process builds once and hands to every run."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from app.core.config import Settings
from app.models.anthropic import AnthropicModel
from app.services import build

PROCESS_KEY = "sk-ant-process-key-0123"


async def test_each_run_redactor_knows_the_process_secrets_but_not_another_runs(tmp_path: Path, redis_url: str) -> None:
    (tmp_path / "routines").mkdir()
    settings = Settings(
        redis_url=redis_url, anthropic_api_key=PROCESS_KEY, routines_dir=tmp_path / "routines", data_dir=tmp_path
    )
    services = await build(settings)
    try:
        one, two = services.redactor(), services.redactor()
        one.add("GITHUB_INSTALLATION_TOKEN", "ghs_first_runs_token_1")
        text = f"{PROCESS_KEY} ghs_first_runs_token_1"
        assert one.text(text) == "[ANTHROPIC_API_KEY] [GITHUB_INSTALLATION_TOKEN]"
        assert two.text(text) == "[ANTHROPIC_API_KEY] ghs_first_runs_token_1"
        assert services.redactor().text(text) == "[ANTHROPIC_API_KEY] ghs_first_runs_token_1"
    finally:
        await services.close()


async def test_the_model_client_is_made_once_and_off_the_event_loop(tmp_path: Path, redis_url: str) -> None:
    """The SDK reads the trust store as its client is made (0.2 s of CPU): on the loop, every run would stop."""
    made_in: list[threading.Thread] = []

    def noted(**kwargs: Any) -> AnthropicModel:
        made_in.append(threading.current_thread())
        return AnthropicModel(**kwargs)

    (tmp_path / "routines").mkdir()
    settings = Settings(
        redis_url=redis_url, anthropic_api_key=PROCESS_KEY, routines_dir=tmp_path / "routines", data_dir=tmp_path
    )
    services = await build(settings)
    services.make_model = noted
    try:
        clients = await asyncio.gather(*(services.model() for _ in range(3)))
        assert all(c is clients[0] for c in clients) and isinstance(clients[0], AnthropicModel)
        assert len(made_in) == 1 and made_in[0] is not threading.current_thread()
    finally:
        await services.close()
