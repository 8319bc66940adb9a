"""Model cards (Mitchell et al., "Model Cards for Model Reporting", FAT* 2019) for the exported models.

Inputs : the exported targets (key, kind, stem, registry_name, checkpoint: medgen.stages.export.Target) and their
         metadata JSON in the export folder; each checkpoint's `config`/`metrics`; the prepared dataset (split
         sizes, class balance); the metrics files of the stage that made each model (classify.metrics/details,
         augment.metrics, generate.metrics), used only when they describe that very checkpoint.
Outputs: <export.out_dir>/model_card.json (`{"schema": 1, "models": {key: card}, "commit", "code_dirty",
         "params_sha256"}`) and model_card.md (one section per model, Mitchell et al.'s headings); `log` puts
         them on the export run and each model's own card on the run of its registered version (tag
         `medgen.model_card` = sha256 of that card's JSON).
The files are a function of code, data and params (a DVC output): no timestamps, run ids or version numbers.
A figure the metrics files do not hold is written as "not measured", never guessed.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from medgen import data, manifest
from medgen.config import Config
from medgen.io import read_json, readable, write_json, write_text

SCHEMA = 1
NOT_MEASURED = "not measured"
SECTIONS = (
    ("model_details", "Model details"),
    ("intended_use", "Intended use"),
    ("factors", "Factors"),
    ("metrics", "Metrics"),
    ("evaluation_data", "Evaluation data"),
    ("training_data", "Training data"),
    ("quantitative_analyses", "Quantitative analyses"),
    ("ethical_considerations", "Ethical considerations"),
    ("caveats_and_recommendations", "Caveats and recommendations"),
)
CLASSIFY_SCORES = ("auc", "acc", "balanced_acc", "f1", "precision", "recall", "minority_recall")
CALIBRATION = ("ece", "brier", "nll")
GENERATION = ("fd_real_vs_synth", "fd_real_vs_real", "fd_ratio", "kid_real_vs_synth", "kid_real_vs_real", "c2st_acc")


def _read(path: str | Path) -> dict[str, Any] | None:
    """The JSON object at `path`, or None when it is absent or unreadable (then its figures are not measured)."""
    try:
        found = read_json(path) if readable(path).exists() else None
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _describes(source: str | Path, checkpoint: Path, recorded: dict, reported: dict, keys: tuple[str, ...]) -> bool:
    """Whether a metrics file written with `source` checkpoint describes `checkpoint`: the same file, and every
    figure the checkpoint records under `keys` equal to the file's (a stale or foreign file is not used)."""
    if Path(source).resolve() != Path(checkpoint).resolve():
        return False
    for key in keys:
        mine, theirs = recorded.get(key), reported.get(key)
        if isinstance(mine, (int, float)) and isinstance(theirs, (int, float)) and not math.isclose(mine, theirs):
            return False
    return True


def _value(block: dict, key: str) -> dict[str, Any]:
    """{"value", "ci95"} of `key` in `block` (ci95 None when the file holds no interval)."""
    return {"value": block[key], "ci95": block.get(f"{key}_ci95")}


def _mean(block: dict, metric: str) -> dict[str, Any]:
    """{"value", "ci95"} of a seed mean (`test_<metric>_mean` beside its interval `test_<metric>_ci95`)."""
    return {"value": block[f"test_{metric}_mean"], "ci95": block.get(f"test_{metric}_ci95")}


def _measured(block: dict, keys: tuple[str, ...]) -> dict[str, Any] | str:
    found = {k: _value(block, k) for k in keys if isinstance(block.get(k), (int, float))}
    return found or NOT_MEASURED


def _calibration(served: dict) -> dict[str, Any] | str:
    keys = tuple(f"{k}{suffix}" for k in CALIBRATION for suffix in ("", "_uncalibrated")) + ("ece_if_calibrated",)
    found = _measured(served, keys)
    if isinstance(found, dict) and isinstance(served.get("ece_calibration_p"), (int, float)):
        found["ece_calibration_p"] = served["ece_calibration_p"]  # p-value of the observed ECE if calibrated
    if isinstance(found, dict) and isinstance(served.get("calibrator"), dict):
        found["calibrator"] = served["calibrator"]
    return found


def _per_class(report: dict | None, class_names: list[str]) -> dict[str, Any] | str:
    rows = {name: report[name] for name in class_names if isinstance((report or {}).get(name), dict)}
    return rows or NOT_MEASURED


def _classifier_results(cfg: Config, key: str, checkpoint: Path, ckpt: dict, names: list[str]) -> dict[str, Any]:
    """Test figures with intervals, calibration, OOD and per-class rows for a classifier."""
    recorded = ckpt.get("metrics") or {}
    own = {"test": _measured(recorded, tuple(f"test_{m}" for m in CLASSIFY_SCORES)), "source": "checkpoint"}
    results: dict[str, Any] = {"calibration": NOT_MEASURED, "ood": NOT_MEASURED, "per_class": NOT_MEASURED}
    if key == "augmented_classifier":
        summary, arm = _read(cfg.augment.metrics) or {}, (ckpt.get("config") or {}).get("arm")
        fits = _describes(cfg.augment.checkpoint, checkpoint, {}, {}, ())
        arms = summary.get("arms") or {}
        if fits and arm in arms:
            results["arm"] = {
                "name": arm,
                "seed_means": {m: _mean(arms[arm], m) for m in CLASSIFY_SCORES if f"test_{m}_mean" in arms[arm]},
                "vs_baseline": (summary.get("vs_baseline") or {}).get(arm, NOT_MEASURED),
            }
        return own | results
    summary = _read(cfg.classify.metrics) or {}
    served = summary.get("served") or {}
    keys = ("test_auc", "test_acc", "test_balanced_acc")
    if not served or not _describes(cfg.classify.checkpoint, checkpoint, recorded, served, keys):
        return own | results
    details = _read(cfg.classify.details) or {}
    return {
        "source": str(cfg.classify.metrics),
        "test": _measured(served, keys),
        "seed_means": {m: _mean(summary, m) for m in CLASSIFY_SCORES if f"test_{m}_mean" in summary},
        "cross_validation": summary.get("cv") or NOT_MEASURED,
        "calibration": _calibration(served),
        "ood": served["ood"] if isinstance(served.get("ood"), dict) else NOT_MEASURED,
        "per_class": _per_class(details.get("classification_report"), names),
        "confusion": details.get("confusion") or NOT_MEASURED,
    }


def _generator_results(cfg: Config, checkpoint: Path, ckpt: dict) -> dict[str, Any]:
    """Fidelity of the generated images (FD, KID, C2ST; per class) from generate.metrics or the checkpoint."""
    recorded = ckpt.get("metrics") or {}
    report = _read(cfg.generate.metrics) or {}
    if report and _describes(cfg.generate.checkpoint, checkpoint, recorded, report, GENERATION):
        per_class = report.get("per_class") or NOT_MEASURED
        return {"source": str(cfg.generate.metrics), "test": _measured(report, GENERATION), "per_class": per_class}
    return {"source": "checkpoint", "test": _measured(recorded, GENERATION), "per_class": NOT_MEASURED}


def _training_data(dataset: data.Dataset) -> dict[str, Any]:
    """Split sizes and class balance of the prepared data the models were trained and tested on."""
    names = list(dataset.class_names)
    splits = {}
    for split in ("train", "val", "test"):
        labels = dataset.split(split).labels
        counts = data.class_counts(labels, dataset.n_classes)
        splits[split] = {
            "n": len(labels),
            "class_counts": {names[int(c)]: n for c, n in counts.items()},
            "class_fraction": {names[int(c)]: round(n / max(len(labels), 1), 4) for c, n in counts.items()},
        }
    return {"dataset": f"MedMNIST {dataset.flag}", "flag": dataset.flag, "splits": splits}


def _uses(kind: str, flag: str, shape: list[int]) -> dict[str, Any]:
    size = f"{shape[0]}x{shape[-1]}x{shape[-1]} (channels x height x width)"
    task = "classify" if kind == "classifier" else "generate synthetic"
    return {
        "primary_uses": [
            f"research and education on MedMNIST {flag}: {task} images at the trained size, {size}",
            "benchmarking the medgen pipeline (representation, classification, generation, augmentation)",
        ],
        "primary_users": "researchers, students and engineers working with MedMNIST",
        "out_of_scope": [
            "NOT a diagnostic device: not for screening, diagnosis, triage or any clinical decision",
            "not validated on any patient population, scanner or hospital; no regulatory clearance",
            *(
                [
                    f"images other than MedMNIST {flag} at {size}: the service resizes uploaded PNG/JPEG images, "
                    "which does not put other sizes, modalities or datasets in scope"
                ]
                if kind == "classifier"
                else [
                    "synthetic images as real patient data, or as evidence about real patients",
                    f"its images as stand-ins for any other dataset, modality or size than MedMNIST {flag} at {size}",
                ]
            ),
        ],
    }


def _caveats(kind: str, n_test: int, flag: str) -> list[str]:
    point = 100 / max(n_test, 1)
    common = [
        f"small test set: {n_test} images, so one image moves accuracy by {point:.2f} points; "
        "intervals are wide and differences of a few points are not resolvable",
        f"single source dataset (MedMNIST {flag}): no external validation on other sites, devices or populations",
        "images are downsampled MedMNIST versions: detail visible at full resolution is lost",
    ]
    if kind == "classifier":
        return common + [
            "classes are imbalanced: read balanced accuracy and AUC beside accuracy (majority-class baseline)",
            "probabilities are calibrated only when the calibration block says so",
            "the input guard (ood_score, in_distribution) was chosen and evaluated on digits, photographs, "
            "constant and noise images and corruptions of the test scans; scans from other devices, sites or "
            "modalities were not available, so in_distribution=true is no proof that an image is a valid input",
        ]
    return common + [
        "synthetic images are not real patients; fidelity is measured in medgen's own feature space, not with "
        "Inception features, so the figures are not comparable with published FID/KID",
    ]


def build(cfg: Config, target: Any, metadata: dict[str, Any], dataset: data.Dataset) -> dict[str, Any]:
    """The card of one exported model: `target` (key, kind, stem, registry_name, checkpoint), its ONNX metadata."""
    from medgen.training import load_checkpoint

    ckpt = load_checkpoint(target.checkpoint)
    config, names = ckpt.get("config") or {}, list(metadata.get("class_names") or dataset.class_names)
    shape = metadata.get("input_shape") or metadata.get("output_shape") or list(dataset.image_shape)
    if target.kind == "classifier":
        results = _classifier_results(cfg, target.key, Path(target.checkpoint), ckpt, names)
    else:
        results = _generator_results(cfg, Path(target.checkpoint), ckpt)
    commit, dirty = manifest.code_state()
    described = {k: config[k] for k in ("recipe", "arm", "seed", "variant", "stem_used", "tta") if k in config}
    if target.kind == "generator":  # which generator family: a GAN's checkpoint before "family" existed is a GAN
        described["family"] = metadata.get("family") or config.get("family") or "gan"
        if metadata.get("kind") == "denoiser":
            described |= {"sampler": "DDIM", "sampler_steps": metadata.get("default_steps")}
            described["guidance"] = metadata.get("default_guidance")
    training = _training_data(dataset)
    return {
        "model_details": {
            "name": target.stem,
            "kind": target.kind,
            "registry_name": target.registry_name,
            "file": f"{target.stem}.onnx",
            "onnx_sha256": metadata.get("sha256"),
            "architecture": (ckpt.get("model") or {}).get("class"),
            "input_shape" if target.kind == "classifier" else "output_shape": shape,
            "class_names": names,
            **({"members": len(config.get("members") or []) or 1} if target.kind == "classifier" else {}),
            "profile": config.get("profile", NOT_MEASURED),
            "training": described,
            "code_commit": commit,
            "code_dirty": dirty,
            "params_sha256": manifest.params_sha256(cfg),
        },
        "intended_use": _uses(target.kind, dataset.flag, shape),
        "factors": [
            "class (per-class results below); no patient, device or site attributes are available in MedMNIST, "
            "so performance across demographic or acquisition groups is unknown",
        ],
        "metrics": (
            [
                "AUC, accuracy, balanced accuracy with 95% stratified-bootstrap intervals over test images",
                "calibration (ECE, Brier, NLL) and out-of-distribution flagging when measured",
            ]
            if target.kind == "classifier"
            else [
                "Frechet distance and KID of synthetic vs train-real features beside held-out-real vs train-real",
                "C2ST accuracy (0.5: a classifier cannot tell synthetic from real)",
            ]
        ),
        "evaluation_data": {"split": "test", **training["splits"]["test"], "dataset": training["dataset"]},
        "training_data": training,
        "quantitative_analyses": results,
        "ethical_considerations": [
            "MedMNIST images are public, de-identified research images; no consent for clinical use is implied",
            "errors on the minority class (e.g. a missed malignancy) would be the costly ones in any clinical "
            "setting, which is one reason the model is out of scope there",
        ],
        "caveats_and_recommendations": _caveats(target.kind, training["splits"]["test"]["n"], dataset.flag),
    }


def _text(value: Any) -> str:
    """One value as Markdown text: numbers to 4 significant digits, {"value", "ci95"} as 'v (95% CI lo-hi)'."""
    if isinstance(value, bool) or value is None:
        return NOT_MEASURED if value is None else str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict) and set(value) == {"value", "ci95"}:
        ci = value["ci95"]
        interval = f" (95% CI {_text(ci[0])} to {_text(ci[1])})" if ci else " (no interval)"
        return _text(value["value"]) + interval
    if isinstance(value, (list, dict)):  # empty, or numbers only (`_leaf`)
        return "[" + ", ".join(_text(v) for v in value) + "]" if value else "none"
    return str(value)


def _leaf(value: Any) -> bool:
    """Written on one line: a scalar, a {"value", "ci95"} pair, a list of numbers or an empty list or dict."""
    if isinstance(value, dict):
        return not value or set(value) == {"value", "ci95"}
    if isinstance(value, list):
        return all(isinstance(v, (int, float)) for v in value)
    return True


def _lines(value: Any, depth: int = 0) -> list[str]:
    """Nested bullets for dicts and lists; leaves through `_text`."""
    pad = "  " * depth
    if _leaf(value):
        return [f"{pad}- {_text(value)}"]
    if isinstance(value, list):
        return [line for item in value for line in _lines(item, depth)]
    out = []
    for key, item in value.items():
        out += [f"{pad}- **{key}**: {_text(item)}"] if _leaf(item) else [f"{pad}- **{key}**:", *_lines(item, depth + 1)]
    return out


def render_markdown(document: dict[str, Any]) -> str:
    """The card document as Markdown: one `##` section per model, Mitchell et al.'s sections as `###`."""
    out = [
        "# Model card",
        "",
        f"Code commit `{document['commit']}`{' (with uncommitted changes)' if document.get('code_dirty') else ''}, "
        f"params sha256 `{document['params_sha256']}`. Research and education only: not a diagnostic device.",
    ]
    for key, card in document["models"].items():
        details = card["model_details"]
        out += ["", f"## {key}: `{details['file']}` ({details['registry_name']})"]
        for section, title in SECTIONS:
            out += ["", f"### {title}", "", *_lines(card[section])]
    return "\n".join(out) + "\n"


def document(cfg: Config, cards: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The model_card.json object over `cards` ({target key: card})."""
    commit, dirty = manifest.code_state()
    return {
        "schema": SCHEMA,
        "models": cards,
        "commit": commit,
        "code_dirty": dirty,
        "params_sha256": manifest.params_sha256(cfg),
    }


def _json(obj: dict[str, Any]) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"  # the bytes medgen.io.write_json writes


def write(cfg: Config, out_dir: str | Path, exported: list[Any], dataset: data.Dataset) -> dict[str, Any]:
    """<out_dir>/model_card.{json,md} for the `exported` targets (their <stem>.json metadata already written);
    returns the document written."""
    out = Path(out_dir)
    cards = {t.key: build(cfg, t, read_json(out / f"{t.stem}.json"), dataset) for t in exported}
    doc = document(cfg, cards)
    write_json(out / "model_card.json", doc)
    write_text(out / "model_card.md", render_markdown(doc))
    return doc


def log(doc: dict[str, Any], out_dir: str | Path, versions: dict[str, str]) -> None:
    """The card files to the active (export) run; each registered model's own card (json + md) to the run its
    version records, under model_card/<key>/, and its sha256 as the version's tag `medgen.model_card`.
    `versions`: {target key: registered version}."""
    import mlflow

    from medgen import tracking

    out = Path(out_dir)
    tracking.log_files([out / "model_card.json", out / "model_card.md"], "model_card")
    client = mlflow.MlflowClient()
    for key, version in versions.items():
        own = {**doc, "models": {key: doc["models"][key]}}
        name, text = own["models"][key]["model_details"]["registry_name"], _json(own)
        run_id = client.get_model_version(name, version).run_id
        client.log_text(run_id, text, f"model_card/{key}/model_card.json")
        client.log_text(run_id, render_markdown(own), f"model_card/{key}/model_card.md")
        client.set_model_version_tag(name, version, "medgen.model_card", hashlib.sha256(text.encode()).hexdigest())
