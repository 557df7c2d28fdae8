"""The gateway's settings: parsed from GENJOBS_* variables, refused when impossible, and every
one of them documented in the README and docs/http.md."""

from __future__ import annotations

import pytest

from service.http.config import ENV_NAMES, HttpSettings, parse_listen

from .conftest import REPO


def test_settings_come_from_the_environment() -> None:
    hs = HttpSettings.from_env(
        {
            "GENJOBS_HTTP": "0.0.0.0:9000",
            "GENJOBS_JWT_SECRET": "s",
            "GENJOBS_SSE_HEARTBEAT": "2.5",
            "GENJOBS_SSE_MAX_BUFFER": "1000",
            "GENJOBS_CORS_ORIGINS": "https://a.example/, https://b.example",
        }
    )
    assert hs.host_port == ("0.0.0.0", 9000)
    assert hs.sse_heartbeat == 2.5
    assert hs.sse_max_buffer == 1000
    assert hs.origins == {"https://a.example", "https://b.example"}
    assert hs.algorithms == ["HS256"]
    jwks = HttpSettings.from_env({"GENJOBS_JWT_JWKS_URL": "https://idp.example/jwks"})
    assert jwks.algorithms == ["RS256"]


@pytest.mark.parametrize(
    "env",
    [
        {},  # jwt without a secret or JWKS
        {"GENJOBS_AUTH": "maybe", "GENJOBS_JWT_SECRET": "s"},
        {"GENJOBS_AUTH": "none", "GENJOBS_HTTP": "8080"},
        {"GENJOBS_AUTH": "none", "GENJOBS_SSE_HEARTBEAT": "soon"},
        {"GENJOBS_AUTH": "none", "GENJOBS_HTTP_CHAT_PREFIX": "api/"},
    ],
)
def test_impossible_settings_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="GENJOBS_"):
        HttpSettings.from_env(env)


def test_listen_addresses() -> None:
    assert parse_listen("[::1]:8080") == ("::1", 8080)
    for bad in ("", ":80", "host", "host:99999", "host:x"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_listen(bad)


def test_every_variable_is_documented() -> None:
    readme = (REPO / "README.md").read_text()
    http_md = (REPO / "docs" / "http.md").read_text()
    for name in ENV_NAMES.values():
        assert f"`{name}`" in http_md, name
        assert name in readme, name
