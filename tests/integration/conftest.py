"""Fixtures for the Prefect flow tests: one Prefect test server for the whole session (it starts an API
subprocess, several seconds each time; DESIGN.md "Known traps")."""

import pytest


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture
def export_standins(workdir):
    """Stand-in checkpoints at the paths `export` reads (the workdir's params), so whole-pipeline tests
    can run `export` before the classify/generate stages exist. Remove once those stages produce them."""
    from medgen.config import load_config
    from tests.standins import save_classifier, save_generator

    cfg = load_config(workdir / "params.yaml", profile="smoke")
    save_classifier(workdir / cfg.export.classifier_checkpoint)
    save_generator(workdir / cfg.export.generator_checkpoint)
    return cfg
