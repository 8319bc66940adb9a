"""One Optuna worker process for test_scale_out: joins the shared study and runs trials until it holds N_TRIALS.

    python optuna_worker.py PARAMS_YAML PARENT_RUN_ID N_TRIALS
Storage and tracking come from the environment ($MEDGEN_OPTUNA_STORAGE, $MLFLOW_TRACKING_URI), as on a
real worker machine. The objective is a cheap function of the pipeline's usual names (latent_dim, k, lr).
"""

import sys
import time

import optuna

from medgen import search
from medgen.params import load_config


def objective(trial: optuna.Trial) -> float:
    latent_dim = trial.suggest_categorical("latent_dim", [8, 16, 32, 64])
    k = trial.suggest_int("k", 1, 15)
    lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    time.sleep(0.05)  # long enough for the two workers' trials to interleave
    return 1.0 / (1 + abs(k - 7)) + latent_dim / 640 - abs(lr - 0.01)


if __name__ == "__main__":
    params, parent_run_id, n_trials = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cfg = load_config(params)
    study = search.open_study(cfg, "scale", {"test": "scale"}, suffix="workers")
    search.optimize(study, objective, n_trials=n_trials, parent_run_id=parent_run_id)
