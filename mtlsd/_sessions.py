# -*- test-case-name: mtlsd.test.test_reload -*-
"""
The live sessions of a server: the connections admitted and not yet ended,
the intermediates their clients sent, cuts when the trust changes, and the
wait for them to drain at shutdown.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator
from typing import Protocol

from cryptography import x509
from twisted.internet.defer import Deferred, succeed

from ._verify import VerifyFailure

KNOWN_CHAINS = 4096


class LiveSession(Protocol):
    """
    An established connection, as the registry sees it when trust changes.
    """

    peerNotAfter: datetime.datetime
    """
    When its client certificate expires.
    """

    def peer(self) -> tuple[x509.Certificate, tuple[x509.Certificate, ...]]:
        """
        Its client certificate and the intermediates sent with it.
        """

    def cut(self, reason: str) -> None:
        """
        Close the connection because its peer is no longer admitted.
        """


class SessionRegistry:
    """
    The live sessions of one server, shared by all its listeners.
    """

    def __init__(self) -> None:
        self._sessions: set[LiveSession] = set()
        self._drainWaiters: list[Deferred[None]] = []
        self._chains: dict[x509.Certificate, tuple[x509.Certificate, ...]] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[LiveSession]:
        return iter(list(self._sessions))

    def __contains__(self, session: object) -> bool:
        return session in self._sessions

    def add(self, session: LiveSession) -> None:
        """
        A connection was admitted.
        """
        self._sessions.add(session)

    def ended(self, session: LiveSession) -> None:
        """
        A connection ended (admitted or not).
        """
        self._sessions.discard(session)
        if not self._sessions:
            waiters, self._drainWaiters = self._drainWaiters, []
            for waiter in waiters:
                waiter.callback(None)

    def whenDrained(self) -> Deferred[None]:
        """
        @return: fires when no session is left.
        """
        if not self._sessions:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._drainWaiters.append(waiter)
        return waiter

    def cutWhere(self, verdict: Callable[[LiveSession], VerifyFailure | None]) -> int:
        """
        Cut every session C{verdict} refuses, with its reason.

        @return: how many were cut.
        """
        cut = 0
        for session in list(self._sessions):
            if (refused := verdict(session)) is not None:
                session.cut(refused.reason)
                cut += 1
        return cut

    def rememberChain(
        self, certificate: x509.Certificate, chain: tuple[x509.Certificate, ...]
    ) -> None:
        """
        Note the intermediates a client sent with C{certificate} in a full
        handshake, for L{chainOf}.  The L{KNOWN_CHAINS} most recently used
        are kept.
        """
        if chain:
            self._chains.pop(certificate, None)
            self._chains[certificate] = chain
            if len(self._chains) > KNOWN_CHAINS:
                del self._chains[next(iter(self._chains))]

    def chainOf(self, certificate: x509.Certificate) -> tuple[x509.Certificate, ...]:
        """
        @return: the intermediates last sent with C{certificate}, for a
            resumed session, whose client sends no certificates (the ticket
            holds the leaf only); without them a later re-check judges the
            leaf alone, which fails closed.
        """
        chain = self._chains.pop(certificate, ())
        if chain:
            self._chains[certificate] = chain  # the most recently used: evicted last
        return chain
