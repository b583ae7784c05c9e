"""`modelfleet pki ...` and `modelfleet broker config`: the broker's certificates and its ACL.

Both words live here because they are two halves of one setup: the CA decides who exists (a
certificate per identity), the broker config decides what each identity may do. The logic is in
`modules.pki` and `publisher._broker_config`; this is the argument parsing and the messages that
tell the operator what to copy where. See docs/security.md for the whole procedure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError

from modules import ConfigError, ModelfleetError, pki
from publisher._broker_config import (
    DEFAULT_BIND,
    DEFAULT_MAX_PAYLOAD,
    DEFAULT_PORT,
    BrokerConfigRequest,
    write_broker_config,
)


def _identity(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    who = parser.add_mutually_exclusive_group(required=required)
    who.add_argument("--publisher", metavar="NAME", help=f"a publisher (CN {pki.PUBLISHER_PREFIX}NAME)")
    who.add_argument("--device", metavar="ID", help="a device (CN = the device id)")


def _days(parser: argparse.ArgumentParser, default: int) -> None:
    parser.add_argument("--days", type=int, default=default, help=f"validity in days (default {default})")


def _pki_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelfleet pki",
        description="A certificate authority for the broker's mTLS; see docs/security.md.",
    )
    sub = parser.add_subparsers(dest="action", required=True)

    init = sub.add_parser("init", help="create the CA: key (0600), self-signed certificate, empty CRL")
    init.add_argument("--dir", type=Path, required=True, help="the CA folder (created, mode 0700)")
    init.add_argument("--name", default="modelfleet CA", help="the CA certificate's CN")
    _days(init, pki.CA_DAYS)

    issue = sub.add_parser(
        "issue", help="make a key and a client certificate here (for a device, prefer request + sign)"
    )
    issue.add_argument("--dir", type=Path, required=True, help="the CA folder")
    _identity(issue)
    issue.add_argument(
        "--out",
        type=Path,
        help="where key, certificate and ca.pem go (default: DIR/publishers/NAME or DIR/devices/ID)",
    )
    _days(issue, pki.LEAF_DAYS)
    issue.add_argument("--json", action="store_true", help="print machine-readable JSON")

    server = sub.add_parser("server", help="make the broker's key and certificate (DIR/server/)")
    server.add_argument("--dir", type=Path, required=True, help="the CA folder")
    server.add_argument(
        "--host", action="append", required=True, help="a name or IP clients dial (repeatable; SANs)"
    )
    _days(server, pki.LEAF_DAYS)
    server.add_argument("--json", action="store_true", help="print machine-readable JSON")

    request = sub.add_parser("request", help="on a device: make its key and a CSR; send only the CSR")
    request.add_argument("--device", required=True, metavar="ID", help="this device's id")
    request.add_argument(
        "--out", type=Path, required=True, help="folder for client.key (0600) and client.csr"
    )

    sign = sub.add_parser("sign", help="certify a device's CSR (refused unless its CN is --device)")
    sign.add_argument("--dir", type=Path, required=True, help="the CA folder")
    sign.add_argument("csr", type=Path, metavar="CSR", help="the client.csr the device made")
    sign.add_argument("--device", required=True, metavar="ID", help="the device id the CSR must name")
    sign.add_argument("--out", type=Path, help="where the certificate and ca.pem go (default DIR/devices/ID)")
    _days(sign, pki.LEAF_DAYS)
    sign.add_argument("--json", action="store_true", help="print machine-readable JSON")

    revoke = sub.add_parser("revoke", help="revoke every certificate of one identity (rewrites DIR/crl.pem)")
    revoke.add_argument("--dir", type=Path, required=True, help="the CA folder")
    _identity(revoke)
    return parser


def _broker_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelfleet broker",
        description="Broker configuration for a fleet; see docs/security.md.",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    config = sub.add_parser(
        "config", help="write a Mosquitto 2 config and ACL: mTLS only, one identity per certificate"
    )
    config.add_argument(
        "--mosquitto", type=Path, required=True, metavar="DIR", help="folder for config, ACL, key, certs"
    )
    config.add_argument("--pki", type=Path, required=True, metavar="CA_DIR", help="the CA folder")
    config.add_argument("--fleet", required=True, help="the fleet whose topics the ACL covers")
    config.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TLS port (default {DEFAULT_PORT})")
    config.add_argument("--bind", default=DEFAULT_BIND, help=f"listen address (default {DEFAULT_BIND})")
    config.add_argument(
        "--max-payload",
        type=int,
        default=DEFAULT_MAX_PAYLOAD,
        metavar="BYTES",
        help=f"largest message payload accepted (default {DEFAULT_MAX_PAYLOAD})",
    )
    config.add_argument(
        "--publisher",
        action="append",
        metavar="NAME",
        help="publisher allowed the whole fleet (repeatable; default: every publisher the CA issued)",
    )
    config.add_argument("--user", help="account Mosquitto drops to when started as root (its `user` option)")
    return parser


def _print_issued(issued: pki.IssuedCertificate, as_json: bool) -> None:
    if as_json:
        print(issued.model_dump_json(indent=2))
        return
    print(f"issued {issued.common_name!r} (serial {issued.serial}, valid until {issued.not_after:%Y-%m-%d})")
    print(f"  certificate: {issued.cert_file}")
    if issued.key_file is not None:
        print(f"  key:         {issued.key_file}  (secret, mode 0600)")
    print(f"  CA:          {issued.ca_file}")


def _pki(args: argparse.Namespace) -> int:
    if args.action == "init":
        cert = pki.init_ca(args.dir, name=args.name, days=args.days)
        print(
            f"CA created: {cert} (key {pki.PkiLayout(args.dir).ca_key}, mode 0600: keep it off the network)"
        )
    elif args.action == "issue":
        issued = pki.issue_client(
            args.dir, publisher=args.publisher, device=args.device, out=args.out, days=args.days
        )
        _print_issued(issued, args.json)
        if args.device and not args.json:
            print("  the key was made here: carry it to the device yourself, then delete this copy")
    elif args.action == "server":
        _print_issued(pki.issue_server(args.dir, args.host, days=args.days), args.json)
    elif args.action == "request":
        key_file, csr_file = pki.create_request(args.out, args.device)
        print(f"key:  {key_file}  (stays on this device, mode 0600)")
        print(
            f"CSR:  {csr_file}  (send this to the CA: `modelfleet pki sign --dir CA_DIR {csr_file.name} "
            f"--device {args.device}`)"
        )
    elif args.action == "sign":
        issued = pki.sign_request(args.dir, args.csr, device=args.device, out=args.out, days=args.days)
        _print_issued(issued, args.json)
        if not args.json:
            print("  send client.pem and ca.pem back to the device; no secret is in either")
    else:  # revoke
        serials = pki.revoke(args.dir, publisher=args.publisher, device=args.device)
        crl = pki.PkiLayout(args.dir).crl
        print(f"revoked {len(serials)} certificate(s): {', '.join(serials)}")
        print(f"  CRL: {crl}; run `modelfleet broker config` again and restart the broker")
    return 0


_OPTION_OF = {"mosquitto_dir": "--mosquitto", "pki_dir": "--pki"}


def _broker(args: argparse.Namespace) -> int:
    try:
        request = BrokerConfigRequest(
            mosquitto_dir=args.mosquitto,
            pki_dir=args.pki,
            fleet=args.fleet,
            port=args.port,
            bind=args.bind,
            max_payload=args.max_payload,
            publishers=args.publisher or [],
            user=args.user,
        )
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else ""
        option = _OPTION_OF.get(field, "--" + field.replace("_", "-"))
        raise ConfigError(f"{option}: {error['msg']}") from None
    files = write_broker_config(request)
    print(f"wrote {files.config} and {files.acl}")
    print(f"  publishers with the whole fleet: {', '.join(files.publishers)}")
    print(f"  run: mosquitto -c {files.config}  (or include it from /etc/mosquitto/conf.d)")
    return 0


def main(argv: list[str]) -> int:
    """`argv[0]` is the command word (`pki` or `broker`), as `modules.cli` passes it."""
    word, rest = (argv[0], argv[1:]) if argv and argv[0] in ("pki", "broker") else ("pki", argv)
    parser = _broker_parser() if word == "broker" else _pki_parser()
    args = parser.parse_args(rest)
    try:
        return _broker(args) if word == "broker" else _pki(args)
    except ModelfleetError as exc:
        print(f"modelfleet: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("modelfleet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
