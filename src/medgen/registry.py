"""MLflow model registry: every export registers a new version; the champion alias only moves forward.

`settle` (called by the export stage after registering a version) moves `export.alias` (`champion`) to
the new version only when all of these hold, and otherwise tags it `candidate` and logs why:
* the export ran on the default profile (`full`) and the checkpoint was trained on it (a smoke or test
  run never replaces a champion);
* the new model is for the same dataset flag as the current champion;
* it is at least as good as the champion on the selection metric its checkpoint records: out-of-fold
  AUC on train+val for the classify ensemble (`cv_auc`), validation AUC for single classifiers, validation
  FD for the generator (lower is better). Never a test metric.
With no champion yet, a default-profile model with a recorded selection metric becomes champion.
Each version carries tags `medgen.profile`, `medgen.flag`, `medgen.selection_metric`,
`medgen.selection_value`, `medgen.selection_mode`, `medgen.status` and `medgen.reason`: the next
decision reads the champion's standing from them. `promote` moves the alias by hand (`medgen promote`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medgen.config import Config
from medgen.errors import MedgenError

log = logging.getLogger(__name__)
DEFAULT_PROFILE = "full"  # params.yaml's base profile (medgen.params.build_config)
CANDIDATE = "candidate"  # alias and status of the newest version that did not become champion
# kind -> (checkpoint metric, "max" | "min"): what the producing stage selected its model on
SELECTION = {"classifier": ("val_auc", "max"), "generator": ("val_fd", "min")}
# a classify ensemble records its out-of-fold AUC instead: a different figure, never compared with val_auc
ALTERNATIVE = {"classifier": "cv_auc"}
_TAG = "medgen."


@dataclass(frozen=True)
class Standing:
    """What the champion decision knows about one model version."""

    profile: str
    flag: str
    metric: str
    mode: str  # "max": higher is better; "min": lower is better
    value: float | None  # None: the checkpoint records no selection metric

    def tags(self) -> dict[str, str]:
        value = "" if self.value is None else repr(self.value)
        return {
            f"{_TAG}profile": self.profile,
            f"{_TAG}flag": self.flag,
            f"{_TAG}selection_metric": self.metric,
            f"{_TAG}selection_mode": self.mode,
            f"{_TAG}selection_value": value,
        }

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> Standing | None:
        """The standing recorded on a version; None for versions registered before these tags existed."""
        try:
            raw = tags[f"{_TAG}selection_value"]
            return cls(
                tags[f"{_TAG}profile"],
                tags[f"{_TAG}flag"],
                tags[f"{_TAG}selection_metric"],
                tags[f"{_TAG}selection_mode"],
                float(raw) if raw else None,
            )
        except (KeyError, ValueError):
            return None


def standing(kind: str, checkpoint: dict[str, Any], cfg: Config) -> Standing:
    """A checkpoint's profile, flag and selection metric (as recorded by the stage that trained it).

    A checkpoint without a recorded profile (written before stages recorded it) is taken to share the
    export run's profile; that is logged.
    """
    config, scores = checkpoint.get("config") or {}, checkpoint.get("metrics") or {}
    metric, mode = SELECTION[kind]
    if ALTERNATIVE.get(kind) in scores:
        metric = ALTERNATIVE[kind]
    profile = config.get("profile")
    if not profile:
        profile = cfg.profile
        log.warning("checkpoint records no training profile; taking the export run's (%s)", profile)
    value = scores.get(metric)
    finite = isinstance(value, (int, float)) and math.isfinite(value)
    flag = str(config.get("flag") or cfg.data.flag)
    return Standing(str(profile), flag, metric, mode, float(value) if finite else None)


def decide(new: Standing, run_profile: str, champion: tuple[str, Standing | None] | None) -> tuple[bool, str]:
    """(becomes champion?, why). `champion` is (version, its standing) or None when there is none."""
    if run_profile != DEFAULT_PROFILE or new.profile != DEFAULT_PROFILE:
        return False, (
            f"trained/exported on profile {new.profile!r}/{run_profile!r}, not the default "
            f"{DEFAULT_PROFILE!r}: a smoke or test model never replaces the champion"
        )
    if new.value is None:
        return False, f"the checkpoint records no {new.metric} to compare"
    if champion is None:
        return True, f"no champion yet ({new.metric} {new.value:.4f})"
    version, old = champion
    if old is not None and old.flag != new.flag:
        return False, f"champion v{version} is for {old.flag!r}, this model for {new.flag!r}"
    if old is None or old.value is None or old.metric != new.metric:
        return False, f"champion v{version} records no comparable {new.metric}; move it by hand (medgen promote)"
    better = new.value >= old.value if new.mode == "max" else new.value <= old.value
    relation = (">=" if new.mode == "max" else "<=") if better else ("<" if new.mode == "max" else ">")
    verdict = f"{new.metric} {new.value:.4f} {relation} champion v{version}'s {old.value:.4f}"
    return better, verdict if better else f"{verdict} (not at least as good)"


def current(client: Any, name: str, alias: str) -> tuple[str, Standing | None] | None:
    """(version, standing) that `alias` points to; None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise
    return str(version.version), Standing.from_tags(version.tags)


def settle(cfg: Config, name: str, version: str, new: Standing) -> dict[str, Any]:
    """Tag the freshly registered `version` of `name` and move the champion alias to it only if `decide`
    says so (else alias `candidate`). Returns {"status", "reason", "champion": version the alias holds}."""
    import mlflow

    client, alias = mlflow.MlflowClient(), cfg.export.alias
    champion = current(client, name, alias)
    promoted, reason = decide(new, cfg.profile, champion)
    status = alias if promoted else CANDIDATE
    for key, value in {**new.tags(), f"{_TAG}status": status, f"{_TAG}reason": reason}.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, status, version)
    holder = version if promoted else (champion[0] if champion else None)
    log.log(
        logging.INFO if promoted else logging.WARNING,
        "%s v%s: %s (%s)",
        name,
        version,
        f"now {alias}" if promoted else f"{CANDIDATE}, {alias} stays {'v' + holder if holder else 'unset'}",
        reason,
    )
    return {"status": status, "reason": reason, "champion": holder}


def promote(cfg: Config, name: str, version: str) -> tuple[str | None, str]:
    """Point `export.alias` of registered model `name` at `version` by hand; returns (previous, new)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from medgen import tracking

    tracking.configure(cfg.tracking)
    client, alias = mlflow.MlflowClient(), cfg.export.alias
    try:
        client.get_model_version(name, str(version))
    except MlflowException:
        known = _versions(client, name)
        raise MedgenError(
            f"{name} has no version {version} (registered: {known or 'none'}; "
            f"store {tracking.tracking_uri(cfg.tracking)})"
        ) from None
    previous = current(client, name, alias)
    client.set_registered_model_alias(name, alias, str(version))
    client.set_model_version_tag(name, str(version), f"{_TAG}status", alias)
    client.set_model_version_tag(name, str(version), f"{_TAG}reason", "promoted by hand (medgen promote)")
    return (previous[0] if previous else None), str(version)


def _versions(client: Any, name: str) -> str:
    try:
        return ", ".join(sorted((str(v.version) for v in client.search_model_versions(f"name = '{name}'")), key=int))
    except Exception:  # noqa: BLE001 - only decorates an error message
        return ""


def register(kind: str, name: str, key: str, checkpoint: Path, cfg: Config, onnx_path: Path, json_path: Path) -> str:
    """A new version of registered model `name` (export target `key` of `kind`, from `checkpoint`); the champion
    alias moves to it only forward (`settle`).

    The version number and the alias decision depend on the registry's history, not on this run's inputs:
    they go to the log and MLflow (run tag medgen.registered.<key>, the version's tags), never into the
    export files or metrics, which DVC tracks as a function of code, data and params.
    """
    import mlflow

    from medgen.onnx_export import file_sha256
    from medgen.tracking import register_onnx
    from medgen.training import load_checkpoint

    version = register_onnx(onnx_path, name, [json_path])
    new = standing(kind, load_checkpoint(checkpoint), cfg)
    decision = settle(cfg, name, version, new)
    # the manifest names this version by the file's sha256 (medgen.manifest)
    mlflow.MlflowClient().set_model_version_tag(name, version, "medgen.sha256", file_sha256(onnx_path))
    mlflow.set_tag(f"medgen.registered.{key}", f"{name}/{version}@{decision['status']}")
    return version
