"""Register the deployments on a Prefect work pool, for workers on other machines (see README,
"Scaling past one machine"). The code is pulled from this checkout's path, so every worker machine
needs the same checkout at the same path (a shared volume) or a git URL given with --source.

    PREFECT_API_URL=http://prefect-host:4200/api python flows/deploy.py --pool medgen
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # `python flows/deploy.py`
    sys.path.insert(0, str(ROOT))

from flows.serve import DEPLOYMENT  # noqa: E402

ENTRYPOINTS = {
    "medgen-pipeline": "flows/pipeline.py:medgen_pipeline",
    "medgen-represent": "flows/pipeline.py:represent_flow",
    "medgen-generate": "flows/pipeline.py:generate_flow",
}


def main(argv: list[str] | None = None) -> None:
    from prefect import flow

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", required=True, help="work pool (create: prefect work-pool create NAME --type process)")
    parser.add_argument("--source", default=str(ROOT), help="checkout path or git URL the workers pull the flows from")
    parser.add_argument("--flag", default=DEPLOYMENT)
    args = parser.parse_args(argv)
    for name, entrypoint in ENTRYPOINTS.items():
        remote = flow.from_source(source=args.source, entrypoint=entrypoint)
        # to_deployment().apply(), not Flow.deploy(): deploy() lists the pool's workers with `limit: null`,
        # which Prefect 3.8's server rejects (422) under the pinned fastapi 0.154.0.
        deployment = remote.to_deployment(name=args.flag, work_pool_name=args.pool, parameters={"flag": args.flag},
                                          tags=["medgen", args.flag])
        deployment_id = deployment.apply()
        print(f"{name}/{args.flag} -> pool {args.pool} ({deployment_id})")


if __name__ == "__main__":
    main()
