"""`modelfleet image base|build`: the base image, and a published module as a container image.

`modelfleet module package ... --image` builds the image as part of packaging; `image build` does
it for a module that is already published.
"""

from __future__ import annotations

import argparse
import sys

from modules import ModelfleetError
from publisher._cli_output import print_json, size
from publisher.cli import _connection_options, _workspace


def build_parser() -> argparse.ArgumentParser:
    common = _connection_options()
    parser = argparse.ArgumentParser(prog="modelfleet image", description="container images of modules")
    sub = parser.add_subparsers(dest="action", required=True)
    base = sub.add_parser(
        "base",
        parents=[common],
        help="build the Debian + python3 base image (cached by the script's content), optionally push it",
    )
    base.add_argument(
        "--push",
        nargs="?",
        const="",
        metavar="REF",
        help="push to the workspace registry (default bases/modelfleet-python:<key> and :latest)",
    )
    base.add_argument("--rebuild", action="store_true", help="build again even if this machine has it cached")
    base.add_argument("--json", action="store_true")
    build = sub.add_parser("build", parents=[common], help="build and push the image of a published module")
    build.add_argument("ref", metavar="NAME[:VERSION]")
    add_image_options(build)
    build.add_argument("--json", action="store_true")
    return parser


def add_image_options(parser: argparse.ArgumentParser) -> None:
    """The options `image build` and `module package --image` share."""
    parser.add_argument(
        "--base-image",
        metavar="REF",
        help="base image, any registry (default: bases/modelfleet-python:latest in the workspace registry; "
        "credentials for another registry: MODELFLEET_BASE_REGISTRY_USERNAME/_PASSWORD or `docker login`)",
    )
    parser.add_argument("--platform", help="os/arch of the image (default: this machine's, e.g. linux/amd64)")


def _cmd_base(args: argparse.Namespace) -> int:
    from publisher._image import build_base_image, push_base_image

    build = build_base_image(rebuild=args.rebuild)
    pushed = None
    if args.push is not None:
        pushed = push_base_image(_workspace(args), build, args.push or None)
    if args.json:
        print_json(
            {
                "key": build.key,
                "digest": build.digest,
                "python": build.python,
                "compressed_bytes": build.layer.size,
                "unpacked_bytes": build.unpacked_bytes,
                "cached": build.cached,
                "pushed": pushed,
            }
        )
        return 0
    origin = "cached" if build.cached else "built"
    print(f"base {build.tag}  python {build.python}  ({origin})")
    print(f"     {size(build.layer.size)} compressed, {size(build.unpacked_bytes)} unpacked")
    if pushed:
        print(f"pushed {pushed}")
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from publisher._image import build_module_image
    from publisher._module import Module
    from publisher._versions import parse_ref

    ws = _workspace(args)
    name, version = parse_ref(args.ref, "module")
    image = build_module_image(
        ws, Module(ws, name, version), base_image=args.base_image, platform=args.platform
    )
    if args.json:
        print_json(image.serialize())
    else:
        print(image.summary())
    return 0


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list and args_list[0] == "image":
        args_list = args_list[1:]
    args = build_parser().parse_args(args_list)
    try:
        return _cmd_base(args) if args.action == "base" else _cmd_build(args)
    except ModelfleetError as exc:
        print(f"modelfleet: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("modelfleet: interrupted", file=sys.stderr)
        return 130
