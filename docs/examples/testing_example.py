"""
Testing a protocol embedded in mtlsd without sockets or certificate files:
mtlsd.testing makes a CA and certificates, and connects a client to mtlsd's
server in memory, through real TLS handshakes.

Run it (it needs no PKI):

    python testing_example.py              # or: python -m twisted.trial testing_example
"""

import unittest

from twisted.internet.protocol import Factory, Protocol
from twisted.trial import unittest as trial

from mtlsd import ServerRejectedClient, peerIdentity
from mtlsd.testing import (
    CertificateAuthority,
    MemoryConnection,
    clientContext,
    selfSigned,
    serverContext,
)


class Greeter(Protocol):
    """
    The protocol under test (as in greeter.py): greets each client by the
    name in its certificate.
    """

    def connectionMade(self):
        peer = peerIdentity(self.transport)
        self.transport.write(f"hello, {peer.commonName}\n".encode())
        self.transport.loseConnection()


class GreeterTests(trial.SynchronousTestCase):
    def setUp(self):
        self.ca = CertificateAuthority()
        self.server = serverContext(self.ca.server(), [self.ca.certificate])

    def connect(self, client):
        return MemoryConnection(
            self.server,
            clientContext(client, [self.ca.certificate]),
            Factory.forProtocol(Greeter),
        )

    def test_greetsByName(self):
        """
        A client with a certificate from the trusted CA is greeted by its CN.
        """
        c = self.connect(self.ca.issue("alice"))
        self.assertEqual(c.client.received, b"hello, alice\n")

    def test_strangerRefused(self):
        """
        A client the server does not trust never reaches Greeter.
        """
        c = self.connect(selfSigned("mallory"))
        self.assertIsNone(c.app)
        self.assertIsInstance(c.client.lost.value, ServerRejectedClient)


if __name__ == "__main__":
    unittest.main()
