"""`modelfleet init|key|model|module|deploy|status|device`: the publisher's commands.

Every failure the user can fix is a `ModelfleetError`, printed as one line with a non-zero exit;
a traceback means a bug.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, get_args

from modules import ConfigError, ModelfleetError
from modules.deployment import (
    DEFAULT_MAX_FAILURE_RATIO,
    DEFAULT_MIN_HEALTHY_SECONDS,
    DEFAULT_RESTART_POLICY,
    RestartPolicy,
)
from modules.tags import parse_tags
from publisher._cli_output import print_json, size, table
from publisher._rollout import STEP_TIMEOUT_S

# -- parser -----------------------------------------------------------------------------------


def _name_arguments(parser: argparse.ArgumentParser) -> None:
    """The deployment's name, as `az ml service` users type it (`-n NAME`) or positionally; both
    forms on every verb, so no verb fails on the habit of another (`_deployment_name` checks)."""
    parser.add_argument("name_arg", nargs="?", metavar="NAME", help="deployment name (or -n NAME)")
    parser.add_argument("-n", "--name", help="deployment name")


def _deployment_name(args: argparse.Namespace) -> None:
    given = [n for n in (getattr(args, "name_arg", None), getattr(args, "name", None)) if n is not None]
    if not hasattr(args, "name_arg"):
        return
    if len(given) == 2 and given[0] != given[1]:
        raise ConfigError(f"two deployment names given ({given[0]!r} and -n {given[1]!r}): give one")
    if not given:
        raise ConfigError(f"deploy {args.action}: a deployment name is needed (NAME or -n NAME)")
    args.name = given[0]


def _connection_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("workspace")
    g.add_argument("--config", help="modelfleet.toml to use (default: nearest one, or MODELFLEET_CONFIG)")
    g.add_argument("--registry", help="registry URL (env MODELFLEET_REGISTRY)")
    g.add_argument(
        "--hub",
        help="control plane: mqtt[s]://host:port, or azureiot://<hub>.azure-devices.net with "
        "MODELFLEET_IOTHUB_SERVICE_CONNECTION_STRING set (env MODELFLEET_HUB)",
    )
    g.add_argument("--fleet", help="fleet name (env MODELFLEET_FLEET)")
    g.add_argument("--registry-user", help="registry user (env MODELFLEET_REGISTRY_USERNAME)")
    g.add_argument(
        "--registry-password",
        help="registry password (prefer env MODELFLEET_REGISTRY_PASSWORD: flags show up in ps)",
    )
    return common


_REPORT_FORMAT_HELP = "table (default), json (as --json), or iotedge: $edgeAgent-shaped reported properties"


def build_parser() -> argparse.ArgumentParser:
    common = _connection_options()
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print machine-readable JSON")

    parser = argparse.ArgumentParser(prog="modelfleet")
    top = parser.add_subparsers(dest="command", required=True)

    init = top.add_parser("init", parents=[common], help="write modelfleet.toml and a signing key")
    init.add_argument("directory", nargs="?", default=".")
    init.add_argument("--force", action="store_true", help="rewrite an existing modelfleet.toml")

    key = top.add_parser("key", parents=[common], help="signing key")
    key_sub = key.add_subparsers(dest="action", required=True)
    key_sub.add_parser("public", parents=[common], help="print the public key (PEM) agents should trust")

    model = top.add_parser("model", help="registered models")
    msub = model.add_subparsers(dest="action", required=True)
    reg = msub.add_parser("register", parents=[common, as_json], help="register a model file or folder")
    reg.add_argument("-n", "--name", required=True)
    reg.add_argument(
        "-p", "--path", required=True, help="model file, or folder (its files keep its name, as in Azure ML)"
    )
    reg.add_argument("--tag", action="append", metavar="K=V")
    reg.add_argument("--property", action="append", metavar="K=V")
    reg.add_argument("--description")
    reg.add_argument("--framework", help="default: onnx when an .onnx file is present, else custom")
    reg.add_argument("--version", type=int, help="explicit version (must not exist yet)")
    lst = msub.add_parser("list", parents=[common, as_json], help="list models")
    lst.add_argument("-n", "--name")
    lst.add_argument("--tag", action="append", metavar="K[=V]", help="filter by tag (repeatable)")
    lst.add_argument("--latest", action="store_true", help="only the latest version of each model")
    show = msub.add_parser("show", parents=[common, as_json], help="show one model version")
    show.add_argument("ref", metavar="NAME[:VERSION]")
    dl = msub.add_parser("download", parents=[common], help="download a model's files")
    dl.add_argument("ref", metavar="NAME[:VERSION]")
    dl.add_argument("-o", "--output", required=True, help="target folder")
    dl.add_argument("--overwrite", action="store_true", help="replace files that differ")
    rm = msub.add_parser("delete", parents=[common], help="delete one model version")
    rm.add_argument("ref", metavar="NAME:VERSION")

    module = top.add_parser("module", help="module packages")
    dsub = module.add_subparsers(dest="action", required=True)
    pkg = dsub.add_parser("package", parents=[common, as_json], help="package models as a module")
    pkg.add_argument("-n", "--name", required=True)
    pkg.add_argument("-m", "--model", action="append", required=True, metavar="MODEL[:VERSION]")
    pkg.add_argument("--entry-script", help="script with init() and run(); none = zero-code ONNX")
    pkg.add_argument("--source-dir", help="folder packed with the entry script (which must be inside it)")
    env = pkg.add_mutually_exclusive_group()
    env.add_argument("--requirements", help="pip requirements file")
    env.add_argument("--conda-file", help="conda environment file (its pip section is used)")
    pkg.add_argument("--sample-input", help="JSON request body used for smoke tests and docs")
    pkg.add_argument("--provider", help="execution provider preference, e.g. cuda,cpu")
    pkg.add_argument("--description")
    pkg.add_argument("--version", type=int, help="explicit version (must not exist yet)")
    pkg.add_argument("--image", action="store_true", help="also build and push images/<name>:<version>")
    pkg.add_argument(
        "--base-image", metavar="REF", help="with --image: base (default bases/modelfleet-python)"
    )
    pkg.add_argument("--platform", help="with --image: os/arch (default: this machine's)")
    mlist = dsub.add_parser("list", parents=[common, as_json], help="list modules")
    mlist.add_argument("-n", "--name")
    mlist.add_argument("--latest", action="store_true")
    mshow = dsub.add_parser("show", parents=[common, as_json], help="show one module version")
    mshow.add_argument("ref", metavar="NAME[:VERSION]")
    dsub.add_parser("schema", help="print the module spec's JSON Schema")
    _deploy_parsers(top, common, as_json)
    return parser


def _deploy_parsers(
    top: argparse._SubParsersAction,  # type: ignore[type-arg]
    common: argparse.ArgumentParser,
    as_json: argparse.ArgumentParser,
) -> None:
    settings = argparse.ArgumentParser(add_help=False)
    s = settings.add_argument_group("deployment")
    s.add_argument("--target", metavar="COND", help="target condition over device tags (default '*')")
    s.add_argument("--priority", type=int, help="higher wins where deployments overlap (default 0)")
    s.add_argument("--env", action="append", metavar="K=V", help="environment for every module")
    s.add_argument(
        "--restart-policy",
        choices=get_args(RestartPolicy),
        help=f"when a device restarts a module (default {DEFAULT_RESTART_POLICY})",
    )
    s.add_argument("--port", type=int, help="scoring port of the first module; the next get +1 (5001)")
    s.add_argument("--auth", action="store_true", default=None, help="require key auth (keys: see docs)")
    s.add_argument("--rollout", metavar="STEPS", help="staged rollout, e.g. 10%%,50%%,100%%")
    s.add_argument(
        "--min-healthy",
        type=int,
        metavar="SECONDS",
        help=f"per rollout step (default {DEFAULT_MIN_HEALTHY_SECONDS})",
    )
    s.add_argument(
        "--max-failure-ratio",
        type=float,
        help=f"failed share that aborts a step ({DEFAULT_MAX_FAILURE_RATIO})",
    )
    s.add_argument("--device", metavar="ID", help="a per-device override for this device only")
    s.add_argument("--wait", action="store_true", help="drive the rollout and wait for the result")
    s.add_argument(
        "--timeout", type=float, default=STEP_TIMEOUT_S, help="seconds a step may take with --wait"
    )

    deploy = top.add_parser("deploy", help="deployments")
    sub = deploy.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", parents=[common, settings, as_json], help="publish a new deployment")
    _name_arguments(create)
    create.add_argument("--module", action="append", required=True, metavar="MODULE[:VERSION]")
    create.add_argument(
        "--version", type=int, help="first version (default: 1, or one above the deleted one of this name)"
    )
    create.add_argument(
        "--replace-unverified",
        action="store_true",
        help="publish over a retained document that does not verify (nothing of it is kept)",
    )
    update = sub.add_parser("update", parents=[common, settings, as_json], help="publish a new version")
    _name_arguments(update)
    update.add_argument("--module", action="append", metavar="MODULE[:VERSION]")
    sub.add_parser("list", parents=[common, as_json], help="list deployments")
    show = sub.add_parser("show", parents=[common, as_json], help="show one deployment document")
    _name_arguments(show)
    show.add_argument("--device", metavar="ID", help="the device's override")
    keys = sub.add_parser(
        "keys", parents=[common, as_json], help="show or regenerate a deployment's scoring keys"
    )
    _name_arguments(keys)
    keys.add_argument("--regen", choices=["primary", "secondary"], help="replace this key on every device")
    delete = sub.add_parser("delete", parents=[common], help="remove a deployment from every device")
    _name_arguments(delete)
    delete.add_argument("--device", metavar="ID", help="the device's override")
    delete.add_argument(
        "--replace-unverified",
        action="store_true",
        help="delete even where the retained document does not verify",
    )

    imp = sub.add_parser(
        "import",
        parents=[common, as_json],
        help="sign and publish an IoT Edge deployment manifest (bare, or as az iot edge writes it)",
    )
    imp.add_argument("file", help="the manifest (JSON); - reads standard input")
    imp.add_argument("-n", "--name", help="deployment name (default: the file's id, else its file name)")
    imp.add_argument("--layered", action="store_true", help="a layered deployment (dot-path keys)")
    imp.add_argument("--target", metavar="COND", help="target condition (default: the file's, else '*')")
    imp.add_argument("--priority", type=int, help="priority (default: the file's, else 0)")
    imp.add_argument("--device", metavar="ID", help="a per-device override for this device only")
    imp.add_argument(
        "--replace-unverified",
        action="store_true",
        help="publish over a retained document that does not verify (nothing of it is kept)",
    )
    export = sub.add_parser("export", parents=[common], help="write a deployment as another tool's manifest")
    _name_arguments(export)
    export.add_argument(
        "--format",
        choices=["iotedge", "modelfleet"],
        default="iotedge",
        help="iotedge: content IoT Hub accepts (modelfleet modules as documented); modelfleet: the document",
    )
    export.add_argument("-o", "--output", metavar="FILE", help="write here instead of standard output")
    export.add_argument("--device", metavar="ID", help="the device's override")

    status = top.add_parser("status", parents=[common, as_json], help="fleet status")
    status.add_argument("--deployment", metavar="NAME")
    status.add_argument("--format", choices=["table", "json", "iotedge"], help=_REPORT_FORMAT_HELP)

    device = top.add_parser("device", help="devices and their direct methods")
    dev = device.add_subparsers(dest="action", required=True)
    dev.add_parser("list", parents=[common, as_json], help="list devices")
    dshow = dev.add_parser("show", parents=[common, as_json], help="one device's reported state")
    dshow.add_argument("device_id")
    dshow.add_argument("--format", choices=["table", "json", "iotedge"], help=_REPORT_FORMAT_HELP)
    logs = dev.add_parser("logs", parents=[common, as_json], help="a module's log lines")
    logs.add_argument("device_id")
    logs.add_argument("module")
    logs.add_argument("--tail", type=int, default=100)
    restart = dev.add_parser("restart", parents=[common], help="restart a module")
    restart.add_argument("device_id")
    restart.add_argument("module")
    ping = dev.add_parser("ping", parents=[common, as_json], help="check that a device answers")
    ping.add_argument("device_id")
    enroll = dev.add_parser(
        "enroll", parents=[common], help="bind a device id to its sealing key (as read on the device)"
    )
    enroll.add_argument("device_id")
    key_source = enroll.add_mutually_exclusive_group(required=True)
    key_source.add_argument("--key", help="the device's X25519 public key, base64 (`modelfleet agent key`)")
    key_source.add_argument("--key-file", metavar="FILE", help="a file with that key (base64 or PEM)")
    enroll.add_argument("--replace", action="store_true", help="replace the key of an enrolled device")
    approve = dev.add_parser(
        "approve",
        parents=[common],
        help="enrol the key a device reports, if its fingerprint is the one read on the device",
    )
    approve.add_argument("device_id")
    approve.add_argument("--fingerprint", required=True, metavar="FP", help="from `modelfleet agent key`")
    approve.add_argument("--replace", action="store_true", help="replace the key of an enrolled device")
    unenroll = dev.add_parser("unenroll", parents=[common], help="forget a device's enrolled key")
    unenroll.add_argument("device_id")
    dev.add_parser("list-enrolled", parents=[common, as_json], help="devices and their enrolled keys")


# -- commands ---------------------------------------------------------------------------------


def _workspace(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from publisher._workspace import Workspace

    return Workspace.load(
        args.config,
        registry=args.registry,
        hub=args.hub,
        fleet=args.fleet,
        registry_user=args.registry_user,
        registry_password=args.registry_password,
    )


def _cmd_init(args: argparse.Namespace) -> int:
    from publisher._workspace import DEFAULT_FLEET, DEFAULT_HUB, DEFAULT_REGISTRY, Workspace

    ws = Workspace.create(
        args.directory,
        registry=args.registry or DEFAULT_REGISTRY,
        hub=args.hub or DEFAULT_HUB,
        fleet=args.fleet or DEFAULT_FLEET,
        force=args.force,
    )
    print(f"wrote {ws.config_path}")
    print(
        f"signing key: {ws.signing_key_path} (keep it secret; "
        "`modelfleet key public` prints what agents trust)"
    )
    return 0


def _cmd_key(args: argparse.Namespace) -> int:
    print(_workspace(args).public_key_pem(), end="")
    return 0


def _model_row(m: Any) -> list[str]:
    tags = ",".join(f"{k}={v}" for k, v in sorted(m.tags.items()))
    return [m.name, str(m.version), m.framework, m.created_time.isoformat(), tags, m.digest[:19]]


def _cmd_model(args: argparse.Namespace) -> int:
    from publisher._model import Model
    from publisher._versions import parse_ref

    ws = _workspace(args)
    if args.action == "register":
        model = Model.register(
            ws,
            model_path=args.path,
            model_name=args.name,
            tags=parse_tags(args.tag, option="--tag"),
            properties=parse_tags(args.property, option="--property"),
            description=args.description,
            framework=args.framework,
            version=args.version,
        )
        if args.json:
            print_json(model.serialize())
        else:
            print(f"{model.id}  {model.digest}")
        return 0
    if args.action == "list":
        name = parse_ref(args.name, "model")[0] if args.name else None
        models = Model.list(ws, name=name, tags=args.tag, latest=args.latest)
        if args.json:
            print_json([m.serialize() for m in models])
        elif models:
            print(
                table(
                    [_model_row(m) for m in models],
                    ["name", "version", "framework", "created", "tags", "digest"],
                )
            )
        else:
            print("no models")
        return 0
    if args.action == "show":
        name, version = parse_ref(args.ref, "model")
        model = Model(ws, name, version=version)
        if args.json:
            print_json(model.serialize())
        else:
            _print_model(model)
        return 0
    if args.action == "download":
        name, version = parse_ref(args.ref, "model")
        model = Model(ws, name, version=version)
        target = model.download(args.output, exist_ok=args.overwrite)
        print(f"downloaded {model.id} ({len(model.files)} files) to {target}")
        return 0
    if args.action == "delete":
        name, version = parse_ref(args.ref, "model")
        if version is None:
            raise ConfigError("model delete needs an explicit version: NAME:VERSION")
        model = Model(ws, name, version=version)
        model.delete()
        print(f"deleted {model.id}")
        return 0
    raise AssertionError(args.action)


def _print_model(model: Any) -> None:
    c = model.config
    print(f"model:       {model.id}")
    print(f"digest:      {model.digest}")
    print(f"framework:   {c.framework}")
    print(f"created:     {c.created.isoformat()}")
    if c.description:
        print(f"description: {c.description}")
    for label, values in (("tags", c.tags), ("properties", c.properties)):
        if values:
            print(f"{label + ':':<12} " + ", ".join(f"{k}={v}" for k, v in sorted(values.items())))
    print("files:")
    for f in c.files:
        print(f"  {f.path}  {size(f.size)}  {f.digest[:19]}")
        if f.onnx:
            opset = ", ".join(f"{d or 'ai.onnx'}={v}" for d, v in sorted(f.onnx.opsets.items()))
            print(f"    opsets: {opset}")
            for kind, tensors in (("input", f.onnx.inputs), ("output", f.onnx.outputs)):
                for t in tensors:
                    dims = ", ".join("?" if d is None else str(d) for d in t.shape)
                    print(f"    {kind:<6} {t.name}: {t.dtype}[{dims}]")


def _cmd_module(args: argparse.Namespace) -> int:
    if args.action == "schema":
        from modules.spec import module_spec_json_schema

        print_json(module_spec_json_schema())
        return 0
    from publisher._module import Module
    from publisher._versions import parse_ref

    ws = _workspace(args)
    if args.action == "package":
        providers = [p.strip().lower() for p in args.provider.split(",")] if args.provider else None
        module = Module.package(
            ws,
            args.name,
            args.model,
            entry_script=args.entry_script,
            source_dir=args.source_dir,
            requirements=args.requirements,
            conda_file=args.conda_file,
            sample_input=args.sample_input,
            providers=providers,
            description=args.description,
            version=args.version,
        )
        image = None
        if args.image:  # docs/images.md
            from publisher._image import build_module_image

            image = build_module_image(ws, module, base_image=args.base_image, platform=args.platform)
        if args.json:
            out = module.serialize()
            out["transfer"] = vars(module.stats)
            if image is not None:
                out["image"] = image.serialize()
            print_json(out)
        else:
            s = module.stats
            print(f"{module.id}  {module.digest}")
            reused = s.blobs_mounted + s.blobs_existing
            print(
                f"uploaded {size(s.bytes_uploaded)} in {s.blobs_uploaded} blobs; "
                f"re-used {reused} already in the registry"
            )
            if image is not None:
                print(image.summary())
        return 0
    if args.action == "list":
        modules = Module.list(ws, name=args.name, latest=args.latest)
        if args.json:
            print_json([m.serialize() for m in modules])
        elif modules:
            rows = [
                [
                    m.name,
                    str(m.version),
                    m.spec.entry_script or "(zero-code)",
                    ",".join(f"{r.name}:{r.version}" for r in m.spec.models),
                    m.spec.created.isoformat(),
                    m.digest[:19],
                ]
                for m in modules
            ]
            print(table(rows, ["name", "version", "entry", "models", "created", "digest"]))
        else:
            print("no modules")
        return 0
    if args.action == "show":
        name, version = parse_ref(args.ref, "module")
        module = Module(ws, name, version)
        if args.json:
            print_json(module.serialize())
        else:
            spec = module.spec
            print(f"module:      {module.id}")
            print(f"digest:      {module.digest}")
            print(f"reference:   {module.reference}")
            print(f"entry:       {spec.entry_script or '(zero-code ONNX handler)'}")
            print(f"providers:   {', '.join(spec.execution_providers)}")
            print(f"requires:    {', '.join(spec.requirements) or '-'}")
            print(f"sample:      {'yes' if spec.sample_input is not None else 'no'}")
            print("models:")
            for r in spec.models:
                print(f"  {r.name}:{r.version}  {r.digest[:19]}  ({len(r.files)} files)")
        return 0
    raise AssertionError(args.action)


def _cmd_deploy(args: argparse.Namespace) -> int:
    from publisher._deploy_cli import run_deploy

    _deployment_name(args)
    return run_deploy(_workspace(args), args)


def _cmd_status(args: argparse.Namespace) -> int:
    from publisher._deploy_cli import run_status

    return run_status(_workspace(args), args)


def _cmd_device(args: argparse.Namespace) -> int:
    from publisher._deploy_cli import run_device

    return run_device(_workspace(args), args)


_HANDLERS = {
    "init": _cmd_init,
    "key": _cmd_key,
    "model": _cmd_model,
    "module": _cmd_module,
    "deploy": _cmd_deploy,
    "status": _cmd_status,
    "device": _cmd_device,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return _HANDLERS[args.command](args)
    except ModelfleetError as exc:
        print(f"modelfleet: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("modelfleet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
