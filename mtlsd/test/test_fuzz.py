"""
Property-based fuzzing (hypothesis) of every parser mtlsd owns: each input
gives a value or mtlsd's own clear error (L{ConfigurationError}, or the
L{ValueError} Twisted's endpoint parsers expect), never another exception;
and the PROXY headers mtlsd builds are read back, field for field, by an
independent parser.

hypothesis and the independent parser come with the C{dev} extra; without
them these tests skip.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import tempfile
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from mtlsd._config import configArguments
from mtlsd._errors import ConfigurationError
from mtlsd._files import parseCertificates
from mtlsd._identity import PeerIdentity
from mtlsd._parser import MtlsClientParser, MtlsServerParser
from mtlsd._pki import certificatePEM
from mtlsd._policy import AllowPolicy
from mtlsd._proxyheader import v1Header, v2Header
from mtlsd._tap import Options
from mtlsd.test._devextra import missing
from mtlsd.testing import CertificateAuthority

try:
    from hypothesis import HealthCheck, example, given, settings
    from hypothesis import strategies as st
    from proxyprotocol.v1 import ProxyProtocolV1
    from proxyprotocol.v2 import ProxyProtocolV2
except ImportError as e:
    # Only the runtime dependencies are installed (the README's quick start):
    # every test here skips, naming the dev extra, and inert stand-ins let the
    # decorators below run.  (mypy, run with the dev extra, sees both.)
    skip = missing(e)
    from mtlsd.test._devextra import (  # type: ignore[no-redef]
        HealthCheck,
        example,
        given,
        settings,
        st,
    )

FUZZ = settings(
    max_examples=int(os.environ.get("MTLSD_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

_CA = CertificateAuthority()
_PEM = certificatePEM(_CA.certificate)


def _mutated(data: bytes) -> Any:
    """
    C{data} truncated, with bytes changed, inserted or deleted.
    """
    edits = st.lists(
        st.tuples(
            st.sampled_from(["flip", "insert", "delete", "truncate"]),
            st.integers(0, len(data)),
            st.binary(min_size=1, max_size=4),
        ),
        max_size=5,
    )

    def apply(steps: list[tuple[str, int, bytes]]) -> bytes:
        out = bytearray(data)
        for kind, at, value in steps:
            at = min(at, len(out))
            if kind == "flip" and at < len(out):
                out[at] ^= value[0] or 1
            elif kind == "insert":
                out[at:at] = value
            elif kind == "delete":
                del out[at : at + len(value)]
            else:
                del out[at:]
        return bytes(out)

    return edits.map(apply)


def _pemBlocks() -> Any:
    """
    Text with PEM markers around random base64, as a broken bundle has.
    """
    label = st.sampled_from(["CERTIFICATE", "X509 CRL", "PRIVATE KEY", "CERT", ""])
    body = st.binary(max_size=300).map(lambda b: base64.encodebytes(b))
    return st.tuples(label, body, st.booleans()).map(
        lambda t: (
            b"-----BEGIN %s-----\n%s%s"
            % (t[0].encode(), t[1], b"-----END %s-----\n" % t[0].encode() if t[2] else b"")
        )
    )


class PEMBundleTests(SynchronousTestCase):
    @FUZZ
    @given(
        st.one_of(
            st.binary(max_size=2000),
            _mutated(_PEM),
            _mutated(_PEM + _PEM),
            st.lists(_pemBlocks(), max_size=3).map(b"".join),
        )
    )
    @example(_PEM)
    @example(b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    def test_bundle(self, data: bytes) -> None:
        """
        A bundle gives certificates or a L{ConfigurationError} naming it.
        """
        try:
            certificates = parseCertificates(data, "bundle.pem")
        except ConfigurationError as e:
            self.assertIn("bundle.pem", str(e))
        else:
            self.assertTrue(certificates)


_ENTRY = st.one_of(
    st.text(max_size=40),
    st.text(alphabet="abc*.:/-0123456789ABCDEFabcdef", max_size=70),
    st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
)


IP = ipaddress.ip_address("192.0.2.1")


class AllowListTests(SynchronousTestCase):
    @FUZZ
    @given(
        st.sampled_from(
            [
                "commonNames",
                "dnsNames",
                "uris",
                "ipAddresses",
                "organizationalUnits",
                "fingerprints",
                "spkiFingerprints",
            ]
        ),
        st.lists(_ENTRY, min_size=1, max_size=3),
        st.text(max_size=30),
        st.ip_addresses(),
    )
    @example("uris", ["spiffe://example.org/**"], "spiffe://example.org/a/b", IP)
    @example("ipAddresses", ["10.0.0.0/8"], "x", ipaddress.ip_address("10.1.2.3"))
    def test_entries(self, kind: str, entries: list[str], value: str, ip: Any) -> None:
        """
        An allow-list entry gives a policy or a L{ConfigurationError}; a
        policy decides on any identity without an error.
        """
        try:
            policy = AllowPolicy(**{kind: entries})
        except ConfigurationError:
            return
        now = datetime.datetime.now(datetime.timezone.utc)
        identity = PeerIdentity(
            commonName=value,
            dnsNames=(value,),
            ipAddresses=(str(ip),),  # as cryptography gives them: valid
            uris=(value,),
            emails=(value,),
            organizationalUnits=(value,),
            fingerprint=value,
            spkiFingerprint=value,
            serial=1,
            subject=value,
            issuer=value,
            notBefore=now,
            notAfter=now,
        )
        self.assertIsInstance(policy.allows(identity), bool)


_VALUE = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["8443", "server.pem", "yes", "no", "1.3", "tcp:8443", "localhost", "-1"]),
)


class EndpointStringTests(SynchronousTestCase):
    @FUZZ
    @given(
        st.lists(_VALUE, max_size=3),
        st.dictionaries(
            st.one_of(
                st.sampled_from(
                    ["cert", "key", "clientCerts", "host", "port", "endpoint", "allowCN",
                     "allowIP", "reloadInterval", "tlsMinVersion", "crl", "backlog",
                     "interface", "caCerts", "keyPassphraseFile", "keepLiveSessions"]
                ),
                st.text(max_size=10),
            ),
            _VALUE,
            max_size=5,
        ),
    )  # fmt: skip
    def test_parsers(self, args: list[str], kwargs: dict[str, str]) -> None:
        """
        mtlsd's C{mtls:} parsers, given any positional and keyword values (as
        Twisted's parsing of a string gives them), return an endpoint or
        raise a L{ValueError} (what Twisted's parsers raise for a bad
        description).
        """
        for parser, method in ((MtlsServerParser(), "parseStreamServer"),
                               (MtlsClientParser(), "parseStreamClient")):  # fmt: skip
            try:
                getattr(parser, method)(MemoryReactor(), *args, **kwargs)
            except ValueError:
                pass

    @FUZZ
    @given(
        st.lists(
            st.one_of(
                st.text(alphabet="abcdefghijklmnopqrstuvwxyz=:/.,0123456789 ", max_size=20),
                st.sampled_from(
                    [
                        "8443",
                        "cert=server.pem",
                        "clientCerts=clients.pem",
                        "host=localhost",
                        "port=8443",
                        "endpoint=tcp\\:8443",
                        "allowCN=a*",
                        "reloadInterval=x",
                        "tlsMinVersion=1.1",
                    ]
                ),
            ),
            max_size=5,
        ).map(":".join)
    )
    def test_strings(self, rest: str) -> None:
        """
        An C{mtls:} string gives an endpoint or a L{ValueError} (what
        Twisted's parsers raise for a bad description).
        """
        for parse in (serverFromString, clientFromString):
            try:
                parse(MemoryReactor(), "mtls:" + rest)
            except ValueError:
                pass


_TOML_VALUE = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True).map(lambda f: repr(f).replace("inf", "inf")),
    st.booleans().map(lambda b: "true" if b else "false"),
    st.text(max_size=15).map(lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'),
    st.lists(st.text(alphabet="abc", max_size=4).map(lambda s: f'"{s}"'), max_size=3).map(
        lambda items: "[" + ", ".join(items) + "]"
    ),
    st.just("{ a = 1 }"),
)
_KEYS = st.one_of(
    st.sampled_from(
        [
            "port",
            "interface",
            "client-certs",
            "crl",
            "allow-cn",
            "reload-interval",
            "keep-live-sessions",
            "workers",
            "config",
            "max-connections",
            "tls-min-version",
        ]
    ),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_", min_size=1, max_size=12),
)


class ConfigFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp()
        self.addCleanup(__import__("shutil").rmtree, self.directory)

    def check(self, text: bytes) -> None:
        path = os.path.join(self.directory, "mtlsd.toml")
        with open(path, "wb") as f:
            f.write(text)
        try:
            arguments = configArguments(path, Options())
        except ConfigurationError as e:
            self.assertIn(path, str(e))
        else:
            self.assertIsInstance(arguments, list)

    @FUZZ
    @given(st.lists(st.tuples(_KEYS, _TOML_VALUE), max_size=6))
    def test_structured(self, items: list[tuple[str, str]]) -> None:
        """
        A TOML file of any keys and values gives arguments or a
        L{ConfigurationError} naming the file.
        """
        self.check("\n".join(f"{k} = {v}" for k, v in items).encode())

    @FUZZ
    @given(st.one_of(st.binary(max_size=300), _mutated(b'port = 8443\nallow-cn = ["a", "b"]\n')))
    def test_bytes(self, data: bytes) -> None:
        """
        Any bytes at all give arguments or a L{ConfigurationError}.
        """
        self.check(data)


IP4 = ipaddress.ip_address("192.0.2.1")
_ADDRESSES = st.one_of(
    st.tuples(st.ip_addresses(v=4), st.ip_addresses(v=4)),
    st.tuples(st.ip_addresses(v=6), st.ip_addresses(v=6)),
)


def _address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> Any:
    kind = IPv4Address if ip.version == 4 else IPv6Address
    return kind("TCP", str(ip), port)


def _unmapped(source: Any, destination: Any) -> Any:
    """
    The source address as a header gives it: IPv4 when both addresses are
    IPv4-mapped IPv6 (an IPv4 client of a dual-stack socket).
    """
    if source.version == 6 and source.ipv4_mapped and destination.ipv4_mapped:
        return source.ipv4_mapped
    return source


class ProxyHeaderTests(SynchronousTestCase):
    @FUZZ
    @given(_ADDRESSES, st.integers(0, 65535), st.integers(0, 65535))
    def test_v1(self, addresses: Any, sourcePort: int, destinationPort: int) -> None:
        """
        A v1 header reads back with the addresses it was made of (an
        IPv4-mapped IPv6 address as IPv4).
        """
        source, destination = addresses
        header = v1Header(_address(source, sourcePort), _address(destination, destinationPort))
        result: Any = ProxyProtocolV1().unpack(header)
        source = _unmapped(source, destination)
        self.assertEqual((ipaddress.ip_address(result.source[0]), result.source[1]),
                         (source, sourcePort))  # fmt: skip

    @FUZZ
    @given(
        _ADDRESSES,
        st.integers(0, 65535),
        st.integers(0, 65535),
        st.one_of(st.none(), st.text(max_size=80)),
        st.one_of(
            st.none(),
            st.text(
                alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40
            ),
        ),
        st.one_of(st.none(), st.binary(max_size=70_000)),
    )
    @example((IP, IP), 1, 2, "a" * 70_000, None, None)
    @example((IP, IP), 1, 2, "alice", "TLS_AES_128_GCM_SHA256", b"\x30" * 65_600)
    def test_v2(
        self,
        addresses: Any,
        sourcePort: int,
        destinationPort: int,
        commonName: str | None,
        cipher: str | None,
        certificate: bytes | None,
    ) -> None:
        """
        A v2 header, whatever the CN, cipher and certificate, is read back
        with its addresses and TLS fields, or refused with a L{ValueError}
        when it cannot be encoded (a field beyond a TLV's 65,535 bytes).
        """
        source, destination = addresses
        try:
            header = v2Header(
                _address(source, sourcePort),
                _address(destination, destinationPort),
                tlsVersion="TLSv1.3",
                cipher=cipher,
                commonName=commonName,
                clientCertificate=certificate,
            )
        except ValueError:
            self.assertGreater(
                len((commonName or "").encode()) + len(certificate or b"") + 200, 65535
            )
            return
        result: Any = ProxyProtocolV2().unpack(header)
        self.assertEqual((ipaddress.ip_address(result.source[0]), result.source[1]),
                         (_unmapped(source, destination), sourcePort))  # fmt: skip
        ssl = result.tlv.ssl
        self.assertTrue(ssl.has_ssl and ssl.verified)
        self.assertEqual(ssl.cn, commonName)
        self.assertEqual(ssl.cipher, cipher)
