"""`represent.sampler: random` (the assignment's random search): every trial is a seeded uniform draw,
so the points a study visits do not depend on the values earlier trials returned (TPE's do)."""

import optuna
import pytest

from medgen import search
from medgen.config import RepresentConfig
from medgen.errors import ConfigError
from medgen.params import build_config


def visit(n_startup: int, score, n: int = 12) -> list[tuple[int, float]]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=search.TrialSeededSampler(42, 0, n_startup))

    def objective(trial: optuna.Trial) -> float:
        k, lr = trial.suggest_int("k", 1, 100), trial.suggest_float("lr", 1e-4, 1e-2, log=True)
        return score(k, lr)

    study.optimize(objective, n_trials=n)
    return [(t.params["k"], round(t.params["lr"], 12)) for t in study.trials]


def test_random_points_ignore_the_objective_tpe_points_do_not():
    up, down = (lambda k, lr: k), (lambda k, lr: -k)
    random_up, random_down = visit(search.RANDOM_SEARCH, up), visit(search.RANDOM_SEARCH, down)
    assert random_up == random_down and len(set(random_up)) == 12
    tpe_up, tpe_down = visit(5, up), visit(5, down)
    assert tpe_up[:5] == tpe_down[:5] == random_up[:5]  # the same seeded start-up draws
    assert sum(k for k, _ in tpe_up[5:]) > sum(k for k, _ in tpe_down[5:])  # then TPE follows the values


def test_open_study_wires_the_sampler(workdir):
    cfg = build_config({"tracking": {"store_dir": str(workdir / "mlruns")}})
    study = search.open_study(cfg, "unit", {"seed": 42, "section": {"sampler": "random"}}, sampler="random")
    assert study.sampler.n_startup_trials == search.RANDOM_SEARCH
    assert search.open_study(cfg, "unit", {"seed": 42}).sampler.n_startup_trials == 5
    with pytest.raises(ValueError, match="sampler must be one of"):
        search.open_study(cfg, "unit", {"seed": 42}, sampler="grid")
    with pytest.raises(ConfigError, match="represent.sampler: must be tpe or random"):
        RepresentConfig(sampler="grid")
