"""`medgen` command line: a thin front door over medgen.stages (the same code dvc and Prefect run).

Errors a user can act on (MedgenError) print as one line `medgen: error: ...` and exit 1; Ctrl-C prints
`medgen: interrupted` (exit 130), SIGTERM `medgen: terminated` (exit 143) (docs/reliability.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, NoReturn

from medgen import __version__, stages
from medgen.config import Config
from medgen.errors import Interrupted, MedgenError
from medgen.params import load_config


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", default="params.yaml", help="params file (default: ./params.yaml)")
    common.add_argument(
        "--profile", default=None, help="profile from params.yaml (default: its `profile`, or $MEDGEN_PROFILE)"
    )
    common.add_argument(
        "-S",
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a parameter (repeatable; same syntax as `dvc exp run -S`)",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    """The `medgen` argument parser: one subcommand per front-door action."""
    common = _common()
    parser = argparse.ArgumentParser(prog="medgen", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"medgen {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    stage = sub.add_parser("stage", parents=[common], help="run one pipeline stage")
    stage.add_argument("name", help=f"one of: {', '.join(stages.STAGES)}")
    pipe = sub.add_parser("pipeline", parents=[common], help="run stages in order under one parent MLflow run")
    pipe.add_argument(
        "--only", nargs="+", default=None, metavar="STAGE", help="run just these stages (in pipeline order)"
    )
    sub.add_parser("config", parents=[common], help="print the resolved configuration as JSON")
    sub.add_parser("stages", help="list the pipeline stages in order")
    serve = sub.add_parser("serve", parents=[common], help="start the BentoML service over the exported ONNX models")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 in a container)")
    serve.add_argument("--port", type=int, default=3000)
    serve.add_argument(
        "--source",
        choices=("dir", "mlflow"),
        default="dir",
        help="dir: export.out_dir; mlflow: models:/medgen-{classifier,generator}@<export.alias>",
    )
    serve.add_argument(
        "--allow-anonymous",
        action="store_true",
        help="serve without API keys on a non-loopback address (keys: MEDGEN_API_KEYS[_FILE])",
    )
    promote = sub.add_parser("promote", parents=[common], help="point the champion alias at a version by hand")
    promote.add_argument("version", help="registered model version (e.g. 3)")
    promote.add_argument(
        "--model",
        default="medgen-classifier",
        help="medgen-classifier (default), medgen-classifier-augmented or medgen-generator",
    )
    report = sub.add_parser(
        "report", parents=[common], help="write docs/results.md and README's results table from the metrics files"
    )
    report.add_argument("--page", default="docs/results.md", help="results page to write (default: docs/results.md)")
    report.add_argument("--readme", default="README.md", help="file whose results markers get the table")
    report.add_argument("--check", action="store_true", help="write nothing; exit 1 if either file is out of date")
    return parser


def _load(args: argparse.Namespace) -> Config:
    return load_config(args.params, profile=args.profile, overrides=args.overrides)


def run_pipeline(cfg: Config, only: list[str] | None = None) -> dict[str, Any]:
    """Run stages in order; each stage run nests under one parent run in medgen/<flag>/pipeline."""
    import mlflow

    from medgen import tracking

    names = list(stages.STAGES) if not only else [s for s in stages.STAGES if s in only]
    for name in only or ():
        stages.get(name)  # unknown names fail before anything runs
    results: dict[str, Any] = {}
    with tracking.stage_run(cfg, "pipeline") as parent:
        previous = os.environ.get(tracking.PARENT_ENV)
        os.environ[tracking.PARENT_ENV] = parent.info.run_id
        try:
            for name in names:
                results[name] = stages.get(name)(cfg)
        finally:
            if previous is None:
                os.environ.pop(tracking.PARENT_ENV, None)
            else:
                os.environ[tracking.PARENT_ENV] = previous
        mlflow.set_tag("medgen.stages", ",".join(names))
    return results


def serve(cfg: Config, host: str, port: int, source: str, allow_anonymous: bool = False) -> NoReturn:
    """Become `bentoml serve serving.service:MedGen` (exec: same PID, so a SIGTERM to `medgen serve` stops the
    service and its workers instead of orphaning them), with the model location and the `serve:` limits from the
    config.

    The service itself checks keys, the bind address and every served file before it listens, and exits
    1 with one line when any is wrong (serving/startup.py)."""
    from pathlib import Path

    if not (Path.cwd() / "serving" / "service.py").is_file():
        raise MedgenError("run `medgen serve` from the repository root (where serving/service.py is)")
    from medgen import tracking

    env = {
        **os.environ,
        "MEDGEN_MODEL_DIR": str(Path(cfg.export.out_dir).resolve()),
        "MEDGEN_MODEL_SOURCE": source,
        "MEDGEN_MODEL_ALIAS": cfg.export.alias,
        "MLFLOW_TRACKING_URI": tracking.tracking_uri(cfg.tracking),
        **cfg.serve.environment(),
    }
    if allow_anonymous:
        env["MEDGEN_ALLOW_ANONYMOUS"] = "1"
    cmd = serve_command(host, port, "--working-dir", str(Path.cwd()), "--timeout-graceful-shutdown", "5")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(cmd[0], cmd, env)


def serve_command(host: str, port: int, *extra: str) -> list[str]:
    """The `bentoml serve` command line of the service on host:port, plus extra arguments (medgen serve, the
    serving tests and the benchmarks all start it so)."""
    return [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        "serving.service:MedGen",
        "--host",
        host,
        "--port",
        str(port),
        *extra,
    ]


def dispatch(args: argparse.Namespace) -> int:
    """Run the parsed subcommand; returns the exit status."""
    if args.command == "stages":
        print("\n".join(stages.STAGES))
        return 0
    cfg = _load(args)
    if args.command == "config":
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    if args.command == "serve":
        return serve(cfg, args.host, args.port, args.source, args.allow_anonymous)
    if args.command == "report":
        from pathlib import Path

        from medgen import report

        found = report.sources(cfg, stages.STAGES)
        print(report.run(Path.cwd(), found, args.page, args.readme, check=args.check))
        return 0
    if args.command == "promote":
        from medgen import registry

        previous, version = registry.promote(cfg, args.model, args.version)
        print(f"{args.model}: {cfg.export.alias} {'v' + previous if previous else '(unset)'} -> v{version}")
        return 0
    if args.command == "stage":
        metrics = stages.get(args.name)(cfg)
    else:
        metrics = run_pipeline(cfg, args.only)
    print(json.dumps(metrics, indent=2, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse argv, run it, print a project error as one `medgen: error: ...` line (exit 1)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return dispatch(args)
    except MedgenError as exc:
        print(f"medgen: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        if isinstance(exc, Interrupted) and exc.signal_name == "SIGTERM":
            print("medgen: terminated", file=sys.stderr)
            return 143
        print("medgen: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
