"""The export manifest is part of a DVC output: it may depend only on what dvc.yaml declares for export."""

from pathlib import Path

import yaml

from medgen import manifest

ROOT = Path(__file__).resolve().parents[2]


def test_the_code_commit_reads_only_the_export_stages_declared_code():
    deps = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["export"]["deps"]
    assert set(manifest.CODE_PATHS) <= set(deps)


def test_committing_results_or_other_code_leaves_the_code_commit(tmp_path, monkeypatch):
    import subprocess

    def git(*args):
        return subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    git("init", "-q")
    for path in manifest.CODE_PATHS:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("code\n")
    git("add", "-A")
    git("commit", "-qm", "export code")
    export_commit = git("rev-parse", "HEAD")
    (tmp_path / "dvc.lock").write_text("results\n")
    (tmp_path / "src/medgen/cli.py").write_text("other code\n")
    git("add", "-A")
    git("commit", "-qm", "results and other code")
    monkeypatch.chdir(tmp_path)
    assert manifest.code_state() == (export_commit, False)
    (tmp_path / manifest.CODE_PATHS[0]).write_text("changed\n")
    assert manifest.code_state() == (export_commit, True)
