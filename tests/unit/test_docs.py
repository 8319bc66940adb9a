"""README.md and docs/ cannot drift: their numbers are regenerated from the committed metrics files and must
match byte for byte, every relative link must resolve, and README stays a short front door."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from medgen import report
from medgen.cli import build_parser, main
from tests.conftest import ROOT

PAGE, README = "docs/results.md", "README.md"
DOCS = [ROOT / README, *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
FRONT_DOORS = (
    "pipeline",
    "prefect",
    "mlflow",
    "serving",
    "security",
    "scale-out",
    "reliability",
    "statistics",
    "shapes",
    "diffusion",
)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def broken_links(page: Path) -> list[str]:
    """Relative links in `page` (outside code blocks) whose file, or heading anchor in a Markdown file, is missing."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    found = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked (no network in tests)
            continue
        name, _, anchor = target.partition("#")
        path = (page.parent / name) if name else page
        if not path.exists():
            found.append(target)
        elif anchor and path.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", FENCE.sub("", path.read_text(encoding="utf-8")), re.MULTILINE)
            if anchor not in {slug(h) for h in headings}:
                found.append(target)
    return found


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of what `medgen report` reads (params.yaml, metrics/, plots/) and the two files it writes."""
    for rel in ("params.yaml", README, PAGE):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    for folder in ("metrics", "plots"):
        if (ROOT / folder).is_dir():
            shutil.copytree(ROOT / folder, tmp_path / folder)
    monkeypatch.delenv("MEDGEN_PROFILE", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_committed_readme_and_results_page_are_what_the_metrics_files_give(checkout: Path):
    assert main(["report"]) == 0
    for rel in (README, PAGE):
        assert (checkout / rel).read_bytes() == (ROOT / rel).read_bytes(), (
            f"{rel} disagrees with metrics/*.json: run `medgen report` (make report) and commit the result"
        )


def test_a_changed_metric_makes_the_check_fail(checkout: Path, capsys: pytest.CaptureFixture):
    path = checkout / "metrics" / "classify.json"
    metrics = json.loads(path.read_text())
    metrics["test_auc_mean"] += 0.05  # a full run that moved the headline AUC
    path.write_text(json.dumps(metrics))
    assert main(["report", "--check"]) == 1
    assert capsys.readouterr().err == (
        f"medgen: error: {PAGE}, {README} out of date with the metrics files: run `medgen report`\n"
    )
    assert main(["report"]) == 0
    readme = (checkout / README).read_text()
    assert readme != (ROOT / README).read_text()
    assert f"| {metrics['test_auc_mean']:.3f} " in readme
    assert main(["report", "--check"]) == 0


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page: Path):
    assert broken_links(page) == []


def test_the_link_check_finds_broken_links(tmp_path: Path):
    (tmp_path / "there.md").write_text("# A heading (`with code`)\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md#a-heading-with-code) [gone](missing.md) [bad anchor](there.md#nope)\n"
        "![fig](img/none.png) [web](https://example.org)\n```\n[in code](ignored.md)\n```\n"
    )
    assert broken_links(page) == ["missing.md", "there.md#nope", "img/none.png"]


def test_readme_is_a_short_front_door():
    text = (ROOT / README).read_text(encoding="utf-8")
    assert len(text.encode()) <= 8 * 1024, f"README.md is {len(text.encode())} bytes (limit 8 KiB)"
    outside = text.split(report.BEGIN)[0] + text.split(report.END)[1]
    # numbers that look like results (0.xyz, as the report prints them) may only appear in the generated table
    assert re.findall(r"\b0\.\d{3}", outside) == []
    for page in FRONT_DOORS:
        assert f"(docs/{page}.md)" in text, page
    assert f"({PAGE})" in text


def test_readme_commands_exist():
    text = (ROOT / README).read_text(encoding="utf-8")
    code = "\n".join(FENCE.findall(text))
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.MULTILINE))
    used = set(re.findall(r"\bmake ([a-z][a-z-]*)", text))
    assert used and used <= targets, used - targets
    commands = set(build_parser()._subparsers._group_actions[0].choices)  # argparse has no public API for this
    called = set(re.findall(r"^medgen ([a-z]+)", code, re.MULTILINE))
    assert called and called <= commands, called - commands
