"""`modelfleet serve`: the scoring host for development, on an entry script or a bare model.

Errors are one line on stderr and a non-zero exit; the host itself logs to stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from .._errors import ConfigError, ModelfleetError
from ._auth import keys_from_environment, keys_from_file
from ._server import run_server, serve
from ._settings import BatchingSettings, ScoringSettings, cpu_count

__all__ = ["build_parser", "main", "run_server", "serve", "settings_from_args"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelfleet serve",
        description="Serve an entry script (init()/run()) or a bare ONNX model over HTTP.",
    )
    source = parser.add_argument_group("what to serve")
    # Azure's azmlinfsrv spells these --entry_script and --model_dir: its commands work as written.
    source.add_argument("--entry-script", "--entry_script", type=Path, help="score.py with init() and run()")
    source.add_argument(
        "--model-dir",
        "--model_dir",
        type=Path,
        help="folder with the model files (default: $AZUREML_MODEL_DIR, as azmlinfsrv reads it)",
    )
    source.add_argument("--module", help="NAME[:VERSION] of a published module")
    source.add_argument("--model-name", help="name on the v2 routes (default: from the folder)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8890)
    parser.add_argument(
        "--provider",
        default="cuda,tensorrt,openvino,cpu",
        help="execution-provider preference, e.g. cuda,cpu",
    )
    parser.add_argument("--max-batch-size", type=int, help="turn on dynamic batching")
    parser.add_argument("--max-batch-wait-ms", type=float, default=2.0)
    parser.add_argument("--timeout-ms", type=int, default=60_000, help="scoring timeout")
    parser.add_argument("--max-request-bytes", type=int, default=8 * 1024 * 1024)
    parser.add_argument(
        "--workers", type=int, help="inferences run at once per process (default: CPUs, at most 4)"
    )
    parser.add_argument(
        "--processes",
        "--worker_count",
        type=int,
        help=f"worker processes sharing the port, each running init() (default: CPUs, here {cpu_count()})",
    )
    parser.add_argument(
        "--inline-below-ms",
        type=float,
        help="entry-script runs measured to take less than this run on the event loop, saving the hop to an "
        "inference thread (default 1; 0: always on the threads)",
    )
    parser.add_argument("--keys-file", type=Path, help="JSON or two lines: primary, secondary")
    parser.add_argument("--access-log", action="store_true")
    parser.add_argument(
        "--error-details",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="return run()'s exception text to clients (default: on for --entry-script on a "
        "loopback --host, a workstation; off otherwise: it can leak secrets)",
    )
    parser.add_argument(
        "--cors-origins",
        "--access_control_allow_origins",
        default="",
        help="comma-separated origins browsers may call from, or * (Azure ML's "
        "--access_control_allow_origins); preflights are answered on every route",
    )
    return parser


def settings_from_args(args: argparse.Namespace) -> ScoringSettings:
    if args.model_dir is None and os.environ.get("AZUREML_MODEL_DIR"):
        args.model_dir = Path(os.environ["AZUREML_MODEL_DIR"])
    if args.model_dir is None:
        raise ConfigError("--model-dir is required (or AZUREML_MODEL_DIR, as for azmlinfsrv)")
    if not args.model_dir.is_dir():
        raise ConfigError(f"model folder {args.model_dir} does not exist")
    if args.entry_script is not None and not args.entry_script.is_file():
        raise ConfigError(f"entry script {args.entry_script} does not exist")
    if args.entry_script is None:
        from ._zero_code import find_onnx_model

        find_onnx_model(args.model_dir)  # fail now, not after start-up, when there is no model
    if args.keys_file is not None:
        primary, secondary = keys_from_file(args.keys_file)
    else:
        primary, secondary = keys_from_environment(os.environ)
    values: dict[str, object] = {
        "model_dir": args.model_dir,
        "entry_script": args.entry_script,
        "model_name": args.model_name,
        "execution_providers": [p.strip().lower() for p in args.provider.split(",") if p.strip()],
        "scoring_timeout_ms": args.timeout_ms,
        "max_request_bytes": args.max_request_bytes,
        "primary_key": primary,
        "secondary_key": secondary,
        "host": args.host,
        "port": args.port,
        "access_log": args.access_log,
        "processes": args.processes if args.processes is not None else cpu_count(),
        "error_details": _error_details(args),
        "cors_origins": [o.strip() for o in getattr(args, "cors_origins", "").split(",") if o.strip()],
    }
    if args.workers is not None:
        values["inference_workers"] = args.workers
    if getattr(args, "inline_below_ms", None) is not None:
        values["inline_below_ms"] = args.inline_below_ms
    if args.max_batch_size is not None:
        values["batching"] = BatchingSettings(
            max_batch_size=args.max_batch_size, max_wait_ms=args.max_batch_wait_ms
        )
    try:
        return ScoringSettings.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"invalid {where}: {first['msg']}") from None


def _error_details(args: argparse.Namespace) -> bool:
    """Explicit flag first; else on only for an entry script served to this machine alone."""
    explicit = getattr(args, "error_details", None)
    if explicit is not None:
        return bool(explicit)
    return args.entry_script is not None and args.host in ("127.0.0.1", "localhost", "::1")


def main(argv: list[str]) -> int:
    args_list = argv[1:] if argv and argv[0] == "serve" else argv
    args = build_parser().parse_args(args_list)
    if args.module is not None:
        print(
            "modelfleet: error: --module is not available yet; use --entry-script/--model-dir",
            file=sys.stderr,
        )
        return 2
    try:
        settings = settings_from_args(args)
    except ModelfleetError as exc:
        print(f"modelfleet: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return run_server(settings)
