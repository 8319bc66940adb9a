"""Serve medgen's deployments from one long-running process (no work pool needed on one machine).

    PREFECT_API_URL=http://127.0.0.1:4200/api python flows/serve.py    # from the repository root

Deployments (run one with `prefect deployment run '<flow>/<deployment>' -p key=value`):
    medgen-pipeline/breastmnist   every stage, in order
    medgen-represent/breastmnist  prepare + represent (the representation study)
    medgen-generate/breastmnist   prepare + generate (the generative study)

Flow runs execute in subprocesses of this process, in its working directory: run it where params.yaml
is, so the outputs land where `dvc repro` puts them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python flows/serve.py`: make the `flows` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefect import serve  # noqa: E402

from flows.pipeline import generate_flow, medgen_pipeline, represent_flow  # noqa: E402

DEPLOYMENT = "breastmnist"


def deployments(flag: str = DEPLOYMENT, name: str = DEPLOYMENT) -> list:
    """One deployment per flow, named after the dataset; parameters default to that flag."""
    tags = ["medgen", flag]
    return [
        f.to_deployment(name=name, parameters={"flag": flag}, tags=tags, description=f.__doc__)
        for f in (medgen_pipeline, represent_flow, generate_flow)
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flag", default=DEPLOYMENT, help="dataset flag the deployments run on")
    parser.add_argument("--name", default=None, help="deployment name (default: the flag)")
    parser.add_argument("--limit", type=int, default=1, help="flow runs at once (stages are CPU-heavy)")
    args = parser.parse_args(argv)
    serve(*deployments(args.flag, args.name or args.flag), limit=args.limit)


if __name__ == "__main__":
    main()
