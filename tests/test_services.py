"""Services: what one process builds once and hands to every run."""

from __future__ import annotations

from pathlib import Path

from app.core.config import Settings
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
