"""
Tests for mutual TLS with twisted.web, over real loopback sockets: the
identity of a request's client over HTTP/1.1 and HTTP/2 (curl, and
twisted.web's C{Agent} with L{ClientTLSSettings.policyForHTTPS}, through
treq), and L{mtlsd.web.requireIdentity}.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import Agent, ResponseNeverReceived
from twisted.web.resource import Resource
from twisted.web.server import Site

from mtlsd import AllowPolicy, ClientTLSSettings, MtlsServerEndpoint, peerIdentity
from mtlsd._http import HTTPForwardFactory
from mtlsd._httpidentity import HTTPIdentity
from mtlsd.test._devextra import missing
from mtlsd.testing import CertificateAuthority, Credentials, serverContext
from mtlsd.web import FORBIDDEN_BODY, requireIdentity

try:
    import treq
except ImportError as e:  # the dev extra's
    skip = missing(e)


class Who(Resource):
    """
    Answers the client's CN and the HTTP version it spoke.
    """

    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        identity = peerIdentity(request)
        return b"%s %s" % ((identity.commonName or "").encode(), request.clientproto)


def site() -> Site:
    root = Resource()
    root.putChild(b"who", Who())
    admin = Resource()
    admin.putChild(b"who", Who())
    root.putChild(b"admin", requireIdentity(admin, AllowPolicy(commonNames=["admin"])))
    root.putChild(b"leaf", requireIdentity(Who(), AllowPolicy(commonNames=["admin"])))
    return Site(root)


class WebTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.ca = CertificateAuthority()
        self.alice = self.ca.issue("alice")
        self.admin = self.ca.issue("admin")

    @inlineCallbacks
    def serve(self, factory: Any) -> Any:
        endpoint = MtlsServerEndpoint(
            serverContext(self.ca.server(), [self.ca.certificate]),
            TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
        )
        port = yield endpoint.listen(factory)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def settings(self, client: Credentials) -> ClientTLSSettings:
        return ClientTLSSettings(client.certificate, client.key, (), (self.ca.certificate,))

    def agent(self, client: Credentials, serverName: str | None = None) -> Agent:
        return Agent(reactor, contextFactory=self.settings(client).policyForHTTPS(serverName))

    @inlineCallbacks
    def get(self, agent: Agent, url: str) -> Any:
        response = yield treq.get(url, agent=agent)
        body = yield treq.content(response)
        return response.code, body

    @inlineCallbacks
    def curl(self, client: Credentials, url: str, *args: str) -> Any:
        curl = shutil.which("curl")
        if curl is None:
            raise SkipTest("needs curl")
        directory = self.mktemp()
        os.makedirs(directory)
        files = {"cert.pem": client.certificatePEM(), "key.pem": client.keyPEM()}
        files["ca.pem"] = Credentials(self.ca.certificate, self.ca.key).certificatePEM()
        for name, content in files.items():
            with open(os.path.join(directory, name), "wb") as f:
                f.write(content)
        out, err, code = yield getProcessOutputAndValue(
            curl,
            [
                "-sS",
                "--cacert",
                os.path.join(directory, "ca.pem"),
                "--cert",
                os.path.join(directory, "cert.pem"),
                "--key",
                os.path.join(directory, "key.pem"),
                "-w",
                " %{http_code} %{http_version}",
                *args,
                url,
            ],
            env=dict(os.environ),
        )
        self.assertEqual(code, 0, err)
        return out

    @inlineCallbacks
    def test_identityOverHTTP1AndHTTP2(self) -> Any:
        """
        One site, over mtlsd: the resource reads the client's identity with
        C{peerIdentity(request)} over HTTP/1.1 and over HTTP/2 (ALPN h2:
        twisted.web's site offers it).
        """
        port = yield self.serve(site())
        url = f"https://localhost:{port}/who"
        one = yield self.curl(self.alice, url, "--http1.1")
        two = yield self.curl(self.alice, url, "--http2")
        self.assertEqual(one, b"alice HTTP/1.1 200 1.1")
        self.assertEqual(two, b"alice HTTP/2 200 2")

    @inlineCallbacks
    def test_agentPresentsCertificate(self) -> Any:
        """
        twisted.web's C{Agent} with C{policyForHTTPS()}, through treq:
        the site sees the client certificate; the agent verified the
        server's name.
        """
        port = yield self.serve(site())
        code, body = yield self.get(self.agent(self.alice), f"https://localhost:{port}/who")
        self.assertEqual((code, body), (200, b"alice HTTP/1.1"))
        code, body = yield self.get(self.agent(self.alice), f"https://127.0.0.1:{port}/who")
        self.assertEqual((code, body), (200, b"alice HTTP/1.1"))

    @inlineCallbacks
    def test_agentVerifiesServer(self) -> Any:
        """
        A server whose name does not match, or whose CA the client does not
        trust, fails the request.
        """
        port = yield self.serve(site())
        agent = self.agent(self.alice, serverName="other.example")
        yield self.assertFailure(
            treq.get(f"https://localhost:{port}/who", agent=agent), ResponseNeverReceived
        )
        stranger = CertificateAuthority("Stranger")
        settings = ClientTLSSettings(
            self.alice.certificate, self.alice.key, (), (stranger.certificate,)
        )
        agent = Agent(reactor, contextFactory=settings.policyForHTTPS())
        yield self.assertFailure(
            treq.get(f"https://localhost:{port}/who", agent=agent), ResponseNeverReceived
        )

    @inlineCallbacks
    def test_requireIdentity(self) -> Any:
        """
        The guarded part of the site answers 403 with a short body to a
        verified client the policy does not admit, and serves one it
        admits, on a leaf resource and below a branch; the rest of the site
        serves both.
        """
        port = yield self.serve(site())
        base = f"https://localhost:{port}"
        for path in ("/admin/who", "/leaf"):
            code, body = yield self.get(self.agent(self.alice), base + path)
            self.assertEqual((code, body), (403, FORBIDDEN_BODY))
            code, body = yield self.get(self.agent(self.admin), base + path)
            self.assertEqual((code, body), (200, b"admin HTTP/1.1"))
        code, body = yield self.get(self.agent(self.alice), base + "/who")
        self.assertEqual(code, 200)

    @inlineCallbacks
    def test_agentAgainstHTTPMode(self) -> Any:
        """
        The agent against mtlsd's own HTTP mode: the backend (a twisted.web
        site, plain) gets the request with the client's certificate.
        """

        class Headers(Resource):
            isLeaf = True

            def render_GET(self, request: Any) -> bytes:
                return request.getHeader(b"client-cert") or b"none"

        backend = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Site(Headers())
        )
        self.addCleanup(backend.stopListening)
        factory = HTTPForwardFactory(
            TCP4ClientEndpoint(reactor, "127.0.0.1", backend.getHost().port), HTTPIdentity()
        )
        port = yield self.serve(factory)
        code, body = yield self.get(self.agent(self.alice), f"https://localhost:{port}/")
        from cryptography.hazmat.primitives.serialization import Encoding

        from mtlsd._httpidentity import byteSequence

        self.assertEqual(code, 200)
        self.assertEqual(body, byteSequence(self.alice.certificate.public_bytes(Encoding.DER)))
