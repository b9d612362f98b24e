"""
Embedding mtlsd: a Twisted service that greets each client by the name in
its certificate, and a client that presents its own certificate.

Run it next to a development PKI (made with ``mtlsd pki init``):

    python greeter.py            # prints: hello, client
"""

import sys

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import react

from mtlsd import (
    ClientTLSSettings,
    MtlsServerEndpoint,
    ServerContext,
    ServerTLSSettings,
    peerIdentity,
)


class Greeter(Protocol):
    """
    Runs only for clients whose certificate verified: mtlsd starts it after
    the handshake, so the peer's identity is already known.
    """

    def connectionMade(self):
        peer = peerIdentity(self.transport)
        self.transport.write(f"hello, {peer.commonName}\n".encode())
        self.transport.loseConnection()


class Collector(Protocol):
    """
    Collects what the server says until it closes.
    """

    def __init__(self):
        self.received = b""
        self.done = Deferred()

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.done.callback(self.received)


def listen(reactor, pki="mtlsd-pki"):
    """
    Serve Greeter with mutual TLS on a free port of 127.0.0.1.
    """
    settings = ServerTLSSettings.fromFiles(
        f"{pki}/server.crt", f"{pki}/server.key", [f"{pki}/ca.crt"]
    )
    endpoint = MtlsServerEndpoint(
        ServerContext(settings), TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    )
    return endpoint.listen(Factory.forProtocol(Greeter))


async def greet(reactor, port, pki="mtlsd-pki"):
    """
    Connect with the client certificate and return the greeting.
    """
    settings = ClientTLSSettings.fromFiles(
        f"{pki}/client.crt", f"{pki}/client.key", f"{pki}/ca.crt"
    )
    collector = Collector()
    endpoint = settings.endpoint(reactor, "localhost", port)
    await endpoint.connect(Factory.forProtocol(lambda: collector))
    return (await collector.done).decode()


async def main(reactor, pki="mtlsd-pki"):
    port = await listen(reactor, pki)
    greeting = await greet(reactor, port.getHost().port, pki)
    sys.stdout.write(greeting)
    await port.stopListening()


if __name__ == "__main__":
    react(lambda reactor: Deferred.fromCoroutine(main(reactor, *sys.argv[1:])))
