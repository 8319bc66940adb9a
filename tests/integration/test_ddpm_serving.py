"""A diffusion generator through the export stage's code and a real `bentoml serve` (issue #12 part 2): a tiny
denoiser checkpoint as the generate stage writes it, exported beside the stand-in classifier and listed in the
manifest, served; /generate answers in the GAN's format, seeded, and /metadata names the generator."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from serving import runtime
from tests.serving.conftest import export_standins, running, start_expecting_exit
from tests.standins import save_denoiser

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, breastmnist_npz) -> Path:
    write = lambda path: save_denoiser(path, steps=4, guidance=1.0)  # noqa: E731
    return export_standins(tmp_path_factory.mktemp("ddpm-export"), breastmnist_npz, write_generator=write)


def test_served_denoiser_generates_seeded_images_and_names_itself(folder, tmp_path):
    local = runtime.load_models(str(folder))["generator"]  # the same files, in process
    with running(folder, tmp_path) as server:
        url = server.url
        meta = httpx.get(f"{url}/metadata", timeout=30).json()
        arrays = httpx.post(f"{url}/generate", json={"label": 1, "n": 3, "seed": 7, "format": "array"}, timeout=60)
        png = [httpx.post(f"{url}/generate", json={"label": 0, "n": 5, "seed": 3}, timeout=60) for _ in range(2)]
        fewer = httpx.post(f"{url}/generate", json={"label": 1, "n": 3, "seed": 7, "steps": 2, "format": "array"})
        bad = {
            "steps=0": httpx.post(f"{url}/generate", json={"label": 0, "steps": 0}, timeout=30),
            "steps=1000": httpx.post(f"{url}/generate", json={"label": 0, "steps": 1000}, timeout=30),
            "steps='4'": httpx.post(f"{url}/generate", json={"label": 0, "steps": "4"}, timeout=30),
            "guidance=-1": httpx.post(f"{url}/generate", json={"label": 0, "guidance": -1}, timeout=30),
        }
        assert "generator (diffusion) 1x28x28" in server.log_text()

    generator = meta["models"]["generator"]
    assert (generator["family"], generator["variant"], generator["kind"]) == ("diffusion", "ddpm", "denoiser")
    assert (generator["default_steps"], generator["default_guidance"]) == (4, 1.0)
    spec = meta["input_spec"]["generate"]
    assert spec["generator"]["family"] == "diffusion" and spec["generator"]["source"] == "dir"
    assert spec["steps"] == "optional integer 1..50 (default 4)" and spec["returns"] == [1, 28, 28]

    assert arrays.status_code == 200, arrays.text
    body = arrays.json()
    images = np.asarray(body["images"], dtype=np.uint8)
    assert images.shape == (3, 28, 28) and (body["n"], body["channels"], body["size"]) == (3, 1, 28)
    assert (body["family"], body["steps"], body["guidance"]) == ("diffusion", 4, 1.0)
    assert np.array_equal(images, runtime.channels_last(runtime.generate(local, 1, 3, 7)))
    assert fewer.status_code == 200 and fewer.json()["steps"] == 2
    assert not np.array_equal(np.asarray(fewer.json()["images"], dtype=np.uint8), images)

    assert png[0].status_code == 200 and png[0].content == png[1].content  # same seed, same bytes
    grid = Image.open(io.BytesIO(base64.b64decode(png[0].json()["png_base64"])))
    assert grid.mode == "L" and grid.size == (3 * 30 + 2, 2 * 30 + 2)  # 5 tiles: 3 x 2 grid, 2 px gutters

    for what, response in bad.items():
        assert response.status_code == 422, (what, response.status_code, response.text)
        assert ("steps" if "steps" in what else "guidance") in response.json()["error"], what


def test_a_step_bound_below_the_exported_default_stops_the_service(folder):
    code, output, _ = start_expecting_exit(folder, MEDGEN_MAX_STEPS="3")
    assert code == 1 and "MEDGEN_MAX_STEPS=3 is below the served denoiser's default_steps (4)" in output, output[-2000:]


def test_fuzzed_generate_bodies_get_no_5xx_from_a_denoiser(folder, tmp_path):
    """tests/serving/test_fuzz.py's schemathesis run, on /generate of a diffusion generator (steps, guidance)."""
    import collections

    import requests
    import schemathesis
    from schemathesis.generation.modes import GenerationMode

    from tests.serving.test_fuzz import fuzz

    with running(folder, tmp_path) as server, requests.Session() as session:
        schema = schemathesis.openapi.from_url(f"{server.url}/docs.json")
        (operation,) = [r.ok() for r in schema.get_all_operations() if r.ok().path == "/generate"]
        counts: collections.Counter = collections.Counter()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(operation, mode, server.url, session, counts, 30)
        assert session.get(f"{server.url}/healthz", timeout=10).status_code == 200
    statuses = {status for (_, _, status) in counts}
    assert 200 in statuses and 422 in statuses and max(statuses) < 500, counts
