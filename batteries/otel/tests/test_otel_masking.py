"""Secrets never reach a span: masking by field name and in free text."""

from __future__ import annotations

import pytest
from executus_otel import Masker, mask_text, mask_value


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "db_password",
        "Password",
        "token",
        "access_token",
        "refreshToken",
        "api_key",
        "X-Api-Key",
        "apiKey",
        "secret",
        "client_secret",
        "Authorization",
        "cookie",
        "private_key",
        "credentials",
        "auth",
    ],
)
def test_fields_named_like_secrets_are_masked(key: str) -> None:
    assert mask_value({key: "s3cr3t-value", "name": "kept"}) == {key: "***", "name": "kept"}


@pytest.mark.parametrize(
    "key", ["author", "tokenizer_name", "keyword", "monkey", "passage", "query", "secretary"]
)
def test_ordinary_fields_are_kept(key: str) -> None:
    assert mask_value({key: "plain"}) == {key: "plain"}


def test_numbers_and_nesting() -> None:
    data = {
        "max_tokens": 100,
        "input_tokens": 12,
        "auth": {"user": "ann", "password": "x"},
        "items": [{"token": "abc"}, {"value": 1}],
        "flag": True,
        "none": None,
    }
    assert mask_value(data) == {
        "max_tokens": 100,
        "input_tokens": 12,
        "auth": "***",
        "items": [{"token": "***"}, {"value": 1}],
        "flag": True,
        "none": None,
    }


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("postgresql://app:hunter2@db.internal/app", "postgresql://app:***@db.internal/app"),
        ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
        ("see https://example.com/a?b=c for more", "see https://example.com/a?b=c for more"),
        ("Authorization: Bearer eyJhbGciOi.abc.def", "Authorization: ***"),
        ("curl -H 'Bearer abcdef123456'", "curl -H 'Bearer ***'"),
        ('{"api_key": "sk-123", "model": "gpt"}', '{"api_key": "***", "model": "gpt"}'),
        ("GET /v1?access_token=abc123&page=2", "GET /v1?access_token=***&page=2"),
        ("password=swordfish and done", "password=*** and done"),
        ("used 120 tokens: input_tokens=100", "used 120 tokens: input_tokens=100"),
        ("résumé ✓ 漢字", "résumé ✓ 漢字"),
    ],
)
def test_secrets_in_text_are_masked(text: str, masked: str) -> None:
    assert mask_text(text) == masked


def test_extra_keys_are_masked_too() -> None:
    masker = Masker(["ssn", "account_number"])
    assert masker.value({"ssn": "123-45-6789", "account_number": "DE89", "name": "ann"}) == {
        "ssn": "***",
        "account_number": "***",
        "name": "ann",
    }
    assert masker.text("ssn=123-45-6789 ok") == "ssn=*** ok"
