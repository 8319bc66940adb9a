"""What runs once before the service listens: settings, the bind rule, every served file verified.

BentoML calls the service's `@bentoml.on_deployment` hook in its main process before it starts any worker.
A failure there prints one line (`medgen: error: ...`) and exits 1 at once; a failure inside a worker
would instead be retried by BentoML forever, with the reason buried in tracebacks.
"""

from __future__ import annotations

import ipaddress
import logging
import sys
from typing import Any

from serving import integrity, runtime
from serving.contract import ModelError
from serving.settings import Settings, SettingsError, from_env

log = logging.getLogger("medgen.serving")
LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


def is_loopback(host: str | None) -> bool:
    if host is None:
        return False  # unknown bind address: treated as public (fail safe)
    if host.lower() in LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bound_host() -> str | None:
    """The --host that `bentoml serve` is binding: the `host` argument of the serve_http frame calling us.

    BentoML passes it to serve_http but not to deployment hooks; None when not found (then the bind is
    treated as public). Pinned bentoml 1.4.39; tests/serving checks the rule end to end."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "serve_http" and isinstance(frame.f_locals.get("host"), str):
            return frame.f_locals["host"]
        frame = frame.f_back
    return None


def check_bind(settings: Settings, host: str | None) -> str | None:
    """SettingsError for a public bind without keys and without an explicit allowance; a warning line
    (returned) for a public bind allowed to run anonymously."""
    if settings.api_keys or is_loopback(host):
        return None
    where = host or "an unknown address"
    if not settings.allow_anonymous:
        raise SettingsError(
            f"binding {where} without API keys: set MEDGEN_API_KEYS or MEDGEN_API_KEYS_FILE, or allow "
            "anonymous callers explicitly (medgen serve --allow-anonymous, MEDGEN_ALLOW_ANONYMOUS=1)"
        )
    return (
        f"medgen: warning: serving WITHOUT API keys on {where} (anonymous allowed): anyone who can reach this "
        "port can call every endpoint"
    )


def describe(served: runtime.Served) -> str:
    manifest = served.manifest
    models = ", ".join(
        f"{m.name}{f' ({m.family})' if m.name == 'generator' else ''} "
        f"{m.contract.channels}x{m.contract.size}x{m.contract.size} sha256 {m.sha256[:12]}"
        for m in served.models.values()
    )
    proof = (
        f"verified against manifest.json (commit {str(manifest.get('code_commit', '?'))[:12]})"
        if manifest
        else "from the MLflow registry (sha256 checked against each metadata JSON)"
    )
    return f"medgen: serving {models}; {proof}"


def check(host: str | None) -> tuple[Settings, runtime.Served, str | None]:
    """Settings, bind rule and every served file; SettingsError/ModelError name what is wrong."""
    settings = from_env()
    warning = check_bind(settings, host)
    served = runtime.load()
    generator = served.models["generator"]
    if generator.denoiser and int(generator.metadata["default_steps"]) > settings.max_steps:
        raise SettingsError(
            f"MEDGEN_MAX_STEPS={settings.max_steps} is below the served denoiser's default_steps "
            f"({generator.metadata['default_steps']}): a request without steps would exceed it; raise MEDGEN_MAX_STEPS"
        )
    return settings, served, warning


def check_or_exit() -> None:
    """The deployment hook's body: one line and exit 1 on any problem, else one line saying what is served."""
    try:
        _, served, warning = check(bound_host())
    except (SettingsError, ModelError) as exc:
        print(f"medgen: error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    for line in (warning, describe(served)):
        if line:
            print(line, file=sys.stderr, flush=True)


def manifest_view(served: runtime.Served) -> dict[str, Any] | None:
    return integrity.summary(served.manifest) if served.manifest else None


CARD_TYPES = {"json": "application/json", "md": "text/markdown"}


def card_view(served: runtime.Served) -> dict[str, Any] | None:
    """What /metadata says of the model card: where, in which media types, each file's sha256; None without one."""
    if not served.card:
        return None
    return {
        "url": "/model-card",
        "formats": [CARD_TYPES[kind] for kind in runtime.CARD_FILES if kind in served.card],
        "sha256": {runtime.CARD_FILES[kind]: integrity.sha256(body) for kind, body in sorted(served.card.items())},
    }
