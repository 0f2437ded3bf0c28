"""`thinwire certs`: a development CA plus server and client certificates for the gRPC wire.

    thinwire certs --out certs --hosts localhost,server,10.0.0.5

writes ca.pem/ca.key, server.pem/server.key (SANs: the hosts) and client.pem/client.key
(signed by the same CA, for mutual TLS). Keys are ECDSA P-256, written with mode 0600. For
production, use certificates from your own PKI; these are for laptops and test clusters.
"""
from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from thinwire.errors import ConfigError
from thinwire.rundir import make_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", help="directory to write the PEM files into")
    parser.add_argument("--hosts", default="localhost,127.0.0.1",
                        help="comma-separated server host names / IPs for the server certificate (default: %(default)s)")
    parser.add_argument("--clients", default="client", help="comma-separated client certificate names (default: client)")
    parser.add_argument("--days", type=int, default=365, help="validity in days (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="overwrite existing files")


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "thinwire dev"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def _builder(subject: x509.Name, issuer: x509.Name, pub, days: int) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(pub)
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days)))


def make_ca(days: int = 365) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    name = _name("thinwire dev CA")
    cert = (_builder(name, name, key.public_key(), days)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def make_leaf(ca_cert: x509.Certificate, ca_key, cn: str, hosts: list[str], server: bool,
              days: int = 365) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    b = (_builder(_name(cn), ca_cert.subject, key.public_key(), days)
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    if hosts:
        b = b.add_extension(_san(hosts), critical=False)
    return b.sign(ca_key, hashes.SHA256()), key


def pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_bundle(out: str | os.PathLike, hosts: list[str], clients: list[str] = ("client",), days: int = 365,
                 force: bool = False) -> dict[str, Path]:
    """Write CA, server and client certificates; returns name -> path."""
    d = make_dir("out", out)
    names = ["ca", "server", *clients]
    paths = {f"{n}.{ext}": d / f"{n}.{ext}" for n in names for ext in ("pem", "key")}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not force:
        raise ConfigError("out", f"{existing[0]} already exists", "another --out directory, or --force")
    ca_cert, ca_key = make_ca(days)
    files = {"ca": (ca_cert, ca_key), "server": make_leaf(ca_cert, ca_key, hosts[0], hosts, True, days)}
    for c in clients:
        files[c] = make_leaf(ca_cert, ca_key, c, [], False, days)
    for n, (cert, key) in files.items():
        paths[f"{n}.pem"].write_bytes(pem_cert(cert))
        kp = paths[f"{n}.key"]
        fd = os.open(kp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem_key(key))
    return paths


def _split(field: str, value: str) -> list[str]:
    items = [h.strip() for h in value.split(",") if h.strip()]
    if not items:
        raise ConfigError(field, f"empty list {value!r}", "comma-separated names, e.g. localhost,server")
    return items


def run(args: argparse.Namespace) -> int:
    if args.days < 1:
        raise ConfigError("days", f"{args.days} is out of range", ">= 1")
    hosts = _split("hosts", args.hosts)
    clients = _split("clients", args.clients)
    if {"ca", "server"} & set(clients):
        raise ConfigError("clients", "client names 'ca' and 'server' are reserved")
    paths = write_bundle(args.out, hosts, clients, args.days, args.force)
    print(f"wrote {len(paths)} files to {args.out}: CA ca.pem, server server.pem/server.key for "
          f"{', '.join(hosts)}, client certs {', '.join(c + '.pem' for c in clients)}")
    print(f"  server: thinwire server --tls-cert {args.out}/server.pem --tls-key {args.out}/server.key "
          f"--tls-ca {args.out}/ca.pem ...")
    print(f"  client: thinwire client --tls-ca {args.out}/ca.pem --tls-cert {args.out}/{clients[0]}.pem "
          f"--tls-key {args.out}/{clients[0]}.key ...")
    return 0
