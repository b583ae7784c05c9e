"""`modelfleet agent run|status`: the daemon and a look at it.

`run` is what systemd starts (see docs/agent.md): logs go to stderr (the journal), SIGTERM stops
modules and exits 0, a configuration problem is one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from modules import ModelfleetError
from modules.tags import parse_device_tags


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelfleet agent")
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="run the edge agent until stopped")
    run.add_argument("--config", type=Path, help="agent.toml")
    run.add_argument("--device-id")
    run.add_argument("--fleet")
    run.add_argument(
        "--tag", action="append", metavar="K=V", help="device tag (repeatable); true/false/numbers typed"
    )
    run.add_argument(
        "--hub", help="mqtt://host:port, mqtts://host:port or azureiot://<IoT hub host> (see the docs)"
    )
    run.add_argument("--registry")
    run.add_argument(
        "--trust", action="append", type=Path, metavar="PUBKEY_FILE", help="publisher key to trust"
    )
    run.add_argument("--data-dir", type=Path)
    run.add_argument("--port-base", type=int, help="added to every module port (several agents on one host)")
    run.add_argument("--status-port", type=int, help="local status endpoint port (0 = off)")
    run.add_argument("--listen-host", help="address module ports listen on (default 0.0.0.0)")
    run.add_argument("--log-level", default="INFO")
    key = sub.add_parser(
        "key", help="print this device's public sealing key and its fingerprint, for enrolment"
    )
    key.add_argument("--config", type=Path, help="agent.toml (for its data_dir)")
    key.add_argument("--data-dir", type=Path)
    key.add_argument("--json", action="store_true")
    status = sub.add_parser("status", help="show the local agent's state")
    status.add_argument("--port", type=int, default=8780, help="status port (plus --port-base of the agent)")
    status.add_argument("--json", action="store_true")
    return parser


def _run(args: argparse.Namespace) -> int:
    from edge_agent._config import load_agent_config
    from edge_agent._daemon import exec_daemon, run_agent

    overrides = {
        "device_id": args.device_id,
        "fleet": args.fleet,
        "tags": parse_device_tags(args.tag),
        "hub": args.hub,
        "registry": args.registry,
        "trust": [str(path) for path in args.trust or []],
        "data_dir": str(args.data_dir) if args.data_dir is not None else None,
        "port_base": args.port_base,
        "status_port": args.status_port,
        "listen_host": args.listen_host,
    }
    load_agent_config(args.config, overrides)  # a bad configuration is one line and exit 2, here
    handover = {
        "config": str(args.config) if args.config is not None else None,
        "overrides": overrides,
        "log_level": args.log_level,
    }
    exec_daemon(handover)  # from here on this process is the daemon (edge_agent/_daemon.py)
    return run_agent(handover)


def _key(args: argparse.Namespace) -> int:
    """The device's X25519 public key (created on first use, as the agent would) and the
    fingerprint the operator compares at `modelfleet device approve`: the key the agent reports,
    read as it reads it."""
    from edge_agent._config import AgentConfig, load_agent_config
    from modules.service_keys import DEVICE_KEY_FILE, key_fingerprint, open_device_key

    data_dir = args.data_dir
    if data_dir is None and args.config is not None:
        data_dir = load_agent_config(args.config, {"device_id": "key"}).data_dir
    if data_dir is None:
        data_dir = AgentConfig.model_fields["data_dir"].default
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    public = open_device_key(data_dir / DEVICE_KEY_FILE).public
    fingerprint = key_fingerprint(public)
    if args.json:
        print(json.dumps({"public_key": public, "fingerprint": fingerprint}))
    else:
        print(f"public key   {public}\nfingerprint  {fingerprint}")
    return 0


def _status(args: argparse.Namespace) -> int:
    import urllib.error
    import urllib.request

    url = f"http://127.0.0.1:{args.port}/status"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            state = json.loads(resp.read())
    except (urllib.error.URLError, OSError) as exc:
        raise ModelfleetError(f"no agent answers on {url}: {getattr(exc, 'reason', exc)}") from None
    if args.json:
        print(json.dumps(state, indent=2))
        return 0
    print(f"device {state['device_id']} (fleet {state['fleet']}), agent {state['device']['agent_version']}")
    for name, d in sorted(state["deployments"].items()):
        print(
            f"  deployment {name} v{d['version']}: {d['outcome']}"
            + (f" ({d['reason']})" if d.get("reason") else "")
        )
    for name, m in sorted(state["modules"].items()):
        line = (
            f"  module {name}: {m['status']}, health {m['health']}, port {m.get('port')}, "
            f"restarts {m['restart_count']}"
        )
        if m.get("version"):
            line += f", version {m['version']}"
        if m.get("last_error"):
            line += f", last error: {m['last_error']}"
        print(line)
    for r in state.get("refused", [])[:5]:
        print(f"  refused {r.get('deployment') or r['topic']}: {r['reason']}")
    return 0


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv[1:] if argv and argv[0] == "agent" else argv)
    try:
        return {"run": _run, "key": _key, "status": _status}[args.action](args)
    except ModelfleetError as exc:
        print(f"modelfleet: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
