"""
Applications for C{twistd mtlsd --app} in the black-box tests; the daemon
imports them by dotted name (C{tests.apps.whoami}).
"""

from __future__ import annotations

from twisted.internet.protocol import Factory, Protocol

from mtlsd import peerIdentity


class WhoAmI(Protocol):
    """
    Tells the client the CN of its certificate, then closes.
    """

    def connectionMade(self) -> None:
        assert self.transport is not None
        name = peerIdentity(self.transport).commonName
        self.transport.write(f"{name}\n".encode())
        self.transport.loseConnection()


def whoami() -> Factory:
    """
    @return: a factory of L{WhoAmI}, for C{--app tests.apps.whoami}.
    """
    factory = Factory.forProtocol(WhoAmI)
    factory.noisy = False
    return factory
