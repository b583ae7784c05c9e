"""`modelfleet serve --module NAME[:VERSION]`: pull a published module and serve it on this machine.

The scoring host itself knows nothing of registries or workspaces (it also runs on devices); this
is the workstation glue that fetches the module into a cache folder and hands the host the same
settings the module spec gives it on a device.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import get_args

from modules import ModelfleetError
from modules.artifact import served_model_name
from modules.scoring import BatchingSettings, ProviderName
from modules.scoring import cli as scoring_cli
from modules.spec import MODULE_REPOSITORY_PREFIX
from modules.unpack import UnpackedModule, pull_module
from publisher._versions import parse_ref, resolve_version
from publisher._workspace import Workspace

log = logging.getLogger("modelfleet.serve")
_DEFAULT_PROVIDERS = "cuda,tensorrt,openvino,cpu"


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "modelfleet" / "modules"


async def _pull(workspace: Workspace, ref: str, cache: Path) -> UnpackedModule:
    name, version = parse_ref(ref, "module")
    repository = MODULE_REPOSITORY_PREFIX + name
    async with workspace.registry_client() as client:
        number = await resolve_version(client, repository, version, "module")
        digest = await client.manifest_digest(repository, str(number))
        if digest is None:
            raise ModelfleetError(f"module {name}:{number} does not exist")
        dest = cache / name / digest.split(":", 1)[1][:16]
        return await pull_module(client, repository, digest, dest)


def main(argv: list[str]) -> int:
    parser = scoring_cli.build_parser()
    g = parser.add_argument_group("registry (with --module)")
    g.add_argument("--config")
    g.add_argument("--registry")
    g.add_argument("--registry-user")
    g.add_argument("--registry-password")
    g.add_argument(
        "--cache-dir", type=Path, help="where pulled modules are kept (default ~/.cache/modelfleet)"
    )
    args = parser.parse_args(argv[1:] if argv and argv[0] == "serve" else argv)
    if args.module is None:
        return scoring_cli.main(argv)
    try:
        if args.entry_script is not None or args.model_dir is not None:
            raise ModelfleetError("--module serves a published module: drop --entry-script/--model-dir")
        workspace = Workspace.load(
            args.config,
            registry=args.registry,
            registry_user=args.registry_user,
            registry_password=args.registry_password,
        )
        module = asyncio.run(_pull(workspace, args.module, args.cache_dir or _cache_root()))
        spec = module.spec
        print(
            f"serving {spec.name}:{spec.version} ({module.digest[:19]}) from {module.root}", file=sys.stderr
        )
        if spec.requirements:
            print(
                f"note: the module lists requirements ({', '.join(spec.requirements)}); "
                "they are not installed here, the current environment is used",
                file=sys.stderr,
            )
        args.model_dir = module.azureml_model_dir
        args.entry_script = module.entry_script
        args.model_name = args.model_name or served_model_name(spec)
        if args.provider == _DEFAULT_PROVIDERS:
            known = set(get_args(ProviderName))
            args.provider = ",".join([p for p in spec.execution_providers if p in known] or ["cpu"])
        if args.timeout_ms == parser.get_default("timeout_ms"):
            args.timeout_ms = spec.scoring.timeout_ms
        if args.max_request_bytes == parser.get_default("max_request_bytes"):
            args.max_request_bytes = spec.scoring.max_request_bytes
        settings = scoring_cli.settings_from_args(args)
        if settings.batching is None and spec.scoring.batching is not None:
            settings = settings.model_copy(
                update={"batching": BatchingSettings(**spec.scoring.batching.model_dump())}
            )
        settings = settings.model_copy(
            update={"model_version": str(spec.version), "models_root": module.model_dir}
        )
    except ModelfleetError as exc:
        print(f"modelfleet: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return scoring_cli.run_server(settings)
