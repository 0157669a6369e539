"""The one redaction rule: every form of a secret in a URL becomes ***, wherever it appears."""

from __future__ import annotations

import pytest

from pricectl.core.redaction import redact

SECRET = "hunter2"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("redis://u:hunter2@h:6379/0", "redis://u:***@h:6379/0"),
        ("redis://:hunter2@h", "redis://:***@h"),
        ("rediss://default:hunter2@h:6380/1", "rediss://default:***@h:6380/1"),
        ("redis://h:6379/0?password=hunter2", "redis://h:6379/0?password=***"),
        ("redis://h/0?db=1&PASSWORD=hunter2&x=1", "redis://h/0?db=1&PASSWORD=***&x=1"),
        (
            "unix:///run/redis.sock?password=hunter2&db=0",
            "unix:///run/redis.sock?password=***&db=0",
        ),
        ("unix://:hunter2@/run/redis.sock", "unix://:***@/run/redis.sock"),
        (
            "redis+sentinel://:hunter2@h1:26379,h2:26379,h3:26379/mymaster/0",
            "redis+sentinel://:***@h1:26379,h2:26379,h3:26379/mymaster/0",
        ),
        (
            "rediss+sentinel://app:hunter2@h1,h2:26380/svc?sentinel_password=hunter2",
            "rediss+sentinel://app:***@h1,h2:26380/svc?sentinel_password=***",
        ),
        (
            "redis+sentinel://h1:26379,[::1]:26379/mymaster/0?sentinel_password=hunter2",
            "redis+sentinel://h1:26379,[::1]:26379/mymaster/0?sentinel_password=***",
        ),
        (
            "redis+cluster://:hunter2@h1:7000,h2:7001",
            "redis+cluster://:***@h1:7000,h2:7001",
        ),
        ("redis://:hunter2@h:notaport/0", "redis://:***@h:notaport/0"),
        ("redis://:hun/ter#2@h/0", "redis://:***@h/0"),
        ("memory://", "memory://"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("redis://user@h:6379/0", "redis://user@h:6379/0"),
    ],
)
def test_every_url_form_is_redacted(text: str, expected: str) -> None:
    """Userinfo and query passwords, TLS, unix sockets, several hosts, unparsable ports."""
    assert redact(text) == expected


def test_secrets_inside_text_are_redacted() -> None:
    """A URL inside a sentence (a log line, an error) loses its secret; the rest stays."""
    text = (
        "serving on http://127.0.0.1:8000 (bus redis://:hunter2@127.0.0.1:6379/0); "
        "'redis://x:6379/0?password=hunter2' refused"
    )
    out = redact(text)
    assert SECRET not in out
    assert out.startswith("serving on http://127.0.0.1:8000 (bus redis://:***@127.0.0.1:6379/0)")
    assert "'redis://x:6379/0?password=***' refused" in out


def test_text_without_urls_is_unchanged() -> None:
    """Text with no URL and no query comes back as it was."""
    for text in ("", "plain words", "a=b but no url", "mailto:someone@example.com"):
        assert redact(text) == text
