"""TLS for the listener: a self-signed certificate made once into state_dir, or the user's files."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from pathlib import Path

from .config import Config
from .statedir import ensure_state_dir, tighten_file, write_private


def ensure_self_signed(state_dir: Path) -> tuple[Path, Path]:
    """Create tls.crt/tls.key (EC P-256, 10 years, SANs for this host and loopback) unless present.
    Both are 0600 in the private state directory (the certificate is public, but nothing there needs to be
    readable by others); the key is written before the certificate, each atomically."""
    ensure_state_dir(state_dir)
    cert_path, key_path = state_dir / "tls.crt", state_dir / "tls.key"
    if cert_path.exists() and key_path.exists():
        tighten_file(key_path)
        tighten_file(cert_path)
        return cert_path, key_path
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    hostname = socket.gethostname()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"nekzusd {hostname}")])
    now = datetime.datetime.now(datetime.UTC)
    sans = [x509.DNSName("localhost"), x509.DNSName(hostname),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    write_private(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def ssl_context(config: Config) -> ssl.SSLContext | None:
    tls = config.server.tls
    if tls.mode == "off":
        return None
    if tls.mode == "auto":
        cert, key = ensure_self_signed(config.state_path)
    else:
        assert tls.cert and tls.key  # config checks that mode 'files' names both
        cert, key = Path(tls.cert), Path(tls.key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context
