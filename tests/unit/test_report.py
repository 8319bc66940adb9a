"""`medgen report` on metrics files in the format the stages write now (built with medgen.stats, as the
classify, represent and augment stages build them), on old files without intervals, and on missing ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medgen import calibration, report, stats
from medgen.cli import main
from medgen.params import load_config
from medgen.stages import STAGES
from tests.conftest import ROOT

LABELS = np.array([0] * 42 + [1] * 114)  # BreastMNIST's test split: 42 malignant, 114 normal/benign
SCORES, COMPARED = ("acc", "auc", "balanced_acc"), ("auc", "balanced_acc")


def _probs(strength: float, seed: int) -> np.ndarray:
    """(156, 2) probabilities of a classifier whose logit separates the classes by `strength` (plus noise)."""
    rng = np.random.default_rng(seed)
    logit = (2 * LABELS - 1) * strength + rng.normal(0.0, 1.0, len(LABELS))
    p1 = 1.0 / (1.0 + np.exp(-logit))
    return np.stack([1 - p1, p1], axis=1)


def _write(root: Path, rel: str, obj: object) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _classify(weights: np.ndarray) -> dict:
    members = [_probs(1.5, s) for s in range(3)]
    served = np.mean(members, axis=0)
    scored = stats.ensemble(LABELS, [served], ("acc", "auc", "balanced_acc"), weights)
    return {
        "seeds": 1,
        "members": 3,
        **stats.describe(LABELS, members, SCORES, weights),
        "served": {**{f"test_{k}": v for k, v in scored.items()}, "members": 3, "views": ["identity"]},
    }


def _represent(weights: np.ndarray) -> dict:
    """As the represent stage: one KNN per method; vae_conv wins cross-validation, ae_conv wins test."""
    methods = {"pca": _probs(1.0, 10), "vae_conv": _probs(1.1, 11), "ae_conv": _probs(3.0, 12)}
    entries = {}
    for (m, p), cv in zip(methods.items(), (0.70, 0.72, 0.60), strict=True):
        whole = stats.weighted_scores(LABELS, p, np.ones((1, len(LABELS))))
        scores = {f"test_{k}": float(whole[k][0]) for k in SCORES}
        entries[m] = {"cv_balanced_acc": cv, "k": 3, "latent_dim": 8, **scores}
    family = {
        m: {f"test_{k}": stats.compare(LABELS, [p], [methods["pca"]], k, weights) for k in COMPARED}
        for m, p in methods.items()
        if m != "pca"
    }
    for m, found in stats.decide(family).items():
        entries[m]["vs_pca"] = found
    return entries


def _augment(weights: np.ndarray) -> dict:
    """As the augment stage: a strong `synthetic` arm against a weaker baseline, 3 seeds each."""
    arms = {"baseline": [_probs(1.5, s) for s in range(3)], "synthetic": [_probs(3.0, s + 20) for s in range(3)]}
    compared = {
        "synthetic": {
            f"test_{k}": stats.compare(LABELS, arms["synthetic"], arms["baseline"], k, weights) for k in COMPARED
        }
    }
    described = {
        a: {"n_train": 546, "val_auc_mean": 0.9, **stats.describe(LABELS, p, COMPARED, weights)}
        for a, p in arms.items()
    }
    return {
        "seeds": 3,
        "arms": described,
        "vs_baseline": stats.decide(compared),
        "rule": stats.rule(2),
        "best_arm": "synthetic",
        "synthetic_beats_baseline": True,
    }


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkout whose metrics files have intervals and decided comparisons (classify, represent, augment)."""
    root = tmp_path_factory.mktemp("fresh")
    shutil.copy(ROOT / "params.yaml", root / "params.yaml")
    (root / "README.md").write_text(f"# x\n\n{report.BEGIN}\nold table\n{report.END}\n\nafter\n")
    weights = stats.draw(LABELS)
    _write(root, "metrics/classify.json", _classify(weights))
    _write(root, "metrics/represent.json", _represent(weights))
    _write(root, "metrics/augment.json", _augment(weights))
    return root


def _render(root: Path) -> report.Rendered:
    return report.render(root, report.sources(load_config(root / "params.yaml"), STAGES))


def test_intervals_and_decisions_reach_the_table(fresh: Path):
    classify = json.loads((fresh / "metrics/classify.json").read_text())
    table = _render(fresh).table
    lo, hi = classify["test_auc_ci95"]
    assert f"| {classify['test_auc_mean']:.3f} ± {classify['test_auc_std']:.3f} | [{lo:.3f}, {hi:.3f}] |" in table
    served = classify["served"]
    lo, hi = served["test_auc_ci95"]
    verdict = "target ≥ 0.92 met" if served["test_auc"] >= 0.92 else "**target ≥ 0.92 missed**"
    assert f"| {served['test_auc']:.3f} | [{lo:.3f}, {hi:.3f}] | {verdict} |" in table
    augment = json.loads((fresh / "metrics/augment.json").read_text())["vs_baseline"]["synthetic"]["test_auc"]
    assert augment["significant"] is True  # a strong arm against a weak one: the rule must find it
    lo, hi = augment["ci95"]
    assert f"(diff {augment['diff']:+.3f}) | [{lo:.3f}, {hi:.3f}] | **significant**" in table
    # the learned method shown is the best by cross-validation (vae_conv, 0.72), not the best on test (ae_conv)
    assert "representation `vae_conv`" in table and "`ae_conv`" not in table
    represent = json.loads((fresh / "metrics/represent.json").read_text())["vae_conv"]["vs_pca"]["test_auc"]
    assert represent["significant"] is False
    assert f"not significant (Holm p {represent['p_holm']:.3f})" in table
    # missing files are lines, not errors
    assert "- `metrics/generate.json`: missing (run `dvc repro generate`)" in table


def test_the_page_holds_every_comparison_and_is_deterministic(fresh: Path):
    first, second = _render(fresh), _render(fresh)
    assert first == second
    page = first.page
    assert page.count("`vae_conv` - `pca`") == 2 and page.count("`ae_conv` - `pca`") == 2
    assert "A synthetic arm significantly better than baseline: **yes**." in page
    assert "| accuracy | " in page and "The served model: an ensemble of 3 fold models" in page


def test_the_cli_writes_both_files_then_check_passes(fresh: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.chdir(fresh)
    assert main(["report"]) == 0
    printed = capsys.readouterr().out
    readme = (fresh / "README.md").read_text()
    assert printed.strip() in readme and "old table" not in readme and readme.endswith("\n\nafter\n")
    assert (fresh / "docs/results.md").read_text() == _render(fresh).page
    assert main(["report", "--check"]) == 0


def test_no_metrics_at_all_is_one_line_per_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "README.md").write_text(f"{report.BEGIN}\n{report.END}\n")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/classify.json").write_text('{"seeds": 3, "test_auc_mean": 0.8')  # truncated
    monkeypatch.chdir(tmp_path)
    assert main(["report"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("No results: no metrics file could be read.")
    assert "- `metrics/classify.json`: unreadable (JSONDecodeError); run `dvc repro classify` again" in out
    assert out.count("missing (run `dvc repro") == 5


def test_readme_without_markers_is_an_error_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "README.md").write_text("# no markers\n")
    monkeypatch.chdir(tmp_path)
    assert main(["report"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("medgen: error: README.md: needs exactly one `<!-- results:begin -->`")
    assert err.count("\n") == 1
    assert not (tmp_path / "docs").exists()  # nothing half-written


@pytest.mark.parametrize(
    "value, shown", [(0.12345, "0.123"), (3, "3"), (float("nan"), "n/a"), ("x", "n/a"), (True, "n/a")]
)
def test_numbers(value, shown):
    assert report.num(value) == shown


def test_p_values_and_intervals():
    assert report.pval(0.0004) == "<0.001" and report.pval(0.04) == "0.040"
    assert report.ci([0.1, 0.25]) == "[0.100, 0.250]" and report.ci(None) == "not in file"
    assert report.decision({"significant": False, "p_holm": 0.5}) == "not significant (Holm p 0.500)"
    assert report.decision({"diff": 0.1}) == "no paired test in file"


def test_calibration_and_guard_rows_state_their_targets():
    labels = np.array([0, 1] * 40)
    probs = np.column_stack([1 - np.linspace(0.05, 0.95, 80), np.linspace(0.05, 0.95, 80)])
    served = {
        **calibration.scores(labels, probs),
        **calibration.scores(labels, probs[::-1], "_uncalibrated"),
        "calibrator": {"kind": "bias", "temperature": 1.9, "bias": [0.3, -0.3], "cv_nll": {"none": 0.5, "bias": 0.4}},
        "ood": {
            "method": "mahalanobis_stage1",
            "threshold": 80.0,
            "keep": 0.95,
            "selection": {"mahalanobis_stage1": 0.99, "msp": 0.5},
            "test_flagged": 0.125,
            "sets": {
                "digits": {"auroc": 1.0, "flagged": 1.0, "n": 10, "kind": "far"},
                "noise": {"auroc": 0.94, "flagged": 0.9, "n": 10, "kind": "far"},
                "rot90": {"auroc": 0.5, "flagged": 0.1, "n": 10, "kind": "corruption"},
            },
        },
    }
    rows = {r[0]: r for r in report.guard_rows(served)}
    ece = rows["served classifier: test ECE (15 bins), calibrated"]
    assert ece[1] == f"{served['ece']:.3f}" and ("met" in ece[3]) == (served["ece"] <= 0.05)
    assert rows["input guard: lowest far-OOD AUROC (noise)"][3] == "**target ≥ 0.95 missed**"  # rot90 is not far
    assert rows["input guard: real test images flagged"][1:] == ["12.5%", "—", "**target ≤ 10% missed**"]
    lines = "\n".join(report.guard_section(served))
    assert "calibrator `bias`" in lines and "| rot90 | corruption | 10 | 0.500 | 10.0% |" in lines
    assert "Perfectly calibrated" not in lines  # files from before the consistency figures
    served |= calibration.consistency(probs, served["ece"], draws=200)
    lines = "\n".join(report.guard_section(served))
    assert f"p-value is {served['ece_calibration_p']:.2f}" in lines and "Perfectly calibrated" in lines
    assert report.guard_rows({}) == [] and report.guard_section({}) == []  # files from before #18


def test_every_generator_trained_gets_a_row_and_the_choice_is_stated():
    entry = {
        "fd_ratio": 3.3,
        "kid_ratio": 1.4,
        "c2st_acc": 0.70,
        "memorization_share": 0.0,
        "per_class": {"0": {"fd_ratio": 7.7}, "1": {"fd_ratio": 3.3}},
    }
    m = {
        "variant": "acgan",
        **entry,
        "selection": {"rule": "lowest FD of a train-sized synthetic set", "chosen": "acgan"},
        "variants": {
            "acgan": {**entry, "selection": {"fd": 0.169, "val_memorization_share": 0.0}},
            "ddpm": {**entry, "fd_ratio": 9.6, "selection": {"fd": 0.320, "val_memorization_share": 0.02}},
        },
    }
    lines = "\n".join(report.generate_section(m, {}))
    assert "| `acgan` (chosen) | 0.169 | 0.000 | 3.3× |" in lines
    assert "| `ddpm` | 0.320 | 0.020 | 9.6× |" in lines and "7.7×" in lines
    assert "Choice: lowest FD of a train-sized synthetic set." in lines
    assert report.variants_table({"variant": "acgan"}) == []  # files from before the families
    rows = report.generate_rows(m)
    assert rows[-1][0].startswith("generator: memorisation share") and rows[-1][-1] == "target met"
    assert [r[2] for r in rows[1:3]] == ["—", "—"]  # files from before the draws
    m |= {"fd_draws": 10, "fd_ratio_range95": [1.5, 6.25]}
    m["per_class"]["0"]["fd_ratio_range95"] = [5.0, 12.0]
    rows = report.generate_rows(m)
    assert rows[1][1:] == ["3.3×", "[1.5×, 6.2×] over 10 draws", "**target missed**"]
    assert (
        rows[2][0].startswith("generator: worst class FD ratio (class 0")
        and rows[2][2] == "[5.0×, 12.0×] over 10 draws"
    )
    m["fd_ratio"], m["per_class"]["0"]["fd_ratio"] = 2.5, 4.5  # means under the targets, ranges past them
    m["per_class"]["1"]["fd_ratio"] = 1.0
    m["per_class"]["0"]["fd_ratio_range95"] = [2.0, 7.5]
    rows = report.generate_rows(m)
    assert rows[1][-1] == "met by the mean only (draws reach 6.2×)"
    assert rows[2][-1] == "met by the mean only (draws reach 7.5×)"
    m["fd_ratio_range95"] = [1.5, 2.9]
    assert report.generate_rows(m)[1][-1] == "target met"
