"""The documented serving commands and settings are the ones the code runs and reads (they cannot drift)."""

from __future__ import annotations

import sys

from serving.settings import DEFAULTS, env_name
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import container_check  # noqa: E402
import container_pipeline  # noqa: E402


def test_container_lines_are_printed_as_the_check_runs_them():
    page, readme = (ROOT / "docs" / "serving.md").read_text(), (ROOT / "README.md").read_text()
    for line in (container_check.DOC_BUILD, container_check.DOC_RUN, container_check.DOC_STOP):
        assert line in page, line
    assert container_check.DOC_BUILD in readme and container_check.DOC_RUN in readme
    for line in (container_check.DOC_BUILD_BAKED, container_check.DOC_RUN_BAKED):
        assert line in page and line in readme, line
    for line in (container_pipeline.DOC_BUILD, container_pipeline.DOC_PREPARE, container_pipeline.DOC_RUN):
        assert line in page, line  # `make container-check-pipeline` runs these lines through bash


def test_every_setting_is_documented_with_its_default():
    page = (ROOT / "docs" / "serving.md").read_text()
    for key, default in DEFAULTS.items():
        row = next((line for line in page.splitlines() if line.startswith(f"| `{env_name(key)}`")), "")
        assert row, f"{env_name(key)} missing from docs/serving.md"
        shown = row.split("|")[2].strip().replace(",", "")
        expected = {4 * 1024 * 1024: "4 MiB"}.get(
            default, f"{default:g}" if isinstance(default, float) else str(default)
        )
        assert shown == expected, (key, shown, expected)
