"""Stage `prepare`: fetch the raw data, validate it, write the prepared arrays, counts and montages.

Inputs : data/raw/<flag>.npz if present (at data.size), else data.source / $MEDGEN_DATA_SOURCE (an npz, or a
         folder with MedMNIST's <flag>_<size>.npz or cifar10/fashionmnist native files), else a download
         (medmnist; torchvision for cifar10/fashionmnist). Native files are converted to the MedMNIST
         layout with a validation split carved from train (recorded in the file's metadata).
Outputs: data/raw/<flag>.npz (DVC-tracked), data/prepared/<flag>.npz, metrics/prepare.json,
         plots/prepare/montage_class_<c>.png. MLflow experiment medgen/<flag>/prepare.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import mlflow

from medgen import data, plots, tracking
from medgen.config import Config
from medgen.io import write_json
from medgen.outputs import Output, output_file, output_folder
from medgen.training import set_seed

log = logging.getLogger(__name__)


def summarize(dataset: data.Dataset) -> dict[str, Any]:
    """Split sizes and per-class counts: the metrics DVC and MLflow show (plus how the file was made, if recorded)."""
    summary = {
        "flag": dataset.flag,
        "n_classes": dataset.n_classes,
        "class_names": {str(i): name for i, name in enumerate(dataset.class_names)},
        "n": {s: len(dataset.split(s)) for s in data.SPLITS},
        "class_counts": {s: data.class_counts(dataset.split(s).labels, dataset.n_classes) for s in data.SPLITS},
    }
    if dataset.metadata:  # e.g. the validation split carved from CIFAR-10's train set
        summary["metadata"] = dataset.metadata
    return summary


def write_montages(dataset: data.Dataset, per_class: int, out_dir: Path) -> list[Path]:
    """One montage per class of the first `per_class` training images of that class."""
    paths = []
    for label in range(dataset.n_classes):
        images = dataset.train.images[dataset.train.labels == label][:per_class]
        if len(images):
            paths.append(plots.save_png(plots.montage(images), out_dir / f"montage_class_{label}.png"))
    return paths


def outputs(cfg: Config) -> list[Output]:
    """What this stage writes (dvc.yaml's outs, metrics and plots of `prepare`)."""
    return [
        output_file(cfg.data.raw_path),
        output_file(cfg.data.prepared_path),
        output_file(cfg.prepare.metrics),
        output_folder(cfg.prepare.plots_dir),
    ]


def run(cfg: Config) -> dict[str, Any]:
    """The stage: read and validate the data, write the prepared splits, their metrics and montages."""
    set_seed(cfg.seed)
    with tracking.stage_run(cfg, "prepare", params_sections=("prepare",)):
        raw, origin = data.fetch_raw(cfg.data)
        dataset = data.load_npz(raw, cfg.data)
        digest = data.file_md5(raw)
        mlflow.set_tags(
            {
                "medgen.data_md5": digest,
                "medgen.data_origin": origin,
                "medgen.image_shape": "x".join(map(str, dataset.image_shape)),
            }
        )
        data.save_npz(dataset, cfg.data.prepared_path)
        metrics = summarize(dataset)
        montages = write_montages(dataset, cfg.prepare.montage_per_class, Path(cfg.prepare.plots_dir))
        write_json(cfg.prepare.metrics, metrics)
        mlflow.log_metrics(tracking.numeric_metrics({"n": metrics["n"], "class_counts": metrics["class_counts"]}))
        tracking.log_files(montages, "montages")
        tracking.log_dict(metrics, "prepare.json")
    log.info("prepared %s from %s: %s", cfg.data.flag, origin, metrics["n"])
    return metrics
