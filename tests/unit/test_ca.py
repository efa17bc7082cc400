"""The local CA: made once per directory and reused, issuing SPIFFE and DNS/IP certificates
that chain to it; a directory it cannot use is a CAError naming the path, and devmesh
changes nothing it did not make."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from devmesh.adapters import ca as ca_mod
from devmesh.adapters.ca import CAError, load_or_create

SPIFFE = "spiffe://devmesh.local/mesh/shop/service/catalog"
HOUR = dt.timedelta(hours=1)


@pytest.fixture
def ca_path(tmp_path: Path) -> Path:
    return tmp_path / "ca"


def _cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def test_first_use_makes_a_private_directory_and_key(ca_path: Path) -> None:
    ca = load_or_create(ca_path)
    assert stat.S_IMODE(ca_path.stat().st_mode) == 0o700
    assert stat.S_IMODE((ca_path / "ca-key.pem").stat().st_mode) == 0o600
    assert ca.cert_file.read_text() == ca.cert_pem
    root = _cert(ca.cert_pem)
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert root.not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=3000)


def test_second_use_reuses_the_same_ca(ca_path: Path) -> None:
    first = load_or_create(ca_path)
    again = load_or_create(ca_path)
    assert again.cert_pem == first.cert_pem


def test_the_environment_chooses_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEVMESH_CA_DIR", str(tmp_path / "fresh"))
    assert ca_mod.ca_dir() == tmp_path / "fresh"
    assert load_or_create().path == tmp_path / "fresh"
    monkeypatch.delenv("DEVMESH_CA_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert ca_mod.ca_dir() == tmp_path / "data" / "devmesh" / "ca"


def test_a_pod_certificate_carries_its_spiffe_id_and_chains_to_the_ca(ca_path: Path) -> None:
    ca = load_or_create(ca_path)
    issued = ca.issue(uris=[SPIFFE], lifetime=HOUR)
    leaf = _cert(issued.cert_pem)
    leaf.verify_directly_issued_by(_cert(ca.cert_pem))
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [SPIFFE]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key = serialization.load_pem_private_key(issued.key_pem.encode(), None)
    assert key.public_key().public_numbers() == leaf.public_key().public_numbers()  # type: ignore[union-attr]
    assert ca.signed(issued.cert_pem)


def test_an_ingress_certificate_names_localhost_and_the_loopback_address(ca_path: Path) -> None:
    ca = load_or_create(ca_path)
    leaf = _cert(ca.issue(dns_names=["localhost"], ips=["127.0.0.1"], lifetime=HOUR).cert_pem)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


@pytest.mark.parametrize(
    "lifetime", [dt.timedelta(seconds=30), dt.timedelta(hours=24)], ids=["30s", "24h"]
)
def test_the_lifetime_is_the_one_asked_for(ca_path: Path, lifetime: dt.timedelta) -> None:
    now = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)
    ca = load_or_create(ca_path, now=now)
    issued = ca.issue(uris=[SPIFFE], lifetime=lifetime, now=now)
    assert issued.not_after == now + lifetime
    assert _cert(issued.cert_pem).not_valid_after_utc == now + lifetime
    assert _cert(issued.cert_pem).not_valid_before_utc <= now


def test_every_issue_is_a_new_key_and_serial(ca_path: Path) -> None:
    ca = load_or_create(ca_path)
    a, b = (ca.issue(uris=[SPIFFE], lifetime=HOUR) for _ in range(2))
    assert a.key_pem != b.key_pem and a.serial != b.serial


def test_another_ca_did_not_sign(tmp_path: Path) -> None:
    mine, theirs = load_or_create(tmp_path / "a"), load_or_create(tmp_path / "b")
    assert not mine.signed(theirs.issue(uris=[SPIFFE], lifetime=HOUR).cert_pem)
    assert not mine.signed("not a certificate")


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"uris": [SPIFFE], "lifetime": dt.timedelta(0)}, "positive"),
        ({"lifetime": HOUR}, "at least one subject alternative name"),
    ],
    ids=["zero-lifetime", "no-san"],
)
def test_a_meaningless_request_is_refused(ca_path: Path, kwargs: dict[str, Any], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        load_or_create(ca_path).issue(**kwargs)


# -- directories devmesh cannot use: an error naming the path, nothing changed ------------


def _snapshot(path: Path) -> dict[str, tuple[int, bytes | None]]:
    out = {}
    for p in [path, *path.rglob("*")]:
        info = p.lstat()
        data = p.read_bytes() if stat.S_ISREG(info.st_mode) else None
        out[str(p)] = (info.st_mode, data)
    return out


def _corrupt_cert(p: Path) -> None:
    (p / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\ngarbage\n")


def _corrupt_key(p: Path) -> None:
    (p / "ca-key.pem").write_text("not a key")


def _other_key(p: Path) -> None:
    other = load_or_create(p.parent / "other")
    (p / "ca-key.pem").write_bytes((other.path / "ca-key.pem").read_bytes())


def _cert_only(p: Path) -> None:
    (p / "ca-key.pem").unlink()


def _open_dir(p: Path) -> None:
    os.chmod(p, 0o755)


def _open_key(p: Path) -> None:
    os.chmod(p / "ca-key.pem", 0o644)


def _foreign_owner(p: Path) -> None:
    os.chown(p, 65534, 65534)


def _cert_is_a_dir(p: Path) -> None:
    (p / "ca.pem").unlink()
    (p / "ca.pem").mkdir()


def _leaf_as_ca(p: Path) -> None:
    ca = load_or_create(p)
    issued = ca.issue(uris=[SPIFFE], lifetime=HOUR)
    (p / "ca.pem").write_text(issued.cert_pem)
    (p / "ca-key.pem").write_text(issued.key_pem)


@pytest.mark.parametrize(
    ("spoil", "why"),
    [
        (_corrupt_cert, "ca.pem is not a PEM certificate"),
        (_corrupt_key, "ca-key.pem is not an unencrypted PEM private key"),
        (_other_key, "ca-key.pem is not the key of"),
        (_cert_only, "is incomplete: ca.pem is there but ca-key.pem is not"),
        (_open_dir, "has mode 0755"),
        (_open_key, "ca-key.pem has mode 0644"),
        (_cert_is_a_dir, "ca.pem is not a regular file"),
        (_leaf_as_ca, "ca.pem is not a CA certificate"),
        pytest.param(
            _foreign_owner,
            "belongs to another user",
            marks=pytest.mark.skipif(os.getuid() != 0, reason="chown needs root"),
        ),
    ],
    ids=[
        "corrupt-cert", "corrupt-key", "key-of-another-ca", "cert-without-key", "dir-open",
        "key-open", "cert-is-a-directory", "leaf-in-place-of-ca", "other-owner",
    ],
)  # fmt: skip
def test_an_unusable_ca_directory_is_an_error_naming_it_and_left_alone(
    ca_path: Path, spoil, why: str
) -> None:
    load_or_create(ca_path)
    spoil(ca_path)
    before = _snapshot(ca_path)
    with pytest.raises(CAError, match=why) as caught:
        load_or_create(ca_path)
    assert str(ca_path) in str(caught.value)
    assert _snapshot(ca_path) == before


def test_a_file_where_the_directory_should_be_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "ca").write_text("mine")
    with pytest.raises(CAError, match="is not a directory"):
        load_or_create(tmp_path / "ca")
    assert (tmp_path / "ca").read_text() == "mine"


def test_a_directory_that_cannot_be_made_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(CAError, match="cannot be used") as caught:
        load_or_create(tmp_path / "file" / "ca")
    assert str(tmp_path / "file" / "ca") in str(caught.value)


def test_an_expired_ca_is_an_error_not_replaced(ca_path: Path) -> None:
    load_or_create(ca_path, now=dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
    before = _snapshot(ca_path)
    with pytest.raises(CAError, match="expired on 2009"):
        load_or_create(ca_path)
    assert _snapshot(ca_path) == before


def test_an_existing_empty_private_directory_is_used(tmp_path: Path) -> None:
    (tmp_path / "ca").mkdir(mode=0o700)
    assert load_or_create(tmp_path / "ca").cert_file.exists()
