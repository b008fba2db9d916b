"""Key material of a deployment: a CA, the SuperLink's TLS certificate, each store's node key.

Everything is made with ``cryptography``; nothing shells out to openssl. Layout under the
deployment root (``settings.deploy.root``)::

    pki/ca.pem  pki/ca.key            the deployment's CA (the key signs the SuperLink cert)
    pki/superlink.pem  superlink.key  the SuperLink's TLS certificate (SANs: its host names)
    nodes/<store>/node.key  node.pub  a store's SuperNode authentication key pair

Flower 1.41 wants the node key as an OpenSSH-format EC key on a NIST curve
(``flower-supernode --auth-supernode-private-key``; ``flwr supernode register`` reads the
OpenSSH public key), so node keys are P-384 in that format. Private keys are written with
mode 0600 (atomically) and are never logged or echoed; only paths and SHA-256 fingerprints
of public keys are shown.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from siloguard._files import write_atomic
from siloguard.errors import ConfigError

__all__ = [
    "NodeKeys",
    "Pki",
    "fingerprint",
    "init_pki",
    "load_pki",
    "make_node_keys",
    "node_keys",
    "valid_store_name",
]

_STORE = re.compile(r"[a-z][a-z0-9_-]{0,63}")


@dataclass(frozen=True)
class Pki:
    """Paths of the deployment's CA and SuperLink certificate."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class NodeKeys:
    """Paths of one store's SuperNode key pair."""

    store: str
    private_key: Path
    public_key: Path


def valid_store_name(store: str) -> str:
    """Store names become paths and audit ids: lowercase letters, digits, ``-`` and ``_``."""
    if not _STORE.fullmatch(store):
        raise ConfigError(
            f"store name {store!r} is not usable: use lowercase letters, digits, '-' or '_', starting with a letter"
        )
    return store


def _paths(root: Path) -> Pki:
    pki = root / "pki"
    return Pki(pki / "ca.pem", pki / "ca.key", pki / "superlink.pem", pki / "superlink.key")


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def init_pki(root: Path, hosts: list[str], *, days: int = 365, force: bool = False) -> Pki:
    """Create the CA and a SuperLink certificate for ``hosts`` (names or IP addresses).

    Refuses to overwrite an existing CA unless ``force``: nodes trust it, and replacing it
    silently would cut every store off.
    """
    if not hosts:
        raise ConfigError("pki init needs at least one --host the SuperLink is reached at, e.g. 127.0.0.1")
    paths = _paths(root)
    if paths.ca_key.exists() and not force:
        raise ConfigError(f"a CA already exists in {paths.ca_key.parent}: pass --force to replace it (stores must then get the new ca.pem)")
    paths.ca_key.parent.mkdir(parents=True, exist_ok=True)
    paths.ca_key.parent.chmod(0o700)
    now = datetime.now(timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "siloguard deployment CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )
    write_atomic(paths.ca_key, _private_pem(ca_key), mode=0o600)
    write_atomic(paths.server_key, _private_pem(server_key), mode=0o600)
    write_atomic(paths.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    write_atomic(paths.server_cert, server_cert.public_bytes(serialization.Encoding.PEM))
    return paths


def load_pki(root: Path) -> Pki:
    """The existing PKI under ``root``, or a ConfigError saying to run ``siloguard pki init``."""
    paths = _paths(root)
    for path in (paths.ca_cert, paths.server_cert, paths.server_key):
        if not path.is_file():
            raise ConfigError(f"{path} is missing: run 'siloguard pki init' first (deploy root {root})")
    return paths


def node_keys(root: Path, store: str) -> NodeKeys:
    """Where a store's node key pair lives (whether or not it exists yet)."""
    folder = root / "nodes" / valid_store_name(store)
    return NodeKeys(store, folder / "node.key", folder / "node.pub")


def make_node_keys(root: Path, store: str, *, force: bool = False) -> NodeKeys:
    """Create a store's P-384 node key pair (OpenSSH format), private key mode 0600."""
    keys = node_keys(root, store)
    if keys.private_key.exists() and not force:
        raise ConfigError(
            f"store {store!r} already has a node key in {keys.private_key.parent}: pass --force to make a new one"
        )
    keys.private_key.parent.mkdir(parents=True, exist_ok=True)
    keys.private_key.parent.chmod(0o700)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    write_atomic(keys.private_key, private, mode=0o600)
    write_atomic(keys.public_key, public + f" siloguard-store-{store}\n".encode())
    return keys


def fingerprint(public_key: Path) -> str:
    """SHA-256 of the OpenSSH public key blob, as ``ssh-keygen -l`` prints it (base64, no padding)."""
    import base64

    blob = base64.b64decode(public_key.read_text().split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
