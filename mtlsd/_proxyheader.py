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


_IP = tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]


def _ip(address: IAddress) -> _IP | None:
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is None or port is None:
        return None
    return ipaddress.ip_address(host), port


def _pair(source: IAddress, destination: IAddress) -> tuple[_IP, _IP] | None:
    """
    The two IP addresses of one family, or L{None}.  An IPv4 client of a
    dual-stack socket (both addresses IPv4-mapped) is given as IPv4; one
    mapped address beside a plain IPv6 one stays IPv6.
    """
    src, dst = _ip(source), _ip(destination)
    if src is None or dst is None or src[0].version != dst[0].version:
        return None
    if src[0].version == 6:
        srcMapped, dstMapped = src[0].ipv4_mapped, dst[0].ipv4_mapped  # type: ignore[union-attr]
        if srcMapped is not None and dstMapped is not None:
            return (srcMapped, src[1]), (dstMapped, dst[1])
    return src, dst


def v1Header(source: IAddress, destination: IAddress) -> bytes:
    """
    A version 1 (text) header, C{PROXY UNKNOWN} when the addresses are not
    IP addresses of one family.
    """
    pair = _pair(source, destination)
    if pair is None:
        return b"PROXY UNKNOWN\r\n"
    src, dst = pair
    family = "TCP4" if src[0].version == 4 else "TCP6"
    return f"PROXY {family} {src[0]} {dst[0]} {src[1]} {dst[1]}\r\n".encode()


MAX_LENGTH = 0xFFFF  # of a TLV's value, and of the header after its first 16 bytes


def _tlv(kind: int, value: bytes) -> bytes:
    if len(value) > MAX_LENGTH:
        raise ValueError(
            f"a PROXY v2 TLV holds at most {MAX_LENGTH} bytes, not {len(value)} (type 0x{kind:02x})"
        )
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

    @raise ValueError: if a field does not fit (a TLV holds at most 65,535
        bytes: a client certificate with a huge extension does not).
    """
    pair = _pair(source, destination)
    if pair is None:
        family, addresses = 0x00, b""  # AF_UNSPEC: the backend keeps its own addresses
    else:
        (src, sport), (dst, dport) = pair
        family = 0x11 if src.version == 4 else 0x21
        addresses = src.packed + dst.packed + struct.pack("!HH", sport, dport)
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
    if len(body) > MAX_LENGTH:
        raise ValueError(f"a PROXY v2 header holds at most {MAX_LENGTH} bytes, not {len(body)}")
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
