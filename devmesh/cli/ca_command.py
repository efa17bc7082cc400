"""`devmesh ca`: where the user's local CA is and how to trust it; `--export FILE` writes its
certificate (public) for `curl --cacert`, a browser or a system store. No daemon needed: the
CA is the user's, shared by every mesh (adapters/ca.py); it is made here if missing."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Annotated

import typer

from devmesh.cli.options import JsonFlag
from devmesh.core.problems import MeshError


def _trust_text(cert: Path, subject: str, not_after: str) -> str:
    return f"""\
devmesh's local CA: {cert}
  subject {subject}, valid until {not_after}
It signs the sidecars' mTLS certificates and the ingress's HTTPS certificate
(`ingress: {{tls: true}}`). Its key stays beside it (mode 0600); only the certificate is shared.

Trust it:
  curl          curl --cacert {cert} https://127.0.0.1:PORT/
  Python        SSL_CERT_FILE={cert} (requests: REQUESTS_CA_BUNDLE={cert})
  Node.js       NODE_EXTRA_CA_CERTS={cert}
  Debian/Ubuntu sudo cp {cert} /usr/local/share/ca-certificates/devmesh.crt
                sudo update-ca-certificates
  macOS         sudo security add-trusted-cert -d -r trustRoot \\
                  -k /Library/Keychains/System.keychain {cert}
  Chrome/Chromium on Linux (NSS):
                certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n devmesh -i {cert}
  Firefox       Settings > Privacy & Security > Certificates > View Certificates >
                Authorities > Import... (choose the file, trust it for websites)

`devmesh ca --export FILE` writes a copy of the certificate to FILE."""


def ca(
    export: Annotated[
        Path | None,
        typer.Option("--export", help="Write the CA certificate (PEM, public) to this file."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Show the local CA (made if missing) and how to trust it; --export writes it.

    Example: devmesh ca --export ca.pem && curl --cacert ca.pem https://127.0.0.1:8443/"""
    from devmesh.adapters.ca import load_or_create

    local = load_or_create()  # CAError (a MeshError) names the directory and what to do
    if export is not None:
        _export(export, local.cert_pem)
    not_after = f"{local.not_after:%Y-%m-%d %H:%M} UTC"
    if as_json:
        data = {
            "directory": str(local.path),
            "certificate": str(local.cert_file),
            "subject": local.subject,
            "not_after": local.not_after.isoformat(),
            "exported": str(export) if export is not None else None,
        }
        typer.echo(json.dumps(data, indent=2))
        return
    typer.echo(_trust_text(local.cert_file, local.subject, not_after))
    if export is not None:
        typer.echo(f"\nwrote {export}")


def _export(path: Path, pem: str) -> None:
    """The certificate where the user asked; a file there is replaced in place (its mode and
    owner stay), nothing else is touched."""
    if path.is_dir():
        raise MeshError(f"--export {path}: is a directory; give a file name")
    # O_NONBLOCK: a FIFO nobody reads fails at once (ENXIO) instead of hanging; one read
    # (`--export /dev/stdout | ...`) opens as usual. Writes then block as they normally do.
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise MeshError(f"--export {path}: a FIFO (or socket) nobody reads") from None
        raise MeshError(f"--export {path}: cannot write: {exc.strerror or exc}") from None
    try:
        os.set_blocking(fd, True)
        with os.fdopen(fd, "w") as out:
            out.write(pem)
    except OSError as exc:
        raise MeshError(f"--export {path}: cannot write: {exc.strerror or exc}") from None
