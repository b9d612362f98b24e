# -*- test-case-name: mtlsd.test.test_proxyheader -*-
"""
PROXY protocol headers (version 1 and 2, as HAProxy specifies them) that
tell a backend who the client is: its address and, in version 2, its
verified TLS identity.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable

from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet.interfaces import IAddress, ITransport

from ._identity import identityFromCertificate

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_SUBTYPE_SSL_CLIENT_CERT = 0x28
PP2_CLIENT_SSL = 0x01
PP2_CLIENT_CERT_CONN = 0x02
VERSIONS = ("v1", "v2", "v2-full")


def _ip(address: IAddress) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int] | None:
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is None or port is None:
        return None
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip, port


def v1Header(source: IAddress, destination: IAddress) -> bytes:
    """
    A version 1 (text) header, C{PROXY UNKNOWN} when the addresses are not
    IP addresses of one family.
    """
    src, dst = _ip(source), _ip(destination)
    if src is None or dst is None or src[0].version != dst[0].version:
        return b"PROXY UNKNOWN\r\n"
    family = "TCP4" if src[0].version == 4 else "TCP6"
    return f"PROXY {family} {src[0]} {dst[0]} {src[1]} {dst[1]}\r\n".encode()


def _tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


def v2Header(
    source: IAddress,
    destination: IAddress,
    tlsVersion: str | None = None,
    cipher: str | None = None,
    commonName: str | None = None,
    clientCertificate: bytes | None = None,
) -> bytes:
    """
    A version 2 (binary) header: PROXY command over TCP, with a
    C{PP2_TYPE_SSL} TLV saying the client presented a certificate that
    verified, and its TLS version, cipher, CN and (optionally) DER
    certificate as sub-TLVs.
    """
    src, dst = _ip(source), _ip(destination)
    if src is None or dst is None or src[0].version != dst[0].version:
        family, addresses = 0x00, b""  # AF_UNSPEC: the backend keeps its own addresses
    elif src[0].version == 4:
        family, addresses = 0x11, src[0].packed + dst[0].packed + struct.pack("!HH", src[1], dst[1])
    else:
        family, addresses = 0x21, src[0].packed + dst[0].packed + struct.pack("!HH", src[1], dst[1])
    subs = b""
    if tlsVersion:
        subs += _tlv(PP2_SUBTYPE_SSL_VERSION, tlsVersion.encode())
    if cipher:
        subs += _tlv(PP2_SUBTYPE_SSL_CIPHER, cipher.encode())
    if commonName is not None:
        subs += _tlv(PP2_SUBTYPE_SSL_CN, commonName.encode())
    if clientCertificate is not None:
        subs += _tlv(PP2_SUBTYPE_SSL_CLIENT_CERT, clientCertificate)
    # client: SSL, certificate presented on this connection; verify: 0 = ok
    ssl = _tlv(PP2_TYPE_SSL, struct.pack("!BI", PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN, 0) + subs)
    body = addresses + ssl
    return SIGNATURE + struct.pack("!BBH", 0x21, family, len(body)) + body


def headerMaker(version: str) -> Callable[[ITransport], bytes]:
    """
    @param version: C{v1}, C{v2}, or C{v2-full} (v2 with the client's DER
        certificate).
    @return: a function making the header for an accepted mutual-TLS
        connection from its transport.
    """
    if version not in VERSIONS:
        raise ValueError(f"--proxy-protocol must be one of {', '.join(VERSIONS)}, not {version!r}")

    def make(transport: ITransport) -> bytes:
        source, destination = transport.getPeer(), transport.getHost()
        if version == "v1":
            return v1Header(source, destination)
        connection = transport.getHandle()  # type: ignore[attr-defined]
        certificate = connection.get_peer_certificate(as_cryptography=True)
        return v2Header(
            source,
            destination,
            tlsVersion=connection.get_protocol_version_name(),
            cipher=connection.get_cipher_name(),
            commonName=identityFromCertificate(certificate).commonName,
            clientCertificate=(
                certificate.public_bytes(Encoding.DER) if version == "v2-full" else None
            ),
        )

    return make
