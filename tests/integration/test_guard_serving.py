"""The calibrated, guarded classify ensemble through export and a real `bentoml serve` (issue #18 item 4):
smoke classify on the real BreastMNIST, exported by the export stage's own code, served, and asked about a
handwritten digit and real test images."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from medgen import data, guard, manifest, ood_sets
from medgen.stages import classify, export, prepare
from medgen.training import load_model
from tests.serving.conftest import running
from tests.standins import save_generator

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def test_served_ensemble_flags_a_digit_and_serves_calibrated_probabilities(smoke_cfg, workdir):
    cfg = smoke_cfg(f"export.generator_checkpoint={workdir / 'generator.pt'}", "export.augmented_checkpoint=none.pt")
    prepare.run(cfg)
    summary = classify.run(cfg)
    save_generator(cfg.export.generator_checkpoint)
    real, _ = data.to_tensors(data.load_prepared(cfg.data).test)
    parity = {t.key: export.export_one(t, cfg, real.numpy())[0] for t in export.targets(cfg)}
    assert parity["classifier"]["max_abs_diff"] <= 1e-4  # logits and ood_score, batch 1/7/64
    manifest.write(cfg, cfg.export.out_dir)
    meta = json.loads((Path(cfg.export.out_dir) / "classifier.json").read_text())
    assert [o["name"] for o in meta["outputs"]] == ["logits", "ood_score"]
    threshold = summary["served"]["ood"]["threshold"]
    assert meta["ood"]["threshold"] == threshold and meta["calibrator"] == summary["served"]["calibrator"]

    model, _ = load_model(cfg.classify.checkpoint)
    test = data.load_prepared(cfg.data).test
    probs, scores = guard.predict(model, test.images, "cpu")
    inside = int(np.flatnonzero(scores <= threshold)[0])  # a real test image the checkpoint lets through
    digit = ood_sets.far((1, 28, 28), "report")["digits"][3]
    digit_score = guard.predict(model, digit[None], "cpu")[1][0]
    with running(Path(cfg.export.out_dir).resolve(), workdir) as server:
        answers = {}
        for name, image in (("test", test.images[inside]), ("digit", digit)):
            response = httpx.post(
                f"{server.url}/classify", content=_png(image), headers={"content-type": "image/png"}, timeout=60
            )
            assert response.status_code == 200, response.text
            (answers[name],) = response.json()["predictions"]
        batch = httpx.post(f"{server.url}/classify", json={"images": test.images[:16].tolist()}, timeout=60)
        info = httpx.get(f"{server.url}/metadata", timeout=30).json()["models"]["classifier"]
    assert answers["digit"]["in_distribution"] is False and answers["digit"]["ood_score"] > threshold
    assert answers["test"]["in_distribution"] is True
    assert answers["digit"]["ood_score"] == pytest.approx(digit_score, rel=1e-4)
    # the served probabilities are the calibrated ones, image for image
    assert np.allclose(answers["test"]["probabilities"], probs[inside], atol=1e-5)
    got = batch.json()["predictions"]
    assert np.allclose([p["probabilities"] for p in got], probs[:16], atol=1e-5)
    assert np.allclose([p["ood_score"] for p in got], scores[:16], rtol=1e-4)
    assert [p["in_distribution"] for p in got] == (scores[:16] <= threshold).tolist()
    assert info["ood"]["threshold"] == threshold and info["calibrator"]["kind"] == meta["calibrator"]["kind"]
