"""
Tests for L{mtlsd._httpidentity}: the identity headers of the HTTP
forwarding mode, and the options that choose them.
"""

from __future__ import annotations

import base64
import re
import urllib.parse

from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.trial.unittest import SynchronousTestCase

from mtlsd import ConfigurationError, identityFromCertificate
from mtlsd._httpidentity import (
    HTTPIdentity,
    forwardedHeaders,
    headerValue,
    parseIdentityHeader,
    xfcc,
)
from mtlsd._options import Options
from mtlsd.testing import CertificateAuthority


class HeadersTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ca = CertificateAuthority()
        self.alice = self.ca.issue(
            "alice",
            names=["alice.example", "a.example"],
            uris=["spiffe://example.org/alice"],
            emails=["alice@example.org"],
        )
        self.client = IPv4Address("TCP", "192.0.2.7", 4000)

    def test_clientCert(self) -> None:
        """
        C{Client-Cert} is the DER certificate as a structured-field byte
        sequence: standard base64 with padding between colons, one line.
        No C{Client-Cert-Chain} without intermediates; with them, one byte
        sequence each, in the order sent, comma-separated.
        """
        der = self.alice.certificate.public_bytes(Encoding.DER)
        headers = HTTPIdentity().headers(self.alice.certificate, (), self.client)
        self.assertEqual(headers[0], (b"Client-Cert", b":" + base64.b64encode(der) + b":"))
        self.assertNotIn(b"Client-Cert-Chain", dict(headers))
        root = self.ca.certificate.public_bytes(Encoding.DER)
        headers = HTTPIdentity().headers(
            self.alice.certificate, (self.ca.certificate, self.ca.certificate), self.client
        )
        sequence = b":" + base64.b64encode(root) + b":"
        self.assertEqual(dict(headers)[b"Client-Cert-Chain"], sequence + b", " + sequence)

    def test_forwarded(self) -> None:
        """
        IPv4, IPv6 (bracketed and quoted in C{Forwarded}), an IPv4 client
        of a dual-stack socket, and a UNIX client.
        """
        self.assertEqual(
            forwardedHeaders(self.client),
            [
                (b"X-Forwarded-For", b"192.0.2.7"),
                (b"X-Forwarded-Proto", b"https"),
                (b"Forwarded", b"for=192.0.2.7;proto=https"),
            ],
        )
        six = dict(forwardedHeaders(IPv6Address("TCP", "2001:db8::1", 4000)))
        self.assertEqual(six[b"X-Forwarded-For"], b"2001:db8::1")
        self.assertEqual(six[b"Forwarded"], b'for="[2001:db8::1]";proto=https')
        mapped = dict(forwardedHeaders(IPv6Address("TCP", "::ffff:192.0.2.9", 4000)))
        self.assertEqual(mapped[b"Forwarded"], b"for=192.0.2.9;proto=https")
        unix = dict(forwardedHeaders(UNIXAddress(None)))
        self.assertEqual(
            unix, {b"X-Forwarded-Proto": b"https", b"Forwarded": b"for=unknown;proto=https"}
        )

    def test_xfcc(self) -> None:
        """
        Envoy's format: the hash, the subject quoted, a URI and a DNS pair
        per name.
        """
        identity = identityFromCertificate(self.alice.certificate)
        self.assertEqual(
            xfcc(self.alice.certificate, identity),
            f'Hash={identity.fingerprint};Subject="CN=alice";URI=spiffe://example.org/alice;'
            "DNS=alice.example;DNS=a.example".encode(),
        )
        headers = dict(HTTPIdentity(xfcc=True).headers(self.alice.certificate, (), self.client))
        self.assertEqual(
            headers[b"X-Forwarded-Client-Cert"], xfcc(self.alice.certificate, identity)
        )

    def test_xfccCannotBeForged(self) -> None:
        """
        A subject holding quotes and semicolons cannot add a field: its
        quotes are escaped.  A certificate without URI gets C{URI=}.
        """
        mallory = self.ca.issue('x";URI=spiffe://example.org/admin;a="')
        identity = identityFromCertificate(mallory.certificate)
        value = xfcc(mallory.certificate, identity).decode()
        fields = re.findall(r'([A-Za-z]+)=("(?:[^"\\]|\\.)*"|[^;]*)(?:;|$)', value)
        self.assertEqual([name for name, _ in fields], ["Hash", "Subject", "URI"])
        subject = re.sub(r"\\(.)", r"\1", fields[1][1][1:-1])
        self.assertEqual(subject, identity.subject)
        self.assertEqual(fields[2][1], "")

    def test_identityFields(self) -> None:
        """
        Each C{--identity-header} field, several values joined by C{, }; a
        field with no value sets no header.
        """
        fields = (
            ("X-CN", "cn"),
            ("X-Subject", "subject"),
            ("X-Issuer", "issuer"),
            ("X-Serial", "serial"),
            ("X-Fingerprint", "fingerprint"),
            ("X-SPKI", "spki"),
            ("X-URI", "uri"),
            ("X-DNS", "dns"),
            ("X-Email", "email"),
            ("X-Not-After", "not-after"),
        )
        identity = identityFromCertificate(self.alice.certificate)
        headers = dict(HTTPIdentity(fields=fields).headers(self.alice.certificate, (), self.client))
        self.assertEqual(headers[b"X-CN"], b"alice")
        self.assertEqual(headers[b"X-Subject"], b"CN=alice")
        self.assertEqual(headers[b"X-Issuer"], b"CN=Test CA")
        self.assertEqual(headers[b"X-Serial"], f"{identity.serial:x}".encode())
        self.assertEqual(headers[b"X-Fingerprint"], identity.fingerprint.encode())
        self.assertEqual(headers[b"X-SPKI"], identity.spkiFingerprint.encode())
        self.assertEqual(headers[b"X-URI"], b"spiffe://example.org/alice")
        self.assertEqual(headers[b"X-DNS"], b"alice.example, a.example")
        self.assertEqual(headers[b"X-Email"], b"alice@example.org")
        self.assertEqual(
            headers[b"X-Not-After"], identity.notAfter.strftime("%Y-%m-%dT%H:%M:%SZ").encode()
        )
        bare = self.ca.issue("bare")
        headers = dict(HTTPIdentity(fields=fields).headers(bare.certificate, (), self.client))
        self.assertNotIn(b"X-URI", headers)

    def test_headerValue(self) -> None:
        """
        Control characters, non-ASCII letters and C{%} are percent-encoded
        (so a value cannot break the header), and decode back.
        """
        for text in ["plain text", "é\r\nX-Evil: 1", "100%", "\x00\x7f"]:
            value = headerValue(text)
            self.assertTrue(all(0x20 <= b <= 0x7E for b in value), value)
            self.assertEqual(urllib.parse.unquote(value.decode()), text)
        self.assertEqual(headerValue("CN=José"), b"CN=Jos%C3%A9")

    def test_parseIdentityHeader(self) -> None:
        """
        C{NAME=FIELD}; a malformed entry, an unknown field, and a header
        mtlsd sets itself or that frames requests are refused, with a
        sentence naming the option.
        """
        self.assertEqual(parseIdentityHeader("X-Client-CN=cn"), ("X-Client-CN", "cn"))
        for entry, words in [
            ("X-Client-CN", "give NAME=FIELD"),
            ("X Client=cn", "give NAME=FIELD"),
            ("X-Client=password", "one of cn, subject"),
            ("Client-Cert=cn", "sets or needs the Client-Cert header"),
            ("host=cn", "sets or needs the host header"),
            ("Content_Length=serial", "sets or needs"),
        ]:
            with self.assertRaises(ConfigurationError) as caught:
                parseIdentityHeader(entry)
            self.assertIn(words, str(caught.exception))
            self.assertIn(f"--identity-header {entry}:", str(caught.exception))

    def test_stripped(self) -> None:
        """
        Every header the mode may set is stripped, and the user's own.
        """
        self.assertEqual(
            HTTPIdentity(fields=(("X_Client_CN", "cn"),)).stripped(),
            {
                b"client-cert",
                b"client-cert-chain",
                b"x-forwarded-for",
                b"x-forwarded-proto",
                b"forwarded",
                b"x-forwarded-client-cert",
                b"x-client-cn",
            },
        )


class OptionsTests(SynchronousTestCase):
    """
    The daemon's options of the HTTP mode.
    """

    def parse(self, *args: str) -> Options:
        options = Options()
        options.parseOptions(list(args))
        return options

    def assertRefused(self, args: list[str], words: str) -> None:
        from twisted.python.usage import UsageError

        with self.assertRaises(UsageError) as caught:
            self.parse(*args)
        self.assertIn(words, str(caught.exception))

    def test_options(self) -> None:
        options = self.parse(
            "--forward-http",
            "tcp:127.0.0.1:8080",
            "--client-cert-header",
            "xfcc",
            "--identity-header",
            "X-Client-CN=cn",
            "--identity-header",
            "X-Client-URI=uri",
        )
        self.assertEqual(options["forward-http"], "tcp:127.0.0.1:8080")
        self.assertEqual(options["identity-header"], ["X-Client-CN=cn", "X-Client-URI=uri"])

    def test_refused(self) -> None:
        """
        The mode is exclusive with C{--forward} and C{--app}; its backend
        follows the loopback rule; its header options need it and are
        checked.
        """
        http = ["--forward-http", "tcp:127.0.0.1:8080"]
        self.assertRefused([*http, "--forward", "tcp:127.0.0.1:9"], "--forward and --forward-http")
        self.assertRefused([*http, "--app", "a.b"], "--app and --forward-http")
        self.assertRefused(["--forward-http", "tcp:192.0.2.1:80"], "not on loopback")
        self.assertRefused(["--forward-http", "127.0.0.1:80"], "did you mean tcp:127.0.0.1:80")
        self.assertRefused(["--identity-header", "X-A=cn"], "go with --forward-http")
        self.assertRefused([*http, "--identity-header", "X-A=nope"], "one of cn")
        self.assertRefused([*http, "--client-cert-header", "pem"], "rfc9440 or xfcc")
        self.parse("--forward-http", "tcp:192.0.2.1:80", "--unsafe-backend")

    def test_configFile(self) -> None:
        """
        The TOML keys are the options' names; C{identity-header} is a list.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(
                'forward-http = "unix:/run/app.sock"\nclient-cert-header = "xfcc"\n'
                'identity-header = ["X-Client-CN=cn", "X-Client-DNS=dns"]\n'
            )
        options = self.parse("--config", path)
        self.assertEqual(options["forward-http"], "unix:/run/app.sock")
        self.assertEqual(options["client-cert-header"], "xfcc")
        self.assertEqual(options["identity-header"], ["X-Client-CN=cn", "X-Client-DNS=dns"])


class BackendHostTests(SynchronousTestCase):
    def test_hostOf(self) -> None:
        """
        The C{Host} given to a request without one (HTTP/1.0) is the
        backend's: C{host:port}, an IPv6 address bracketed, C{localhost}
        for a UNIX socket.
        """
        from mtlsd._apps import _hostOf

        self.assertEqual(_hostOf("tcp:127.0.0.1:8080"), b"127.0.0.1:8080")
        self.assertEqual(_hostOf("tcp:host=localhost:port=99"), b"localhost:99")
        self.assertEqual(_hostOf(r"tcp6:\:\:1:80"), b"[::1]:80")
        self.assertEqual(_hostOf("unix:/run/app.sock"), b"localhost")
