"""Secret scrubbing: nothing that looks like a credential leaves the machine in a config or table.

Two rules, applied recursively to dicts, lists and strings: a key whose name looks secret
(`api_key`, `token`, `secret`, `password`, ...) has its value replaced, and any string containing a
known secret value (e.g. `WANDB_API_KEY` from the environment, the W&B password in `~/.netrc`) or
credentials in a URL (`https://user:pass@host`) is masked.
"""
from __future__ import annotations

import os
import re
from typing import Any, Iterable, Mapping

REDACTED = "***"

# Whole name parts that mark a secret. Parts, not substrings: `n_tokens` or `tokens_per_s` are not
# secrets, `hf_token` and `WANDB_API_KEY` are.
_SECRET_PARTS = frozenset(
    {"token", "secret", "secrets", "password", "passwd", "apikey", "credential", "credentials", "auth"}
)
_SECRET_PAIRS = frozenset({("api", "key"), ("access", "key"), ("private", "key"), ("secret", "key")})
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s:@]+:[^/\s@]+@")
# A secret value shorter than this is too likely to occur by chance inside ordinary text.
_MIN_SECRET_LEN = 8


def is_secret_key(name: str) -> bool:
    """True when a key or variable name looks like it holds a credential."""
    parts = [p for p in re.split(r"[^a-z0-9]+", _uncamel(str(name)).lower()) if p]
    if any(p in _SECRET_PARTS for p in parts):
        return True
    return any(pair in _SECRET_PAIRS for pair in zip(parts, parts[1:]))


def _uncamel(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)


def secret_values(env: Mapping[str, str] | None = None, extra: Iterable[str] = ()) -> frozenset[str]:
    """Values to mask wherever they appear: secret-looking environment variables, plus `extra`."""
    env = os.environ if env is None else env
    found = {v for k, v in env.items() if is_secret_key(k) and v}
    found.update(v for v in extra if v)
    return frozenset(v for v in found if len(v) >= _MIN_SECRET_LEN)


def scrub(value: Any, secrets: frozenset[str] = frozenset()) -> Any:
    """A copy of `value` with secret-looking keys and known secret values replaced by REDACTED."""
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if is_secret_key(k) and v is not None else scrub(v, secrets))
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return type(value)(scrub(v, secrets) for v in value)
    if isinstance(value, str):
        return scrub_text(value, secrets)
    return value


def scrub_text(text: str, secrets: frozenset[str] = frozenset()) -> str:
    """`text` with URL credentials and every known secret value masked."""
    text = _URL_CREDENTIALS.sub(lambda m: m.group("scheme") + REDACTED + "@", text)
    for s in sorted(secrets, key=len, reverse=True):  # longest first: one secret may contain another
        text = text.replace(s, REDACTED)
    return text
