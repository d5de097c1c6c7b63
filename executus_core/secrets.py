"""Masking secrets wherever executus echoes a setting or a value: one rule, used everywhere.

Settings errors (`ConfigError`, `PluginError`), ``executus plugins --json``, settings dumps
(`Settings.masked`), log lines and the audit trail's stored tool arguments all go through the
functions here, so a database password, a Redis password or an API key is never printed or
stored in clear. The rule, as documented in ``docs/configuration.md``:

1. **URL passwords.** The password in a URL's user part becomes ``***``:
   ``postgresql://app:***@db/prod``, ``redis://:***@cache:6379/0``. The user name, host and path
   stay, so a message still says *which* database.
2. **Names that say "secret".** A mapping key, header, field, keyword or ``name=value`` pair whose
   name, compared case-insensitively with ``-``, ``_`` and ``.`` ignored, is or ends with one of
   `SECRET_NAMES` (``password``, ``token``, ``api_key``, ``authorization``, ``x-api-key``,
   ``client_secret``, ``db_password``, ...) has its value replaced by ``***``, whatever its type.
   ``None`` and ``""`` stay as they are: "not set" is not a secret.
3. **Nested data** is walked: mappings, lists and tuples at any depth. **Text** (a message, a
   log line, every string in nested data) gets rule 1, and rule 2 where it shows a value by name
   (``name=value``, ``"name": "value"``, ``Authorization: ...``). pydantic's ``SecretStr`` /
   ``SecretBytes`` become ``***``.

Masking is idempotent (masking a masked text changes nothing), and it never raises: a value it
cannot walk is returned as it is.

::

    >>> mask_text("cannot connect to postgresql://app:hunter2@db/prod")
    'cannot connect to postgresql://app:***@db/prod'
    >>> mask_value({"url": "redis://:pw@cache:6379", "api_key": "sk-123", "n": 3})
    {'url': 'redis://:***@cache:6379', 'api_key': '***', 'n': 3}
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Mapping
from typing import Any

import orjson

__all__ = [
    "MASK",
    "SECRET_NAMES",
    "SecretsFilter",
    "is_secret_name",
    "mask_exception",
    "mask_text",
    "mask_url",
    "mask_value",
]

MASK = "***"
"""What a secret is replaced with."""

SECRET_NAMES: tuple[str, ...] = (
    "password",
    "passwd",
    "passphrase",
    "pwd",
    "secret",
    "secrets",
    "token",
    "apikey",
    "accesskey",
    "secretkey",
    "privatekey",
    "signingkey",
    "authorization",
    "auth",
    "cookie",
    "credential",
    "credentials",
    "sessionid",
)
"""A name that is, or ends with, one of these (lower case, ``-``/``_``/``.`` removed) holds a secret.

``pwd`` and ``auth`` count only as the whole name (``cwd``-like suffixes such as ``oauth`` are not
secrets, nor is a path named ``pwd`` inside a longer word)."""

_WHOLE_ONLY = frozenset({"pwd", "auth"})
_SUFFIXES = tuple(n for n in SECRET_NAMES if n not in _WHOLE_ONLY)
_STRIP = str.maketrans("", "", "-_. ")

# scheme://user:password@host — the password may hold anything but whitespace and quotes; the user
# part ends at the last '@' of the token, so a password with an unencoded '@' is still hidden whole.
_URL_PASSWORD = re.compile(r"""(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s/:@'"<>]*):(?P<pw>[^\s'"<>]*)@""")

# name=value (any value form), or "name": "value" / name: 'value' (a quoted value after a colon),
# or an Authorization/Cookie header line (name: value to the end of the line). Only the secret word
# that ends the name is matched (what comes before it stays as it is): matching the whole name would
# make the regex try every prefix of every long word, which is slow on large texts.
_WORD = (
    r"(?:password|passwd|passphrase|secrets?|token|api[_\-]?key|access[_\-]?key|secret[_\-]?key"
    r"|private[_\-]?key|signing[_\-]?key|authorization|cookie|credentials?|session[_\-]?id"
    r"|(?<![A-Za-z0-9_.\-])(?:pwd|auth))(?![A-Za-z0-9_])"
)
_UNQUOTED = r"""(?:(?:Bearer|Basic|Token|Digest)\s+)?[^\s"',;&)}\]]+"""
_PAIR = re.compile(
    rf"""(?P<name>{_WORD})(?P<sep>["']?\s*=\s*)(?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<bare>{_UNQUOTED}))""",
    re.IGNORECASE,
)
_QUOTED_PAIR = re.compile(
    rf"""(?P<name>{_WORD})(?P<sep>["']?\s*:\s*)(?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)')""",
    re.IGNORECASE,
)
_HEADER = re.compile(
    r"""(?P<name>(?:authorization|cookie|x-api-key)(?![A-Za-z0-9_\-]))(?P<sep>\s*:\s*)(?P<bare>[^\r\n"',;]+)""",
    re.IGNORECASE,
)
# A cheap first look: only texts holding one of these (lower case) can need the pair patterns.
_HINTS = ("pass", "pwd", "secret", "token", "key", "auth", "cookie", "credential", "session")


# One search in C instead of a loop over the hints: `_clean_json` runs for every audited row.
_HINT_BYTES = re.compile("|".join(_HINTS).encode())


def _hinted(text: str) -> bool:
    lowered = text.lower()
    return any(hint in lowered for hint in _HINTS)


def _clean_json(value: Any) -> bool:
    """True when ``value`` surely holds nothing to mask: its JSON has no hint word (every secret
    name holds one) and no URL with a user part. One orjson call, instead of a walk in Python, for
    the common case (tool arguments on the audit path)."""
    try:
        blob = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).lower()
    except TypeError:  # not JSON (a SecretStr, an object): walk it
        return False
    if b"@" in blob and b"://" in blob:
        return False
    return _HINT_BYTES.search(blob) is None


def is_secret_name(name: object) -> bool:
    """True when ``name`` (a key, header, field or keyword) names a secret; see `SECRET_NAMES`.

    >>> [is_secret_name(n) for n in ("api_key", "X-Api-Key", "DB_PASSWORD", "tokens", "oauth")]
    [True, True, True, False, False]
    """
    return _is_secret_name(name) if isinstance(name, str) else False


@functools.lru_cache(maxsize=4096)
def _is_secret_name(name: str) -> bool:
    # cached: the same few keys come back on every step (arguments, call_id, ...)
    key = name.lower().translate(_STRIP)
    return key in _WHOLE_ONLY or key.endswith(_SUFFIXES)


def mask_url(url: str) -> str:
    """``url`` with the password of its user part replaced by ``***`` (the rest unchanged).

    >>> mask_url("postgresql+psycopg://app:s3cret@db:5432/prod")
    'postgresql+psycopg://app:***@db:5432/prod'
    """
    return _URL_PASSWORD.sub(_hide_password, url) if "@" in url else url


def _hide_password(match: re.Match[str]) -> str:
    return f"{match['head']}:{MASK}@"


def _hide_pair(match: re.Match[str]) -> str:
    groups = match.groupdict()
    if groups.get("dq") is not None:
        value = f'"{MASK}"' if groups["dq"] else '""'
    elif groups.get("sq") is not None:
        value = f"'{MASK}'" if groups["sq"] else "''"
    else:
        value = MASK
    return f"{match['name']}{match['sep']}{value}"


def mask_text(text: str) -> str:
    """Free text (an error message, a log line) with its secrets replaced by ``***``.

    Hides URL passwords, ``name=value`` pairs, quoted ``"name": "value"`` pairs and
    ``Authorization:`` / ``Cookie:`` header lines whose name says secret. A key named in prose
    (``unknown setting api_key``, ``api_key: must be a string``) is left alone: only its value,
    when the text shows one, is hidden.

    >>> mask_text("login failed for api_key='sk-123' at redis://:pw@cache:6379")
    "login failed for api_key='***' at redis://:***@cache:6379"
    """
    if not isinstance(text, str) or not text:
        return text
    if "@" in text and "://" in text:
        text = _URL_PASSWORD.sub(_hide_password, text)
    if _hinted(text):
        if "=" in text:
            text = _PAIR.sub(_hide_pair, text)
        if ":" in text:
            text = _QUOTED_PAIR.sub(_hide_pair, text)
            text = _HEADER.sub(_hide_pair, text)
    return text


def mask_value(value: Any, *, key: object = None) -> Any:
    """``value`` with secrets masked: keys named like secrets, URL passwords in strings, nested data.

    Returns the same object when nothing in it needed masking (no copy on the common path), else
    a masked copy (mappings become ``dict``, tuples stay tuples). ``key`` is the name ``value``
    was found under, if any: a secret name masks the whole value.

    >>> mask_value({"headers": {"Authorization": "Bearer abc"}, "query": "cats"})
    {'headers': {'Authorization': '***'}, 'query': 'cats'}
    """
    try:
        if isinstance(value, dict | list) and (key is None or not is_secret_name(key)) and _clean_json(value):
            return value
        return _mask(value, key)
    except Exception:  # never let masking break the caller; an odd object is returned as it is
        return value


def _mask(value: Any, key: object) -> Any:
    if key is not None and is_secret_name(key) and value is not None and value != "":
        return MASK
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, Mapping):
        changed = False
        out: dict[Any, Any] = {}
        for k, v in value.items():
            masked = _mask(v, k)
            changed = changed or masked is not v
            out[k] = masked
        return out if changed else value
    if isinstance(value, list | tuple):
        items = [_mask(v, None) for v in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value
        return tuple(items) if isinstance(value, tuple) else items
    if type(value).__name__ in ("SecretStr", "SecretBytes"):
        return MASK
    return value


def mask_exception(exc: BaseException) -> BaseException:
    """Mask, in place, the messages of ``exc`` and of the exceptions it was raised from.

    A `PluginError` keeps the plugin's own exception as its ``__cause__`` (its traceback is what a
    plugin author needs), and a traceback prints that exception's message too: this masks the
    string arguments of every exception in the chain, so a logged traceback shows no secret either.
    Best effort: an exception whose message does not come from its ``args`` is left as it is.
    Returns ``exc``.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 32:
        seen.add(id(current))
        try:
            masked = tuple(mask_text(a) if isinstance(a, str) else a for a in current.args)
            if any(a is not b for a, b in zip(masked, current.args, strict=True)):
                current.args = masked
        except Exception:  # an exception type with read-only or odd args: leave it
            pass
        current = current.__cause__ or current.__context__
    return exc


class SecretsFilter(logging.Filter):
    """A `logging.Filter` that masks secrets in every record it passes (message and arguments).

    executus's own loggers (``executus``, ``executus.plugins``, ``executus.delivery``) carry one
    already; add this filter to your handlers to mask what other libraries log too (a driver's
    connection error holding a URL, say)::

        handler.addFilter(SecretsFilter())
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Mask the record in place; always keeps it."""
        try:
            message = record.getMessage()
        except Exception:
            return True
        masked = mask_text(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


# The core's own loggers mask what they log (a port's repr or error on close can hold a URL). A
# logger's filter applies to the records logged on it, not on its children: each gets one.
_CORE_LOGGERS = ("executus", "executus.plugins", "executus.delivery")
for _name in _CORE_LOGGERS:
    _logger = logging.getLogger(_name)
    if not any(isinstance(f, SecretsFilter) for f in _logger.filters):
        _logger.addFilter(SecretsFilter())
