"""Every serving setting, read from the environment once at start (never at import).

The service runs without medgen installed (the container has serving/ only), so its settings are
environment variables; `medgen serve` fills them from params.yaml's `serve:` section (medgen.config.ServeConfig,
whose defaults a test keeps equal to DEFAULTS here). A bad value stops the service with one line.

| variable | default | what it bounds |
|---|---|---|
| MEDGEN_MAX_BODY_BYTES | 4 MiB | request body, refused while it streams in (413) |
| MEDGEN_MAX_JSON_DEPTH | 8 | JSON nesting, checked before decoding (a valid body needs 5) |
| MEDGEN_MAX_JSON_ELEMENTS | 1,200,000 | JSON values, checked before decoding (256 grey 64 px images = 1,048,576) |
| MEDGEN_MAX_IMAGE_PIXELS | 16,777,216 | width x height of an upload, read from its header before decoding |
| MEDGEN_MAX_BATCH | 256 | images per /classify request and n per /generate |
| MEDGEN_MAX_STEPS | 50 | DDIM steps per /generate request of a diffusion generator (its cost grows with n x steps) |
| MEDGEN_RATE_PER_S | 50 | requests per second per caller (API key, else client address); 0 = off |
| MEDGEN_RATE_BURST | 100 | token-bucket size: requests a caller may send at once |
| MEDGEN_MAX_INFLIGHT | 8 | requests parsing/computing at once per worker; while all are busy, 503 at once |
| MEDGEN_MAX_WAIT_MS | 0 | expected /classify wait to admit a request while others run, else 503; 0 = 1.5 x one image |
| MEDGEN_API_KEYS / MEDGEN_API_KEYS_FILE | unset | Bearer keys (comma-separated / one a line); unset = anonymous |
| MEDGEN_ALLOW_ANONYMOUS | 0 | 1 = serve without keys on a non-loopback address |
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

DEFAULTS = {
    "max_body_bytes": 4 * 1024 * 1024,
    "max_json_depth": 8,
    "max_json_elements": 1_200_000,
    "max_image_pixels": 4096 * 4096,
    "max_batch": 256,
    "max_steps": 50,
    "rate_per_s": 50.0,
    "rate_burst": 100,
    "max_inflight": 8,
    "max_wait_ms": 0,
}
# (lowest, highest) accepted; the highest values keep one request's memory bounded on a small machine.
RANGES = {
    "max_body_bytes": (1024, 256 * 1024 * 1024),
    "max_json_depth": (5, 64),
    "max_json_elements": (1024, 50_000_000),
    "max_image_pixels": (28 * 28, 200_000_000),
    "max_batch": (1, 4096),
    "max_steps": (1, 1000),
    "rate_per_s": (0.0, 1e6),
    "rate_burst": (1, 1_000_000),
    "max_inflight": (1, 10_000),
    "max_wait_ms": (0, 600_000),
}
KEY_MIN_CHARS = 16  # a guessable key is no key: refuse short ones at start


class SettingsError(ValueError):
    """A setting is malformed or out of range; the message is one line naming the variable."""


def env_name(key: str) -> str:
    return f"MEDGEN_{key.upper()}"


def key_id(key: str) -> str:
    """A short, non-reversible name for a key: what logs show to tell callers apart."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Settings:
    max_body_bytes: int = DEFAULTS["max_body_bytes"]
    max_json_depth: int = DEFAULTS["max_json_depth"]
    max_json_elements: int = DEFAULTS["max_json_elements"]
    max_image_pixels: int = DEFAULTS["max_image_pixels"]
    max_batch: int = DEFAULTS["max_batch"]
    max_steps: int = DEFAULTS["max_steps"]
    rate_per_s: float = DEFAULTS["rate_per_s"]
    rate_burst: int = DEFAULTS["rate_burst"]
    max_inflight: int = DEFAULTS["max_inflight"]
    max_wait_ms: int = DEFAULTS["max_wait_ms"]
    api_keys: tuple[str, ...] = field(default=(), repr=False)  # never printed
    allow_anonymous: bool = False

    @property
    def key_ids(self) -> list[str]:
        return [key_id(k) for k in self.api_keys]

    def public(self) -> dict[str, object]:
        """The limits as /metadata shows them (no keys)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name in DEFAULTS} | {
            "auth": "bearer" if self.api_keys else "none"
        }


def _number(env: Mapping[str, str], key: str) -> int | float:
    name, raw = env_name(key), env.get(env_name(key), "").strip()
    if not raw:
        return DEFAULTS[key]
    kind = type(DEFAULTS[key])
    try:
        value = kind(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected {'an integer' if kind is int else 'a number'}") from None
    low, high = RANGES[key]
    if not low <= value <= high:
        raise SettingsError(f"{name}={raw}: must be in {low}..{high}")
    return value


def _keys(env: Mapping[str, str]) -> tuple[str, ...]:
    keys = [k.strip() for k in env.get("MEDGEN_API_KEYS", "").split(",") if k.strip()]
    path = env.get("MEDGEN_API_KEYS_FILE", "").strip()
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                lines = handle.read().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(f"MEDGEN_API_KEYS_FILE={path}: cannot read it ({type(exc).__name__})") from None
        keys += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not keys:
            raise SettingsError(f"MEDGEN_API_KEYS_FILE={path}: holds no key (one key a line)")
    for number, key in enumerate(keys, 1):  # the message names the key by position, never by value
        if len(key) < KEY_MIN_CHARS or any(c.isspace() or not c.isprintable() for c in key):
            raise SettingsError(
                f"API key #{number} (id {key_id(key)}): needs >= {KEY_MIN_CHARS} printable characters "
                "without spaces (python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
    return tuple(dict.fromkeys(keys))


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from the environment (os.environ by default); SettingsError names the bad variable."""
    env = os.environ if env is None else env
    values = {key: _number(env, key) for key in DEFAULTS}
    allow = env.get("MEDGEN_ALLOW_ANONYMOUS", "0").strip().lower()
    if allow not in ("0", "1", "true", "false", ""):
        raise SettingsError(f"MEDGEN_ALLOW_ANONYMOUS={allow!r}: expected 1 or 0")
    return Settings(**values, api_keys=_keys(env), allow_anonymous=allow in ("1", "true"))
