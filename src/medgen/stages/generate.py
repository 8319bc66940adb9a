"""Stage `generate`: train two generator families, choose one, sample the synthetic set, judge every candidate.

Inputs : data/prepared/<flag>.npz.
Outputs: generate.feature_checkpoint (metric feature net, a small CNN trained on the real train split),
         generate.checkpoint (the chosen generator, rebuilt by medgen.training.load_model: a GAN's EMA
         generator or the diffusion model's EMA denoiser), <generate.samples_dir>/<flag>/samples.npz
         (samples_per_class per class), generate.metrics, generate.plots_dir (history, per-class samples,
         GAN grids per checkpoint, the 16 closest sample/training pairs of each candidate).
Search : the GAN (medgen.gan_search: variant, lr_g, lr_d, beta1) and the diffusion model (medgen.ddpm_training:
         guidance and DDIM steps; lr and width in the gpu profile), each its own Optuna study; objective =
         Fréchet distance (feature net space) between train images and val-sized synthetic samples.
Choice : generation.choose: the lowest val FD of a fresh draw among candidates whose memorisation share
         (against val images) is <= generate.max_memorization; generate.select forces a family.
Metrics: for the chosen generator at top level and for each candidate under `variants`: FD/KID ratios to
         held-out real (val + test) vs train, per class, C2ST, precision/recall/density/coverage and the
         memorisation share. Test images only enter this report, never a choice.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import mlflow
import torch

from medgen import data, ddpm_training, gan_search, generation, synthetic, tracking, workers
from medgen.config import Config
from medgen.io import output_files, remove_output, write_json
from medgen.outputs import Output, output_file, output_folder
from medgen.training import pick_device, save_model, set_seed, torch_threads

log = logging.getLogger(__name__)


def outputs(cfg: Config) -> list[Output]:
    """What this stage writes (dvc.yaml's outs, metrics and plots of `generate`)."""
    g = cfg.generate
    return [
        output_file(g.checkpoint),
        output_file(g.feature_checkpoint),
        output_file(synthetic.samples_path(cfg)),
        output_file(g.metrics),
        output_folder(g.plots_dir),
    ]


def train_candidates(cfg: Config, real: generation.Real, device: torch.device, run_id: str) -> list:
    """The GAN candidate (searched, trained) and the diffusion one when generate.ddpm, each judged.

    With generate.jobs = 2 the diffusion model trains and has its sampler searched in a worker process
    (medgen.workers) while this process searches and trains the GAN, and the judge's diffusion sampling is
    shared between the two. Every fit and draw is seeded on its own, so the candidates equal those of one
    process (tests/integration/test_generate.py); on 2 cores the stage takes about as long as its diffusion
    part alone."""
    g = cfg.generate
    if not g.ddpm or g.jobs < 2:
        candidates = [gan_search.candidate(cfg, real, device, run_id)]
        if g.ddpm:
            candidates.append(ddpm_training.candidate(cfg, real, device, run_id))
        for candidate in candidates:
            generation.judge(cfg, candidate, real)
        return candidates
    with workers.process_pool(1, g.threads) as executor:
        future = executor.submit(_diffusion_candidate, cfg, generation.portable(real), str(device), run_id)
        gan = gan_search.candidate(cfg, real, device, run_id)
        generation.judge(cfg, gan, real)
        log.info("generate: GAN done; waiting for the diffusion model's worker")
        diffusion = future.result()
        diffusion.module.to(device)  # the sampler holds the same module
        generation.judge(cfg, diffusion, real, executor)
    return [gan, diffusion]


def _diffusion_candidate(cfg: Config, real: generation.Real, device: str, run_id: str) -> generation.Candidate:
    """In a worker: the diffusion candidate (trials logged as MLflow runs under run_id), returned on the CPU."""
    tracking.configure(cfg.tracking)
    with torch_threads(cfg.generate.threads):
        candidate = ddpm_training.candidate(cfg, generation.on_device(real, device), torch.device(device), run_id)
    candidate.module.cpu()
    return candidate


def run(cfg: Config) -> dict[str, Any]:
    """The stage: feature net, GAN search and final fit, samples, quality report, checkpoints and figures."""
    with torch_threads(cfg.generate.threads):
        return _run(cfg)


def _run(cfg: Config) -> dict[str, Any]:
    set_seed(cfg.seed)
    gcfg = cfg.generate
    device = pick_device(gcfg.device)
    with tracking.stage_run(cfg, "generate", params_sections=("generate",)) as stage:
        dataset = data.load_prepared(cfg.data)
        generation.requested_labels(gcfg, dataset.n_classes)  # a bad label fails before any training
        started = time.perf_counter()
        for stale in output_files(gcfg.plots_dir, "closest_pairs_*.png"):
            remove_output(stale)
        real = generation.prepare_real(cfg, dataset, device)
        candidates = train_candidates(cfg, real, device, stage.info.run_id)
        chosen, why = generation.choose(candidates, gcfg.select, gcfg.max_memorization)
        report = chosen.report
        # no timings in the metrics file (same inputs, same file): they go to MLflow and the log
        result = {
            "variant": chosen.name,
            "family": chosen.family,
            **report,
            **chosen.result,
            "selection": {"rule": why, "chosen": chosen.name, **{c.name: c.selection for c in candidates}},
            "variants": {c.name: generation.variant_entry(c) for c in candidates},
        }
        extra = {
            "variant": chosen.name,
            "family": chosen.family,
            **chosen.config,
            "n_classes": dataset.n_classes,
            "class_names": list(dataset.class_names),
            "image_shape": list(dataset.image_shape),
            "flag": cfg.data.flag,
            "profile": cfg.profile,
        }
        selected = {"val_fd": chosen.val_fd}  # what export's champion rule compares
        save_model(
            gcfg.checkpoint,
            chosen.module,
            chosen.init_kwargs,
            config=asdict(gcfg) | extra,
            metrics=tracking.numeric_metrics(report) | selected,
        )
        figures = generation.write_outputs(cfg, chosen)
        write_json(gcfg.metrics, result)
        mlflow.log_params({"chosen.variant": chosen.name, **{f"chosen.{k}": v for k, v in chosen.config.items()}})
        seconds = {c.name: c.seconds for c in candidates} | {"total": time.perf_counter() - started}
        mlflow.log_metrics(tracking.numeric_metrics(report) | {f"seconds_{k}": v for k, v in seconds.items()})
        pairs = output_files(gcfg.plots_dir, "closest_pairs_*.png")
        tracking.log_files([*figures, *pairs, *output_files(gcfg.plots_dir, "grid_epoch_*.png")], "plots")
        tracking.log_files([Path(gcfg.checkpoint)], "model")
        tracking.log_dict(result, "generate.json")
    for c in candidates:
        log.info(
            "generate: %s fd %.3g (train-sized set), fd ratio %.3g, c2st %.3f, memorisation %.3f; %.0f s",
            c.name,
            c.selection["fd"],
            c.report["fd_ratio"],
            c.report["c2st_acc"],
            c.report.get("memorization_share", float("nan")),
            c.seconds,
        )
    log.info("generate: chosen %s (%s)", chosen.name, why)
    return result
