"""HTTPS at the ingress, without Docker: the mesh file's `ingress.tls`, the user's
certificate files and their problems, the gateway's listener and secret, `devmesh ca`."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from devmesh.adapters.ca import load_or_create
from devmesh.adapters.tlsfiles import TlsFileError, ingress_problems, load_pair
from devmesh.cli.app import run
from devmesh.core.load import load
from devmesh.core.model import IngressTls
from devmesh.core.problems import MeshInvalid
from devmesh.daemon.ingress_tls import IngressCert
from devmesh.envoy.names import INGRESS_SECRET
from devmesh.envoy.render import gateway_group, render

NOW = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)


def mesh_text(tls: str) -> str:
    return (
        "mesh: m\nservices:\n  a: {image: a, port: 8000}\n"
        f"ingress:\n  port: 8443\n  tls: {tls}\n  routes: [{{service: a}}]\n"
    )


def _pem_key(key: Any) -> bytes:
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def make_pair(
    directory: Path,
    name: str = "site",
    not_before: dt.datetime = NOW - dt.timedelta(days=1),
    not_after: dt.datetime = NOW + dt.timedelta(days=30),
    key: Any = None,
) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and its key, written as NAME.pem, NAME-key.pem."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / f"{name}.pem", directory / f"{name}-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(_pem_key(key))
    return cert_file, key_file


# -- the mesh file --------------------------------------------------------------------------


def test_tls_true_asks_for_the_local_ca_and_false_for_plain_http() -> None:
    ingress = load(mesh_text("true")).ingress
    assert ingress is not None and ingress.tls == IngressTls()
    plain = load(mesh_text("false")).ingress
    assert plain is not None and plain.tls is None


def test_files_are_resolved_against_the_mesh_files_directory_and_located() -> None:
    mesh = load(mesh_text("{cert: certs/site.pem, key: /abs/key.pem}"), "dir/devmesh.yaml", "/p")
    tls = mesh.ingress.tls if mesh.ingress else None
    assert tls is not None
    assert (tls.cert_file, tls.key_file) == ("/p/certs/site.pem", "/abs/key.pem")
    assert tls.cert_at == "dir/devmesh.yaml:6:15: ingress.tls.cert"
    assert tls.key_at.startswith("dir/devmesh.yaml:6:") and tls.key_at.endswith("ingress.tls.key")


@pytest.mark.parametrize(
    ("tls", "message"),
    [
        ("yes", "ingress.tls: expected true or false or a mapping, got 'yes'"),
        ("{cert: a.pem}", "ingress.tls: missing required key 'key'"),
        ("{cert: a.pem, key: k.pem, chain: c.pem}", "ingress.tls.chain: unknown key 'chain'"),
        ("{cert: 3, key: k.pem}", "ingress.tls.cert: expected a string"),
    ],
    ids=["not-a-boolean", "key-missing", "unknown-key", "not-a-path"],
)
def test_a_bad_tls_setting_is_a_located_problem(tls: str, message: str) -> None:
    with pytest.raises(MeshInvalid) as err:
        load(mesh_text(tls))
    assert "devmesh.yaml:6:" in str(err.value) and message in str(err.value)


# -- the user's files -----------------------------------------------------------------------


def test_a_good_pair_is_read_with_its_chain_and_expiry(tmp_path: Path) -> None:
    cert, key = make_pair(tmp_path)
    pair = load_pair(str(cert), str(key), now=NOW)
    assert pair.cert_pem == cert.read_text() and pair.key_pem == key.read_text()
    assert pair.not_after == NOW + dt.timedelta(days=30)


def _problems(cert: Path | str, key: Path | str) -> str:
    with pytest.raises(TlsFileError) as err:
        load_pair(str(cert), str(key), "f.yaml:6:15: ingress.tls.cert", "f.yaml:6:30: x", NOW)
    return str(err.value)


def test_an_expired_certificate_says_when_it_expired(tmp_path: Path) -> None:
    cert, key = make_pair(tmp_path, not_after=NOW - dt.timedelta(hours=1))
    text = _problems(cert, key)
    assert text == (
        f"f.yaml:6:15: ingress.tls.cert: {cert}: the certificate expired on 2026-12-03 11:00:00 UTC"
    )


def test_a_certificate_not_valid_yet_is_refused(tmp_path: Path) -> None:
    cert, key = make_pair(tmp_path, not_before=NOW + dt.timedelta(days=1))
    assert "is not valid before 2026-12-04 12:00:00 UTC" in _problems(cert, key)


def test_a_key_of_another_pair_is_named_foreign(tmp_path: Path) -> None:
    cert, _ = make_pair(tmp_path, "site")
    _, other = make_pair(tmp_path, "other")
    text = _problems(cert, other)
    assert text == (
        f"f.yaml:6:30: x: {other}: this key is not the one of the certificate in {cert} "
        "(a key from another pair)"
    )


def test_an_rsa_pair_is_served_too(tmp_path: Path) -> None:
    cert, key = make_pair(tmp_path, key=rsa.generate_private_key(65537, 2048))
    assert load_pair(str(cert), str(key), now=NOW).subject == "CN=localhost"


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda d: d / "missing.pem", "no such file"),
        (lambda d: d, "is a directory, not a certificate file"),
        (lambda d: _write(d / "junk.pem", b"not a certificate\n"), "not a PEM certificate"),
        (lambda d: _write(d / "huge.pem", b"x" * 300_000), "too large for a certificate file"),
    ],
    ids=["missing", "directory", "not-pem", "huge"],
)
def test_a_certificate_file_that_cannot_be_used_says_why(
    tmp_path: Path, setup: Any, expected: str
) -> None:
    _, key = make_pair(tmp_path)
    text = _problems(setup(tmp_path), key)
    assert text.startswith("f.yaml:6:15: ingress.tls.cert: ") and expected in text


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    cert, _ = make_pair(tmp_path)
    fifo = tmp_path / "key.fifo"
    os.mkfifo(fifo)
    assert f"{fifo}: not a regular file" in _problems(cert, fifo)


def test_an_encrypted_or_garbled_key_is_refused(tmp_path: Path) -> None:
    cert, _ = make_pair(tmp_path)
    key = ec.generate_private_key(ec.SECP256R1())
    locked = tmp_path / "locked.pem"
    locked.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    assert "the key is encrypted" in _problems(cert, locked)
    assert "not a PEM private key" in _problems(cert, _write(tmp_path / "k.pem", b"junk"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_key_file_is_named(tmp_path: Path) -> None:
    cert, key = make_pair(tmp_path)
    key.chmod(0)
    assert "cannot be read (permission denied)" in _problems(cert, key)


def test_every_problem_of_both_files_is_reported_at_once(tmp_path: Path) -> None:
    text = _problems(tmp_path / "nope.pem", tmp_path / "nope-key.pem")
    assert len(text.splitlines()) == 2


def test_ingress_problems_reads_the_files_a_mesh_names(tmp_path: Path) -> None:
    cert, key = make_pair(tmp_path, not_after=dt.datetime.now(dt.UTC) - dt.timedelta(days=1))
    (tmp_path / "devmesh.yaml").write_text("")
    mesh = load(mesh_text(f"{{cert: {cert.name}, key: {key.name}}}"), "devmesh.yaml", str(tmp_path))
    (problem,) = ingress_problems(mesh)
    assert problem.startswith("devmesh.yaml:6:15: ingress.tls.cert: ") and "expired" in problem
    assert ingress_problems(load(mesh_text("true"))) == ()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# -- what the gateway gets ------------------------------------------------------------------


def test_the_ingress_listener_terminates_tls_with_the_sds_certificate() -> None:
    mesh = load(mesh_text("true"))
    gateway = render(mesh, {}, None)[gateway_group(mesh)]
    ingress = next(item for item in gateway.listeners if item["name"] == "ingress")
    socket = ingress["filter_chains"][0]["transport_socket"]["typed_config"]
    assert socket["common_tls_context"]["tls_certificate_sds_secret_configs"][0]["name"] == (
        INGRESS_SECRET
    )
    assert "require_client_certificate" not in socket  # browsers and curl bring none
    plain = render(load(mesh_text("false")), {}, None)[gateway_group(mesh)]
    assert all(
        "transport_socket" not in c for item in plain.listeners for c in item["filter_chains"]
    )


class Wall:
    def __init__(self) -> None:
        self.now = NOW.timestamp()

    def __call__(self) -> float:
        return self.now


def _served(secret: dict[str, Any]) -> list[x509.Certificate]:
    chain = secret["tls_certificate"]["certificate_chain"]["inline_string"]
    return x509.load_pem_x509_certificates(chain.encode())


def test_tls_true_serves_a_local_ca_certificate_for_localhost_and_127_0_0_1(
    tmp_path: Path,
) -> None:
    ca = load_or_create(tmp_path / "ca", now=NOW - dt.timedelta(days=1))
    wall = Wall()
    cert = IngressCert(lambda: ca, wall)
    mesh = load(mesh_text("true"))
    (secret,) = cert.secrets(mesh)
    leaf, root = _served(secret)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert ca.signed(leaf.public_bytes(serialization.Encoding.PEM).decode())
    assert root.subject == leaf.issuer  # the chain up to the CA users were told to trust
    assert cert.secrets(mesh) == (secret,) and cert.generation == 1  # kept while fresh
    wall.now += 16 * 86400  # past half its 30 days
    (renewed,) = cert.secrets(mesh)
    assert renewed != secret and cert.generation == 2


def test_user_files_are_reread_when_they_change_and_refused_when_they_go_bad(
    tmp_path: Path,
) -> None:
    cert_file, key_file = make_pair(tmp_path, not_after=NOW + dt.timedelta(days=400))
    text = mesh_text(f"{{cert: {cert_file.name}, key: {key_file.name}}}")
    mesh = load(text, "devmesh.yaml", str(tmp_path))
    cert = IngressCert(lambda: pytest.fail("no CA is needed for the user's files"), Wall())
    (first,) = cert.secrets(mesh)
    assert first["tls_certificate"]["certificate_chain"]["inline_string"] == cert_file.read_text()
    assert cert.secrets(mesh) == (first,)
    make_pair(tmp_path, not_after=NOW + dt.timedelta(days=500))  # replaced on disk
    (second,) = cert.secrets(mesh)
    assert second != first and cert.generation == 2
    _, other_key = make_pair(tmp_path, "other")
    key_file.write_bytes(other_key.read_bytes())
    with pytest.raises(TlsFileError, match="a key from another pair"):
        cert.secrets(mesh)


# -- devmesh ca ------------------------------------------------------------------------------


def test_devmesh_ca_makes_the_ca_once_and_exports_its_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DEVMESH_CA_DIR", str(tmp_path / "ca"))
    out = tmp_path / "exported.pem"
    assert run(["ca", "--export", str(out)]) == 0
    text = capsys.readouterr().out
    ca_file = tmp_path / "ca" / "ca.pem"
    assert out.read_text() == ca_file.read_text()
    assert f"curl --cacert {ca_file} https://127.0.0.1:PORT/" in text
    assert "update-ca-certificates" in text and "security add-trusted-cert" in text
    assert run(["ca", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["certificate"] == str(ca_file) and data["exported"] is None
    assert out.read_text() == ca_file.read_text()  # the same CA: made once, reused


def test_devmesh_ca_with_a_ca_directory_it_cannot_use_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shared = tmp_path / "ca"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    monkeypatch.setenv("DEVMESH_CA_DIR", str(shared))
    assert run(["ca"]) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith(f"devmesh: the CA directory {shared} has mode 0755")
        and "Traceback" not in err
    )
    assert oct(shared.stat().st_mode & 0o777) == "0o755"  # not chmodded


def test_devmesh_ca_export_into_a_missing_directory_fails_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DEVMESH_CA_DIR", str(tmp_path / "ca"))
    assert run(["ca", "--export", str(tmp_path / "no" / "ca.pem")]) == 1
    assert "cannot write: No such file or directory" in capsys.readouterr().err


def test_devmesh_ca_export_to_a_fifo_nobody_reads_fails_at_once_and_one_read_gets_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import os

    monkeypatch.setenv("DEVMESH_CA_DIR", str(tmp_path / "ca"))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert run(["ca", "--export", str(fifo)]) == 1  # it used to wait for a reader forever
    assert "a FIFO (or socket) nobody reads" in capsys.readouterr().err
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # someone reads: it is written
    try:
        assert run(["ca", "--export", str(fifo)]) == 0
        assert os.read(reader, 65536).startswith(b"-----BEGIN CERTIFICATE-----")
    finally:
        os.close(reader)


def test_validate_reports_the_users_certificate_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, _ = make_pair(tmp_path, "site")
    _, other = make_pair(tmp_path, "other")
    mesh_file = tmp_path / "devmesh.yaml"
    mesh_file.write_text(mesh_text(f"{{cert: {cert.name}, key: {other.name}}}"))
    assert run(["validate", "-f", str(mesh_file)]) == 1
    err = capsys.readouterr().err
    assert f"{mesh_file}:6:" in err and "a key from another pair" in err
    assert err.splitlines()[-1] == f"{mesh_file}: 1 problem"  # it said "None: 1 problem"
    assert run(["validate", "-f", str(mesh_file), "--json"]) == 1
    (problem,) = json.loads(capsys.readouterr().out)["problems"]
    assert (problem["file"], problem["line"], problem["path"]) == (
        str(mesh_file),
        6,
        "ingress.tls.key",
    )
    assert "a key from another pair" in problem["message"]
