"""A params file that is empty, not UTF-8, not a mapping or names a key twice: one line, exit 1, nothing run."""

from __future__ import annotations

import pytest

from medgen import cli


def _run(capsys, *argv: str) -> tuple[int, list[str]]:
    rc = cli.main(list(argv))
    captured = capsys.readouterr()
    return rc, [line for line in captured.err.splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "params.yaml: is empty; expected a mapping of sections"),
        (b"# only a comment\n", "params.yaml: is empty"),
        (b"seed: 42\ndata:\n  flag: breastmnist\n  size: \xff28\n", "params.yaml: not UTF-8 text (line 4, byte 43)"),
        (b"- prepare\n- represent\n", "params.yaml: top level must be a mapping, got list"),
        (b"just a string\n", "params.yaml: top level must be a mapping, got str"),
        (b"seed: 1\nseed: 2\n", "params.yaml: duplicate key 'seed' (line 2)"),
        (b"classify:\n  lr: 0.1\n  epochs: 3\n  lr: 0.2\n", "params.yaml: duplicate key 'lr' (line 4)"),
        (b"seed: [1, 2\n", "params.yaml: not valid YAML"),
    ],
)
def test_bad_params_file_is_one_line(workdir, capsys, content, fragment):
    (workdir / "params.yaml").write_bytes(content)
    rc, lines = _run(capsys, "stage", "prepare")
    assert rc == 1 and len(lines) == 1, lines
    assert lines[0].startswith("medgen: error: ") and fragment in lines[0], lines[0]
    assert not (workdir / "data").exists() and not (workdir / "metrics").exists()  # nothing ran


def test_bad_override_value_is_one_line(workdir, capsys):
    rc, lines = _run(capsys, "config", "-S", "classify.lr_range=[0.1, 0.2")
    assert rc == 1 and len(lines) == 1 and "override 'classify.lr_range=[0.1, 0.2': value is not valid YAML" in lines[0]


def test_the_repository_params_file_has_no_duplicate_keys(workdir, capsys):
    rc, _ = _run(capsys, "config")
    assert rc == 0
