"""Register the deployments on Prefect work pools, for workers on this or other machines (see
docs/scale-out.md). The code is pulled from this checkout's path, so every worker machine needs the same
checkout at the same path (a shared volume) or a git URL given with --source.

    PREFECT_API_URL=http://prefect-host:4200/api python flows/deploy.py --pool medgen

Compute pool (--pool): medgen-pipeline, medgen-represent, medgen-generate and medgen-search (one fan-out
worker each). Control pool (--control-pool, default `<pool>-control`): medgen-fanout, the coordinator
that waits for the search runs; on its own pool it never holds a compute worker's slot. Missing pools
are created (type `process`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # `python flows/deploy.py`
    sys.path.insert(0, str(ROOT))

from flows.serve import DEPLOYMENT  # noqa: E402

COMPUTE = {
    "medgen-pipeline": "flows/pipeline.py:medgen_pipeline",
    "medgen-represent": "flows/pipeline.py:represent_flow",
    "medgen-generate": "flows/pipeline.py:generate_flow",
    "medgen-search": "flows/fanout.py:search_flow",
}
CONTROL = {"medgen-fanout": "flows/fanout.py:fanout_flow"}


def ensure_pool(name: str) -> None:
    """Create process work pool `name` unless it exists."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))
            print(f"work pool {name} created (type process)")


def register(entrypoints: dict[str, str], pool: str, source: str, flag: str) -> None:
    from prefect import flow

    for name, entrypoint in entrypoints.items():
        remote = flow.from_source(source=source, entrypoint=entrypoint)
        deployment_id = remote.deploy(
            name=flag,
            work_pool_name=pool,
            parameters={"flag": flag},
            tags=["medgen", flag],
            build=False,
            push=False,
            print_next_steps=False,
        )
        print(f"{name}/{flag} -> pool {pool} ({deployment_id})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", required=True, help="compute work pool (created if missing)")
    parser.add_argument("--control-pool", default=None, help="pool for medgen-fanout (default: <pool>-control)")
    parser.add_argument("--source", default=str(ROOT), help="checkout path or git URL the workers pull the flows from")
    parser.add_argument("--flag", default=DEPLOYMENT)
    args = parser.parse_args(argv)
    control = args.control_pool or f"{args.pool}-control"
    for pool in (args.pool, control):
        ensure_pool(pool)
    register(COMPUTE, args.pool, args.source, args.flag)
    register(CONTROL, control, args.source, args.flag)


if __name__ == "__main__":
    main()
