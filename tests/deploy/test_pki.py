"""The deployment's PKI: CA, SuperLink certificate, node keys in the formats Flower reads."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.cli.supernode.register import try_load_public_key
from typer.testing import CliRunner

from siloguard.cli import app
from siloguard.deploy.pki import fingerprint, init_pki, load_pki, make_node_keys
from siloguard.errors import ConfigError


def test_pki_init_makes_a_ca_and_a_server_certificate_it_signed_for_the_hosts(tmp_path: Path):
    pki = init_pki(tmp_path, ["127.0.0.1", "coordinator.example.net"])
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(pki.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["coordinator.example.net"]
    for key in (pki.ca_key, pki.server_key):
        assert key.stat().st_mode & 0o777 == 0o600
    assert load_pki(tmp_path) == pki


def test_when_a_ca_exists_then_pki_init_refuses_to_replace_it_without_force(tmp_path: Path):
    first = init_pki(tmp_path, ["127.0.0.1"]).ca_cert.read_bytes()
    with pytest.raises(ConfigError, match="--force"):
        init_pki(tmp_path, ["127.0.0.1"])
    assert init_pki(tmp_path, ["127.0.0.1"], force=True).ca_cert.read_bytes() != first


def test_when_there_is_no_pki_then_commands_say_to_run_pki_init(tmp_path: Path):
    with pytest.raises(ConfigError, match="siloguard pki init"):
        load_pki(tmp_path)


def test_node_keys_are_openssh_p384_that_flower_accepts_and_private_is_0600(tmp_path: Path):
    keys = make_node_keys(tmp_path, "germany")
    private = serialization.load_ssh_private_key(keys.private_key.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
    assert keys.private_key.stat().st_mode & 0o777 == 0o600
    assert keys.private_key.parent.stat().st_mode & 0o777 == 0o700
    assert try_load_public_key(keys.public_key)  # what `flwr supernode register` reads
    assert fingerprint(keys.public_key).startswith("SHA256:")
    with pytest.raises(ConfigError, match="--force"):
        make_node_keys(tmp_path, "germany")


@pytest.mark.parametrize("name", ["Germany", "../etc", "", "de utsch", "x" * 80])
def test_when_a_store_name_is_not_a_slug_then_no_key_is_made(tmp_path: Path, name: str):
    with pytest.raises(ConfigError, match="store name"):
        make_node_keys(tmp_path, name)
    assert not (tmp_path / "nodes").exists()


def test_pki_init_cli_prints_paths_never_keys(tmp_path: Path):
    result = CliRunner().invoke(app, ["pki", "init", "--root", str(tmp_path), "--host", "127.0.0.1"])
    assert result.exit_code == 0, result.output
    assert "ca.pem" in result.output
    secret = (tmp_path / "pki" / "ca.key").read_text().splitlines()[1]
    assert secret not in result.output
    again = CliRunner().invoke(app, ["pki", "init", "--root", str(tmp_path)])
    assert again.exit_code == 2 and "error: a CA already exists" in again.output
