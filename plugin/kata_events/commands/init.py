"""`kata-events init`: make an external system id, a key, a self-signed certificate and a config
file, then say the next steps (trust, approval, check, run).

``--encrypt-key`` is for key policies that forbid an unencrypted private key at rest (the passphrase
file can then be moved to a systemd credential). It never overwrites an existing file unless asked,
writes keys and passphrases with mode 0600, never prints a passphrase, and prints on stderr (stdout
belongs to events).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import sys
import uuid
from pathlib import Path

from kata_events.config.urls import format_fingerprint, normalize_url
from kata_events.exits import ExitStatus, UserError

DESCRIPTION = """\
Make what a new integration needs: an external system id (a UUID), a private key, a self-signed
client certificate, and a config file for `kata-events run`; then print the next step.
"""

CONFIG_TEMPLATE = """\
# kata-events configuration, made by `kata-events init`. All keys: kata-events.toml.example.
url = [{url}]
external_system_id = "{external_system_id}"
cert = "client.crt"   # relative to this file
key = "client.key"
{key_password_line}# name = "pcn"   # this node in metrics, log lines and status (default: the url's host)

# Trust the Central Node's certificate: the CA that issued it, or (for the usual self-signed one)
# its SHA-256 fingerprint. `kata-events check --config <this file>` prints the fingerprint to
# compare and paste.
# ca_file = "central-node-ca.pem"
# pin_sha256 = ""

# filter = "Ioa.Severity == 'High'"
# max_events = 10000
# max_timeout = 60
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir", default=".", metavar="DIR", help="where to write the files (default: the current directory)"
    )
    parser.add_argument(
        "--url",
        action="append",
        default=[],
        metavar="URL",
        help="the Central Node's address, https://HOST[:PORT]; repeatable (default: a placeholder to edit)",
    )
    parser.add_argument(
        "--common-name",
        default=f"kata-events@{socket.gethostname()}",
        metavar="NAME",
        help="the certificate's subject CN (default: kata-events@<this host>)",
    )
    parser.add_argument(
        "--encrypt-key",
        action="store_true",
        help="encrypt the key (PKCS#8) with a random passphrase, written to client.key.pass (mode "
        "0600) beside it and named by key_password_file in the config",
    )
    parser.add_argument("--force", action="store_true", help="overwrite existing files")


def run(args: argparse.Namespace) -> int:
    from kata_events import certs  # cryptography: only this command needs it

    directory = Path(args.dir).expanduser()
    names = dict(
        cert=directory / "client.crt", key=directory / "client.key", config=directory / "config.toml"
    )
    if args.encrypt_key:
        names["key_password"] = directory / "client.key.pass"
    existing = [str(p) for p in names.values() if p.exists()]
    if existing and not args.force:
        raise UserError(
            f"{', '.join(existing)} already exist: choose another --dir, or --force to replace them "
            "(a new certificate needs a new approval on the Central Node)",
            ExitStatus.CANT_CREATE,
        )
    urls = []
    for url in args.url:
        try:
            urls.append(normalize_url(url)[0])
        except ValueError as exc:
            raise UserError(f"--url {url!r}: {exc}", ExitStatus.USAGE) from None
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        external_system_id = str(uuid.uuid4())
        pair = certs.make_self_signed_cert(args.common_name)
        key_password_line = ""
        if args.encrypt_key:
            passphrase = secrets.token_urlsafe(32).encode("ascii")
            certs.write_private_file(names["key_password"], passphrase + b"\n")
            pair = certs.KeyAndCert(certs.encrypt_key_pem(pair.key_pem, passphrase), pair.cert_pem)
            key_password_line = 'key_password_file = "client.key.pass"   # the key\'s passphrase\n'
        pair.write(names["cert"], names["key"])
        # A JSON string is a valid TOML basic string: a quote or backslash in --url stays quoted.
        url_text = ", ".join(json.dumps(u, ensure_ascii=False) for u in urls) or (
            '"https://central-node.example.local"'
        )
        config = CONFIG_TEMPLATE.format(
            url=url_text, external_system_id=external_system_id, key_password_line=key_password_line
        )
        certs.write_private_file(names["config"], config.encode("utf-8"))
    except OSError as exc:
        raise UserError(
            f"cannot write into {directory}: {exc.strerror or exc}", ExitStatus.CANT_CREATE
        ) from None
    fingerprint = format_fingerprint(pair.fingerprint)
    config_path = os.path.relpath(names["config"])
    if config_path.startswith(".."):  # outside the working directory: the full path reads better
        config_path = os.path.abspath(names["config"])
    secret = f", encrypted; its passphrase in {names['key_password']}, mode 0600" if args.encrypt_key else ""
    url_step = f"Check the url in {config_path}" if urls else f"Set url in {config_path}"
    sys.stderr.write(
        f"""Made:
  external system id  {external_system_id}
  certificate         {names["cert"]}   (self-signed, CN={args.common_name})
  key                 {names["key"]}   (mode 0600{secret})
  config              {names["config"]}
  certificate SHA-256 {fingerprint}

Next:
  1. {url_step}, then trust the Central Node:
       kata-events check --config {config_path}
     prints the server's fingerprint; set pin_sha256 to it (or ca_file: see the comments in the file).
  2. In the Central Node web interface, External systems: approve {external_system_id},
     after checking that its certificate fingerprint is {fingerprint}.
  3. kata-events check --config {config_path}   (every line ok), then
     kata-events run --config {config_path}
"""
    )
    return 0
