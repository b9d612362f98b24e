"""
Tests for L{mtlsd._proxyheader}: the headers are read back by Twisted's own
PROXY protocol parser and by an independent one (the C{proxy-protocol}
package), which also reads the TLS TLVs.  That package comes with the
C{dev} extra: without it a test skips where it needs it, after the checks
with Twisted's parser.
"""

from ipaddress import ip_address
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from mtlsd._proxyheader import headerMaker, v1Header, v2Header
from mtlsd.test._devextra import missing
from mtlsd.testing import CertificateAuthority, MemoryConnection, clientContext, serverContext

_NO_PARSER: str | None = None
try:
    from proxyprotocol.v1 import ProxyProtocolV1
    from proxyprotocol.v2 import ProxyProtocolV2
except ImportError as e:
    _NO_PARSER = missing(e)


def _v1(header: bytes) -> Any:
    if _NO_PARSER is not None:
        raise SkipTest(_NO_PARSER)
    return ProxyProtocolV1().unpack(header)


def _v2(header: bytes) -> Any:
    if _NO_PARSER is not None:
        raise SkipTest(_NO_PARSER)
    return ProxyProtocolV2().unpack(header)


CLIENT = IPv4Address("TCP", "203.0.113.7", 40000)
SERVER = IPv4Address("TCP", "127.0.0.1", 8443)
CLIENT6 = IPv6Address("TCP", "2001:db8::7", 40000)
SERVER6 = IPv6Address("TCP", "::1", 8443)


class V1Tests(SynchronousTestCase):
    def test_ipv4(self) -> None:
        """
        A TCP4 line both parsers read back.
        """
        header = v1Header(CLIENT, SERVER)
        self.assertEqual(header, b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 8443\r\n")
        info = V1Parser.parse(header.rstrip(b"\r\n"))
        self.assertEqual(info.source, CLIENT)
        result = _v1(header)
        self.assertEqual((str(result.source[0]), result.source[1]), ("203.0.113.7", 40000))

    def test_ipv6AndMapped(self) -> None:
        """
        IPv6 addresses give TCP6; an IPv4 client of a dual-stack socket is
        given as IPv4.
        """
        self.assertEqual(v1Header(CLIENT6, SERVER6), b"PROXY TCP6 2001:db8::7 ::1 40000 8443\r\n")
        mapped = IPv6Address("TCP", "::ffff:203.0.113.7", 40000)
        mappedServer = IPv6Address("TCP", "::ffff:127.0.0.1", 8443)
        self.assertEqual(v1Header(mapped, mappedServer), v1Header(CLIENT, SERVER))

    def test_unknown(self) -> None:
        """
        Addresses that are not IP give C{PROXY UNKNOWN}.
        """
        self.assertEqual(v1Header(UNIXAddress(None), SERVER), b"PROXY UNKNOWN\r\n")


class V2Tests(SynchronousTestCase):
    def test_addressesAndTLVs(self) -> None:
        """
        The binary header carries the addresses (read back by Twisted's
        parser) and an SSL TLV saying a client certificate was presented
        and verified, with the TLS version, cipher, CN and certificate.
        """
        header = v2Header(CLIENT, SERVER, "TLSv1.3", "TLS_AES_256_GCM_SHA384", "alice", b"DER")
        self.assertEqual(V2Parser.parse(header).source, CLIENT)
        result = _v2(header)
        self.assertEqual((str(result.source[0]), result.source[1]), ("203.0.113.7", 40000))
        ssl = result.tlv.ssl
        self.assertTrue(ssl.has_ssl and ssl.has_cert_conn and ssl.verified)
        self.assertEqual(
            (ssl.version, ssl.cipher, ssl.cn), ("TLSv1.3", "TLS_AES_256_GCM_SHA384", "alice")
        )
        self.assertEqual(ssl.get(0x28), b"DER")

    def test_ipv6(self) -> None:
        """
        IPv6 addresses, read back by both parsers.
        """
        header = v2Header(CLIENT6, SERVER6)
        source: Any = V2Parser.parse(header).source
        self.assertEqual((ip_address(source.host), source.port), (ip_address("2001:db8::7"), 40000))
        self.assertEqual(str(_v2(header).source[0]), "2001:db8::7")

    def test_unspecified(self) -> None:
        """
        Without IP addresses the family is unspecified; the TLVs remain.
        """
        header = v2Header(UNIXAddress(None), SERVER, commonName="alice")
        self.assertEqual(header[13], 0x00)  # AF_UNSPEC
        self.assertEqual(header[16], 0x20)  # the PP2_TYPE_SSL TLV follows at once
        self.assertEqual(_v2(header).source, None)


class HeaderMakerTests(SynchronousTestCase):
    def test_fromConnection(self) -> None:
        """
        For an accepted connection, the header gives the client's address,
        the negotiated version and cipher, the certificate's CN and, with
        C{v2-full}, the certificate itself.
        """
        ca = CertificateAuthority()
        client = ca.issue("alice")
        c = MemoryConnection(
            serverContext(ca.server(), [ca.certificate]), clientContext(client, [ca.certificate])
        )
        c.flush()
        gate = c.app.transport
        v1 = headerMaker("v1")(gate)
        self.assertEqual(v1, b"PROXY TCP4 192.0.2.7 127.0.0.1 40001 8082\r\n")
        ssl = _v2(headerMaker("v2")(gate)).tlv.ssl
        self.assertEqual((ssl.cn, ssl.version), ("alice", "TLSv1.3"))
        self.assertIsNone(ssl.get(0x28))
        full = _v2(headerMaker("v2-full")(gate)).tlv.ssl
        self.assertEqual(full.get(0x28), client.certificate.public_bytes(Encoding.DER))
        self.assertRaises(ValueError, headerMaker, "v3")
