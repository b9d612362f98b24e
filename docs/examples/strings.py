"""
Mutual TLS as a one-string change: a server and a client described by
C{mtls:} endpoint strings, as any Twisted program (or C{twistd web
--listen}) takes them.

Run it next to a development PKI (made with ``mtlsd pki init``):

    python strings.py            # prints: hello, client
"""

import sys

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import react

from mtlsd import peerIdentity

PKI = "mtlsd-pki"
SERVER = f"mtls:0:interface=127.0.0.1:certKey={PKI}/server.crt:privateKey={PKI}/server.key:clientCerts={PKI}/ca.crt"
CLIENT = "mtls:host=127.0.0.1:port={port}:servername=localhost:certKey={pki}/client.crt:privateKey={pki}/client.key:caCerts={pki}/ca.crt"


class Greeter(Protocol):
    def connectionMade(self):
        self.transport.write(f"hello, {peerIdentity(self.transport).commonName}\n".encode())
        self.transport.loseConnection()


class Collector(Protocol):
    def __init__(self):
        self.received = b""
        self.done = Deferred()

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.done.callback(self.received)


async def main(reactor):
    server = serverFromString(reactor, SERVER)
    port = await server.listen(Factory.forProtocol(Greeter))
    client = clientFromString(reactor, CLIENT.format(port=port.getHost().port, pki=PKI))
    collector = await client.connect(Factory.forProtocol(Collector))
    sys.stdout.write((await collector.done).decode())
    await port.stopListening()


if __name__ == "__main__":
    react(lambda reactor: Deferred.fromCoroutine(main(reactor)))
