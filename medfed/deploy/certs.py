"""TLS certificates and node keys for a real federation (no openssl needed: `cryptography`).

``init_certs``: a private CA plus the coordinator's server certificate whose SANs list the
names and IPs hospitals dial. ``create_node_keys``: a SuperNode's authentication key pair
(EC P-384, OpenSSH format, what Flower's node authentication expects).
``check_server_certs`` / ``check_root_cert`` / ``check_node_key`` turn every broken file
into one clear line before a Flower process is started.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from medfed.errors import MedFedError
from medfed.io import atomic_write_bytes

CA_CERT, CA_KEY = "ca.pem", "ca.key"
SERVER_CERT, SERVER_KEY = "server.pem", "server.key"
CA_NAME = "MedFed federation CA"
NODE_KEY, NODE_PUB = "node.key", "node.pub"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "MedFed federation"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def init_certs(folder: str | Path, server_names: list[str], days: int = 825,
               not_before: dt.datetime | None = None) -> dict[str, Path]:
    """Write ca.pem/ca.key and server.pem/server.key (SANs = ``server_names``) to ``folder``.

    Refuses to overwrite an existing CA: hospitals already trust it.
    """
    folder = Path(folder)
    if (folder / CA_CERT).exists():
        raise MedFedError("a CA already exists here", where=str(folder / CA_CERT),
                          fix="hospitals trust it, so keep it (or choose an empty folder for "
                          "a new federation)")
    if days < 1:
        raise MedFedError(f"validity of {days} day(s)", where="certs init --days",
                          fix="give 1 day or more (default 825)")
    if not server_names:
        raise MedFedError("no server name", where="certs init --server-name",
                          fix="give --server-name (the host name hospitals dial)")
    start = not_before or _now() - dt.timedelta(minutes=5)
    end = start + dt.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = _ca_cert(ca_key, start, end)
    server_key = ec.generate_private_key(ec.SECP384R1())
    server = _server_cert(server_key, server_names, ca_key, start, end)
    # the CA last: its presence marks a complete folder
    paths = {"server_key": folder / SERVER_KEY, "server_cert": folder / SERVER_CERT,
             "ca_key": folder / CA_KEY, "ca_cert": folder / CA_CERT}
    atomic_write_bytes(paths["server_key"], _pem_key(server_key))
    atomic_write_bytes(paths["server_cert"], server.public_bytes(serialization.Encoding.PEM))
    atomic_write_bytes(paths["ca_key"], _pem_key(ca_key))
    atomic_write_bytes(paths["ca_cert"], ca.public_bytes(serialization.Encoding.PEM))
    for key in ("server_key", "ca_key"):
        paths[key].chmod(0o600)
    return paths


def _ca_cert(ca_key: ec.EllipticCurvePrivateKey, start: dt.datetime,
             end: dt.datetime) -> x509.Certificate:
    """The federation's self-signed CA certificate (signs certificates only)."""
    ca_name = _name(CA_NAME)
    return (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
            .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .sign(ca_key, hashes.SHA384()))


def _server_cert(server_key: ec.EllipticCurvePrivateKey, server_names: list[str],
                 ca_key: ec.EllipticCurvePrivateKey, start: dt.datetime,
                 end: dt.datetime) -> x509.Certificate:
    """The coordinator's TLS server certificate for ``server_names``, signed by the CA."""
    return (x509.CertificateBuilder().subject_name(_name(server_names[0]))
            .issuer_name(_name(CA_NAME)).public_key(server_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(_san(server_names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA384()))


def _read_cert(path: Path, what: str) -> x509.Certificate:
    if not path.is_file():
        raise MedFedError(f"{what} not found", where=str(path),
                          fix="create it with `medfed certs init`")
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError:
        raise MedFedError("not a PEM certificate", where=str(path),
                          fix=f"use the {what} written by `medfed certs init`") from None


def _check_dates(cert: x509.Certificate, path: Path) -> None:
    now = _now()
    if cert.not_valid_after_utc < now:
        raise MedFedError(f"certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}",
                          where=str(path), fix="issue new ones with `medfed certs init` in a "
                          "new folder")
    if cert.not_valid_before_utc > now:
        raise MedFedError(f"certificate not valid before "
                          f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC", where=str(path),
                          fix="check the clock")


def check_root_cert(path: str | Path) -> x509.Certificate:
    """The CA certificate a hospital pins: readable, a CA, in date."""
    path = Path(path)
    cert = _read_cert(path, "CA certificate (ca.pem from the coordinator)")
    _check_dates(cert, path)
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise MedFedError("not a CA certificate", where=str(path),
                          fix="pass the coordinator's ca.pem as --root-cert")
    return cert


def check_server_certs(folder: str | Path) -> dict[str, Path]:
    """The coordinator's folder: CA and server certificate in date, key matching, CA-signed."""
    folder = Path(folder)
    ca = check_root_cert(folder / CA_CERT)
    server_path, key_path = folder / SERVER_CERT, folder / SERVER_KEY
    server = _read_cert(server_path, "server certificate")
    _check_dates(server, server_path)
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except FileNotFoundError:
        raise MedFedError("server key not found", where=str(key_path),
                          fix="run `medfed certs init`") from None
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise MedFedError("not an unencrypted PEM private key", where=str(key_path),
                          fix="run `medfed certs init` in a new folder") from None
    if key.public_key().public_numbers() != server.public_key().public_numbers():
        raise MedFedError(f"this key does not match {server_path}", where=str(key_path),
                          fix="keep the pair written together by `medfed certs init`")
    try:
        server.verify_directly_issued_by(ca)
    except (ValueError, TypeError, Exception):
        raise MedFedError(f"not signed by {folder / CA_CERT}", where=str(server_path),
                          fix="keep the certificate and CA of one `certs init` run") from None
    return {"ca_cert": folder / CA_CERT, "server_cert": server_path, "server_key": key_path}


def server_names(folder: str | Path) -> list[str]:
    """The SAN entries of the server certificate (what hospitals may dial)."""
    cert = _read_cert(Path(folder) / SERVER_CERT, "server certificate")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(v) for v in san.get_values_for_type(x509.DNSName)] + [
        str(v) for v in san.get_values_for_type(x509.IPAddress)]


def create_node_keys(folder: str | Path) -> dict[str, Path]:
    """A hospital's node key pair: node.key (keep it) and node.pub (send to the coordinator)."""
    folder = Path(folder)
    if (folder / NODE_KEY).exists():
        raise MedFedError("a node key already exists here", where=str(folder / NODE_KEY),
                          fix="the coordinator registered its public key, so keep it (or "
                          "choose another folder)")
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    atomic_write_bytes(folder / NODE_PUB, public + b"\n")
    atomic_write_bytes(folder / NODE_KEY, private)
    (folder / NODE_KEY).chmod(0o600)
    return {"private": folder / NODE_KEY, "public": folder / NODE_PUB}


def check_node_key(path: str | Path) -> None:
    """A SuperNode private key Flower can use (OpenSSH EC key from `medfed keys create`)."""
    path = Path(path)
    if not path.is_file():
        raise MedFedError("node key not found", where=str(path),
                          fix="create one with `medfed keys create`")
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise MedFedError("not a node private key (OpenSSH format)", where=str(path),
                          fix="pass the node.key written by `medfed keys create`, not the .pub "
                          "or a TLS key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise MedFedError("not an EC node key", where=str(path),
                          fix="create one with `medfed keys create`")


def check_node_public_key(path: str | Path) -> bytes:
    """A hospital's node.pub, as bytes; one clear line if it is anything else."""
    path = Path(path)
    if not path.is_file():
        raise MedFedError("public key not found", where=str(path),
                          fix="ask the hospital for the node.pub written by `medfed keys "
                          "create`")
    data = path.read_bytes()
    try:
        key = serialization.load_ssh_public_key(data.strip())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise MedFedError("not an OpenSSH public key", where=str(path),
                          fix="the hospital must send node.pub (never node.key)") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise MedFedError("not an EC node public key", where=str(path),
                          fix="use the node.pub from `medfed keys create`")
    return data
