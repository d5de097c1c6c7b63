"""Masking secrets out of what goes on a span.

Two rules, applied to everything content capture puts on a span (tool arguments and results, model
answers, event payloads, error texts):

- **by field name**: in a mapping, the value of a field named like a secret — ``password``,
  ``token``, ``api_key``, ``secret``, ``authorization``, ``cookie``, ``credentials``, ``private_key``
  ... (matched on the words of the name, so ``X-Api-Key``, ``clientSecret`` and ``db_password`` are
  caught) — becomes ``***``. Numbers, booleans and ``null`` are left alone, so ``max_tokens: 100`` and
  ``input_tokens: 12`` stay readable.
- **in text**: a URL's password (``postgresql://app:hunter2@db/app`` becomes
  ``postgresql://app:***@db/app``), a ``Bearer``/``Basic`` credential, and ``key=value`` or
  ``"key": "value"`` pairs whose key is named like a secret.

::

    >>> mask_value({"user": "ann", "password": "hunter2", "url": "redis://:s3cret@cache:6379/0"})
    {'user': 'ann', 'password': '***', 'url': 'redis://:***@cache:6379/0'}
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["MASK", "SECRET_WORDS", "Masker", "mask_text", "mask_value"]

MASK = "***"
"""What a masked value becomes."""

SECRET_WORDS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "passphrase",
        "secret",
        "secrets",
        "token",
        "tokens",
        "apikey",
        "authorization",
        "auth",
        "credential",
        "credentials",
        "cookie",
        "cookies",
        "privatekey",
        "accesskey",
        "secretkey",
        "signature",
        "bearer",
    }
)
"""Words that make a field name a secret's (``api_key`` is ``api`` + ``key``, read as ``apikey``)."""

_WORD = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
# Joined pairs that are secrets though neither word alone is.
_PAIRS = frozenset(
    {"apikey", "privatekey", "accesskey", "secretkey", "sessionid", "sessionkey", "clientsecret"}
)

_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@]*):([^\s@/?#]+)@")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]{6,}")
_TEXT_KEYS = (
    r"[A-Za-z0-9_.\-]*(?:password|passwd|pwd|passphrase|secret|token(?!s)|api[_\-]?key|apikey|authorization|"
    r"credential|private[_\-]?key|access[_\-]?key|cookie)[A-Za-z0-9_.\-]*"
)
_KEY_VALUE = re.compile(
    r"(?i)(?P<key>[\"']?" + _TEXT_KEYS + r"[\"']?\s*[:=]\s*)(?P<quote>[\"']?)(?!\d+(?:\.\d+)?\b)(?!\*\*\*)"
    r"(?P<value>(?:(?:bearer|basic)\s+)?[^\s\"'&,;}]+)"
)
_HINTS = ("://", "bearer", "basic", "pass", "pwd", "secret", "token", "key", "auth", "credential", "cookie")


class Masker:
    """Masks secrets by field name and in text; ``extra_keys`` adds field names to the built-in words.

    Instances are cheap to call repeatedly: the verdict for each field name is cached.
    """

    def __init__(self, extra_keys: Iterable[str] = ()) -> None:
        self.extra = frozenset(k.lower() for k in extra_keys)
        self._verdicts: dict[str, bool] = {}

    def is_secret_key(self, key: str) -> bool:
        """True when a field named ``key`` holds a secret."""
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self._judge(key)
            if len(self._verdicts) < 4096:
                self._verdicts[key] = verdict
        return verdict

    def _judge(self, key: str) -> bool:
        lowered = key.lower()
        if lowered in self.extra:
            return True
        words = [w.lower() for w in _WORD.findall(key)]
        if any(w in SECRET_WORDS or w in self.extra for w in words):
            return True
        joined = "".join(words)
        if joined in SECRET_WORDS or joined in _PAIRS:
            return True
        return any(a + b in _PAIRS or a + b in SECRET_WORDS for a, b in itertools.pairwise(words))

    def value(self, value: Any) -> Any:
        """``value`` with secrets masked: mappings by field name (recursively), strings by `text`."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            out: dict[str, Any] = {}
            for key, item in value.items():
                name = str(key)
                if self.is_secret_key(name) and not (item is None or isinstance(item, bool | int | float)):
                    out[name] = MASK
                else:
                    out[name] = self.value(item)
            return out
        if isinstance(value, list | tuple):
            return [self.value(item) for item in value]
        return value

    def text(self, text: str) -> str:
        """``text`` with URL passwords, bearer credentials and secret ``key=value`` pairs masked."""
        lowered = text.lower()
        if not any(hint in lowered for hint in _HINTS) and not any(k in lowered for k in self.extra):
            return text  # the common case: nothing that could be a secret, no regex run
        if "://" in text:
            text = _URL_PASSWORD.sub(r"\1:" + MASK + "@", text)
        text = _KEY_VALUE.sub(lambda m: f"{m.group('key')}{m.group('quote')}{MASK}", text)
        text = _BEARER.sub(lambda m: f"{m.group(1)} {MASK}", text)
        for extra in self.extra:
            if extra in lowered:
                text = re.sub(
                    r"(?i)([\"']?" + re.escape(extra) + r"[\"']?\s*[:=]\s*)([\"']?)(?!\*\*\*)[^\s\"'&,;}]+",
                    lambda m: f"{m.group(1)}{m.group(2)}{MASK}",
                    text,
                )
        return text


_DEFAULT = Masker()


def mask_value(value: Any) -> Any:
    """`Masker.value` with the built-in secret words only."""
    return _DEFAULT.value(value)


def mask_text(text: str) -> str:
    """`Masker.text` with the built-in secret words only."""
    return _DEFAULT.text(text)
