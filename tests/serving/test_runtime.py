"""Serving without torch or pickle, and the label check that needs the real exported models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from serving import runtime
from serving.contract import ModelError
from tests.conftest import ROOT
from tests.serving.conftest import serve_env

NO_TORCH = """
import pickle, sys
def refuse(*a, **k):
    raise AssertionError("pickle used at serve time")
pickle.load = pickle.loads = refuse
pickle.Unpickler = refuse
import serving.service  # the module bentoml serve imports
from serving import runtime
from serving.contract import ModelError
models = runtime.load_models()
x = runtime.to_model_input(np.zeros((3, 1, 28, 28), dtype=np.uint8))
assert runtime.classify_probs(models["classifier"], x).shape == (3, 2)
assert runtime.generate(models["generator"], 1, 4, 0).shape == (4, 1, 28, 28)
assert "torch" not in sys.modules, "torch imported at serve time"
print("ok", models["classifier"].source)
"""


def run_without_torch(env: dict[str, str]) -> str:
    code = "import numpy as np\n" + NO_TORCH
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_service_imports_and_runs_without_torch_or_pickle(export_dir):
    assert run_without_torch(serve_env(export_dir)).startswith("ok dir")


def test_missing_models_fail_clearly(tmp_path):
    with pytest.raises(ModelError, match="manifest.json: not found .*medgen stage export"):
        runtime.load_models(str(tmp_path))


def real_export_dir() -> Path | None:
    """Exported *real* models (not the reference stand-ins): $MEDGEN_REAL_EXPORT_DIR or models/export."""
    folder = Path(os.environ.get("MEDGEN_REAL_EXPORT_DIR", ROOT / "models" / "export"))
    try:
        models = runtime.load_models(str(folder))
    except ModelError:
        return None
    stand_in = any(m.metadata.get("model_class", "").startswith("medgen.models.reference") for m in models.values())
    return None if stand_in else folder


@pytest.mark.skipif(
    real_export_dir() is None,
    reason="needs the real exported classifier and generator "
    "(run the pipeline through `export`, or set MEDGEN_REAL_EXPORT_DIR)",
)
def test_generated_images_respect_the_label():
    """Images generated for label c are classified as c by the exported classifier more often than not."""
    models = runtime.load_models(str(real_export_dir()))
    for label in range(int(models["generator"].metadata["n_classes"])):
        images = runtime.generate(models["generator"], label, 128, seed=label)
        predicted = runtime.classify_probs(models["classifier"], runtime.to_model_input(images)).argmax(1)
        assert np.mean(predicted == label) >= 0.6, (
            f"label {label}: {np.mean(predicted == label):.2f} classified as asked"
        )


def test_registry_source_without_a_champion_is_one_line(mlflow_template, tmp_path, monkeypatch):
    """MEDGEN_MODEL_SOURCE=mlflow with nothing registered: a ModelError naming the model, not a traceback."""
    import shutil

    shutil.copy(mlflow_template, tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(ModelError, match="models:/medgen-classifier@champion: not loadable") as refused:
        runtime.load(source="mlflow")
    assert "\n" not in str(refused.value)
