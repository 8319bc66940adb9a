"""Fixtures for the Prefect flow tests: one Prefect test server for the whole session (it starts an API
subprocess, several seconds each time; DESIGN.md "Known traps")."""

import pytest


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield
