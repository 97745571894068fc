from __future__ import annotations

from pathlib import Path

import pytest

from app.core.config import Settings
from app.core.errors import ConfigError

KEY = "-----BEGIN RSA PRIVATE KEY-----\nabc\n-----END RSA PRIVATE KEY-----\n"


def test_defaults() -> None:
    s = Settings.from_env({})
    assert s.redis_url is None
    assert s.github_api_url == "https://api.github.com"
    assert s.routines_dir == Path("routines") and s.port == 8000
    assert not s.github_app_configured
    assert s.log_format == "text"
    assert Settings.from_env({"ROUTINES_LOG_FORMAT": "JSON"}).log_format == "json"


def test_enterprise_url_and_key_from_path(tmp_path: Path) -> None:
    pem = tmp_path / "app.pem"
    pem.write_text(KEY)
    s = Settings.from_env(
        {
            "GITHUB_API_URL": "https://ghe.acme.test/api/v3/",
            "GITHUB_APP_ID": "42",
            "GITHUB_APP_PRIVATE_KEY_PATH": str(pem),
        }
    )
    assert s.github_api_url == "https://ghe.acme.test/api/v3"
    assert s.github_app_configured and s.github_app_private_key == KEY
    assert KEY not in repr(s)


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"PORT": "eighty"}, "PORT"),
        ({"PORT": "0"}, "PORT"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL"),
        ({"GITHUB_API_URL": "api.github.com"}, "GITHUB_API_URL"),
        ({"GITHUB_APP_ID": "abc", "GITHUB_APP_PRIVATE_KEY": KEY}, "GITHUB_APP_ID"),
        ({"GITHUB_APP_ID": "1"}, "GITHUB_APP_PRIVATE_KEY"),
        ({"GITHUB_APP_PRIVATE_KEY": KEY}, "GITHUB_APP_ID"),
        ({"GITHUB_APP_ID": "1", "GITHUB_APP_PRIVATE_KEY": "not a key"}, "GITHUB_APP_PRIVATE_KEY"),
        ({"GITHUB_APP_ID": "1", "GITHUB_APP_PRIVATE_KEY_PATH": "/nonexistent/key.pem"}, "GITHUB_APP_PRIVATE_KEY_PATH"),
        ({"ROUTINES_SANDBOX": "docker"}, "ROUTINES_SANDBOX"),
        ({"ROUTINES_POLL_DELAY_MS": "fast"}, "ROUTINES_POLL_DELAY_MS"),
        ({"ROUTINES_LOG_FORMAT": "xml"}, "ROUTINES_LOG_FORMAT"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        Settings.from_env(env)


def test_bad_key_message_does_not_echo_the_value() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"GITHUB_APP_ID": "1", "GITHUB_APP_PRIVATE_KEY": "sekrit-value"})
    assert "sekrit" not in str(info.value)


def test_missing_anthropic_key_says_how_to_fix() -> None:
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY is not set"):
        Settings.from_env({}).require_anthropic()
