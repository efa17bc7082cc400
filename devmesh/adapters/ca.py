"""The local certificate authority: one per user, reused by every mesh (mkcert's model).

Where it lives: $DEVMESH_CA_DIR, else ${XDG_DATA_HOME:-~/.local/share}/devmesh/ca. Not in
the per-mesh state directory (under /tmp by default, gone at reboot): a browser or a
`curl --cacert` told to trust this CA must keep trusting it across reboots and meshes.

    ca.pem       the CA certificate (public; what `devmesh ca --export` hands out)
    ca-key.pem   its private key, mode 0600
    .devmesh-ca  the marker: devmesh made this directory

The directory is made 0700 when missing. An existing one must be its owner's only
(mode & 077 == 0): devmesh never chmods or deletes anything it did not make, so a directory
that is open to others, half a CA, or a file that does not parse is an error naming the
path (CAError), never a traceback and never a "repair".

Keys are ECDSA P-256: a pod's key and certificate take well under a millisecond, which is
what lets certificates live for seconds in tests and be re-issued at half-life.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import getpass
import ipaddress
import os
import socket
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from devmesh.core.problems import MeshError

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
MARKER = ".devmesh-ca"
_LOCK = ".lock"
CA_LIFETIME = dt.timedelta(days=3650)  # mkcert's ten years: trust is set up once
_BACKDATE = dt.timedelta(minutes=1)  # not_before a little in the past: clocks of a test
_MAX_PEM = 64 * 1024  # a CA file is a few hundred bytes; refuse to read a huge one


class CAError(MeshError):
    """The CA directory cannot be used; the message names the path and what to do."""


def ca_dir() -> Path:
    explicit = os.environ.get("DEVMESH_CA_DIR")
    if explicit:
        return Path(explicit)
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "devmesh" / "ca"


@dataclass(frozen=True, slots=True)
class Issued:
    """A leaf certificate and its key, as PEM, and when it expires."""

    cert_pem: str
    key_pem: str
    not_after: dt.datetime  # aware, UTC
    serial: int


@dataclass(frozen=True, slots=True)
class LocalCA:
    path: Path  # the CA directory
    cert_pem: str
    _cert: x509.Certificate
    _key: ec.EllipticCurvePrivateKey

    @property
    def cert_file(self) -> Path:
        return self.path / CA_CERT

    @property
    def not_after(self) -> dt.datetime:
        return self._cert.not_valid_after_utc

    @property
    def subject(self) -> str:
        return self._cert.subject.rfc4514_string()

    def issue(
        self,
        *,
        lifetime: dt.timedelta,
        uris: Iterable[str] = (),
        dns_names: Iterable[str] = (),
        ips: Iterable[str] = (),
        common_name: str = "",
        now: dt.datetime | None = None,
    ) -> Issued:
        """A fresh key and a certificate for it, valid for `lifetime` from `now`, for server
        and client authentication, with the given SANs (a pod: its SPIFFE ID as a URI; the
        ingress: localhost and 127.0.0.1). Never outlives the CA."""
        uris, dns_names, ips = tuple(uris), tuple(dns_names), tuple(ips)
        if lifetime <= dt.timedelta(0):
            raise ValueError(f"a certificate lifetime must be positive, got {lifetime}")
        if not (uris or dns_names or ips):
            raise ValueError("a certificate needs at least one subject alternative name")
        now = now or dt.datetime.now(dt.UTC)
        not_after = min(now + lifetime, self.not_after)
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
        sans += [x509.DNSName(d) for d in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        cn = common_name or (dns_names[0] if dns_names else uris[0] if uris else ips[0])
        serial = x509.random_serial_number()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn[:64])]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                _key_usage(ca=False),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            # SPIFFE X509-SVID: with an empty-ish subject the SAN carries the identity.
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(self._key, hashes.SHA256())
        )
        return Issued(
            cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
            key_pem=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode(),
            not_after=cert.not_valid_after_utc,
            serial=serial,
        )

    def signed(self, cert_pem: str) -> bool:
        """Whether this CA signed the certificate (a user's certificate, a pod's)."""
        try:
            cert = x509.load_pem_x509_certificate(cert_pem.encode())
            cert.verify_directly_issued_by(self._cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True


def load_or_create(path: Path | None = None, *, now: dt.datetime | None = None) -> LocalCA:
    """The user's CA at `path` (default `ca_dir()`), made on first use. CAError naming the
    path when it cannot be used."""
    path = path or ca_dir()
    _ensure_dir(path)
    with _locked(path):  # two daemons starting at once must not make two CAs
        cert_file, key_file = path / CA_CERT, path / CA_KEY
        have_cert, have_key = _exists(cert_file), _exists(key_file)
        if have_cert and have_key:
            return _load(path, now=now)
        if have_cert or have_key:
            present, missing = (cert_file, key_file) if have_cert else (key_file, cert_file)
            raise CAError(
                f"the CA directory {path} is incomplete: {present.name} is there but "
                f"{missing.name} is not; devmesh does not replace a CA it cannot load "
                f"(move {path} away, or set DEVMESH_CA_DIR)"
            )
        return _create(path, now=now)


def _ensure_dir(path: Path) -> None:
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                path.mkdir(mode=0o700)
                (path / MARKER).write_text("devmesh local CA\n")
        info = path.stat()
    except OSError as e:
        raise CAError(f"the CA directory {path} cannot be used: {e.strerror or e}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise CAError(f"{path} is not a directory (the CA's); set DEVMESH_CA_DIR")
    if info.st_uid != os.getuid():
        raise CAError(f"the CA directory {path} belongs to another user; set DEVMESH_CA_DIR")
    if info.st_mode & 0o077:
        raise CAError(
            f"the CA directory {path} has mode {stat.S_IMODE(info.st_mode):04o}; the CA's key "
            f"must be its owner's only and devmesh does not change a mode it did not set: "
            f"`chmod 700 {path}`, or set DEVMESH_CA_DIR"
        )
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise CAError(f"the CA directory {path} cannot be read or written; set DEVMESH_CA_DIR")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        handle = open(path / _LOCK, "a")  # noqa: SIM115 - closed below
    except OSError as e:
        raise CAError(f"the CA directory {path} cannot be used: {e.strerror or e}") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _exists(file: Path) -> bool:
    try:
        file.lstat()
    except FileNotFoundError:
        return False
    except OSError as e:
        raise CAError(f"{file} cannot be read: {e.strerror or e}") from None
    return True


def _read(file: Path) -> bytes:
    try:
        info = file.lstat()
        if not stat.S_ISREG(info.st_mode):
            raise CAError(f"{file} is not a regular file; the CA is not usable")
        if info.st_size > _MAX_PEM:
            raise CAError(f"{file} is {info.st_size} bytes: not a CA file")
        return file.read_bytes()
    except OSError as e:
        raise CAError(f"{file} cannot be read: {e.strerror or e}") from None


def _load(path: Path, *, now: dt.datetime | None) -> LocalCA:
    cert_file, key_file = path / CA_CERT, path / CA_KEY
    try:
        key_info = key_file.lstat()
    except OSError as e:
        raise CAError(f"{key_file} cannot be read: {e.strerror or e}") from None
    if key_info.st_mode & 0o077:
        raise CAError(
            f"{key_file} has mode {stat.S_IMODE(key_info.st_mode):04o}; a CA key must be its "
            f"owner's only: `chmod 600 {key_file}`"
        )
    cert_pem = _read(cert_file)
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise CAError(f"{cert_file} is not a PEM certificate; the CA is not usable") from None
    try:
        key = serialization.load_pem_private_key(_read(key_file), password=None)
    except (ValueError, TypeError):
        raise CAError(f"{key_file} is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CAError(f"{key_file} is not an EC key (devmesh makes P-256 CA keys)")
    if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
        raise CAError(f"{key_file} is not the key of {cert_file}; the CA is not usable")
    try:
        ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        ca = False
    if not ca:
        raise CAError(f"{cert_file} is not a CA certificate")
    now = now or dt.datetime.now(dt.UTC)
    if cert.not_valid_after_utc <= now:
        raise CAError(
            f"the CA in {path} expired on {cert.not_valid_after_utc:%Y-%m-%d}; move {path} "
            "away and devmesh makes a new one (then trust the new one again)"
        )
    return LocalCA(path=path, cert_pem=cert_pem.decode(), _cert=cert, _key=key)


def _create(path: Path, *, now: dt.datetime | None) -> LocalCA:
    now = now or dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "devmesh local CA"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"devmesh {_who()}"[:64]),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(ca=True),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    try:
        _write(path / CA_KEY, key_pem, 0o600)  # the key first: a cert alone is "incomplete"
        _write(path / CA_CERT, cert_pem, 0o644)
    except OSError as e:
        raise CAError(f"cannot write the CA into {path}: {e.strerror or e}") from None
    return LocalCA(path=path, cert_pem=cert_pem.decode(), _cert=cert, _key=key)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """Signing only; a CA also signs certificates and CRLs (the CA's and a leaf's, one rule)."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _write(file: Path, data: bytes, mode: int) -> None:
    tmp = file.with_name(f".{file.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)  # mode from the start
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, file)  # readers see the whole file or none


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"
