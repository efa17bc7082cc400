"""A user's certificate and key files for the ingress (`ingress: {tls: {cert, key}}`), read
and checked before a mesh that names them is taken: a file that cannot be read, is not
PEM, has expired or is not yet valid, or a key that is not the certificate's, is a problem
located in the mesh file, and the mesh that runs keeps serving with what it has.

Read only: devmesh never changes, moves or chmods these files. Each is read once per check,
bounded in size, and refused unless it is a regular file (a FIFO would block the reader).
"""

from __future__ import annotations

import datetime as dt
import os
import stat
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from devmesh.core.model import Mesh
from devmesh.core.problems import MeshError

MAX_PEM = 256 * 1024  # a certificate chain is a few KiB; a bigger file is not one


class TlsFileError(MeshError):
    """The user's certificate or key cannot be served; one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = tuple(problems)


@dataclass(frozen=True, slots=True)
class CertPair:
    cert_pem: str  # the chain as written: the server's certificate first
    key_pem: str
    not_after: dt.datetime  # aware, UTC
    subject: str


def _read(path: str, where: str, what: str) -> tuple[bytes | None, str | None]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        return None, f"{where}: {path}: no such file"
    except PermissionError:
        return None, f"{where}: {path}: cannot be read (permission denied)"
    except OSError as exc:
        return None, f"{where}: {path}: cannot be read ({exc.strerror or exc})"
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            return None, f"{where}: {path}: is a directory, not a {what} file"
        if not stat.S_ISREG(info.st_mode):
            return None, f"{where}: {path}: not a regular file"
        if info.st_size > MAX_PEM:
            return None, f"{where}: {path}: {info.st_size} bytes is too large for a {what} file"
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read(MAX_PEM + 1), None
    except OSError as exc:
        return None, f"{where}: {path}: cannot be read ({exc.strerror or exc})"
    finally:
        os.close(fd)


def load_pair(
    cert_file: str,
    key_file: str,
    cert_at: str = "ingress.tls.cert",
    key_at: str = "ingress.tls.key",
    now: dt.datetime | None = None,
) -> CertPair:
    """The pair, checked; TlsFileError with every problem found, each prefixed by where the
    file is named in the mesh file (`cert_at`, `key_at`)."""
    problems: list[str] = []
    cert_bytes, problem = _read(cert_file, cert_at, "certificate")
    problems += [problem] if problem else []
    key_bytes, problem = _read(key_file, key_at, "key")
    problems += [problem] if problem else []
    cert = key = None
    if cert_bytes is not None:
        try:
            chain = x509.load_pem_x509_certificates(cert_bytes)
            cert = chain[0]
        except ValueError:
            problems.append(f"{cert_at}: {cert_file}: not a PEM certificate")
    if key_bytes is not None:
        try:
            loaded = serialization.load_pem_private_key(key_bytes, password=None)
        except TypeError:
            problems.append(
                f"{key_at}: {key_file}: the key is encrypted; give an unencrypted PEM key "
                "(Envoy cannot ask for a passphrase)"
            )
        except (ValueError, UnsupportedAlgorithm):
            problems.append(f"{key_at}: {key_file}: not a PEM private key")
        else:
            if isinstance(loaded, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
                key = loaded
            else:
                problems.append(f"{key_at}: {key_file}: Envoy serves RSA or ECDSA keys only")
    if cert is not None:
        now = now or dt.datetime.now(dt.UTC)
        if cert.not_valid_after_utc <= now:
            problems.append(
                f"{cert_at}: {cert_file}: the certificate expired on "
                f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
            )
        elif cert.not_valid_before_utc > now:
            problems.append(
                f"{cert_at}: {cert_file}: the certificate is not valid before "
                f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC"
            )
        if key is not None and not _same_key(cert, key):
            problems.append(
                f"{key_at}: {key_file}: this key is not the one of the certificate in "
                f"{cert_file} (a key from another pair)"
            )
    if problems:
        raise TlsFileError(problems)
    assert cert is not None and cert_bytes is not None and key_bytes is not None
    return CertPair(
        cert_pem=cert_bytes.decode("ascii", errors="replace"),
        key_pem=key_bytes.decode("ascii", errors="replace"),
        not_after=cert.not_valid_after_utc,
        subject=cert.subject.rfc4514_string(),
    )


def _same_key(cert: x509.Certificate, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bool:
    ours = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    theirs = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return ours == theirs


def ingress_problems(mesh: Mesh, now: dt.datetime | None = None) -> tuple[str, ...]:
    """What keeps `mesh`'s ingress certificate files from being served (none: fine)."""
    tls = mesh.ingress.tls if mesh.ingress is not None else None
    if tls is None or tls.cert_file is None or tls.key_file is None:
        return ()
    try:
        load_pair(
            tls.cert_file,
            tls.key_file,
            tls.cert_at or "ingress.tls.cert",
            tls.key_at or "ingress.tls.key",
            now,
        )
    except TlsFileError as exc:
        return exc.problems
    return ()
