# -*- test-case-name: tests.test_services -*-
"""
Services sharing one address, chosen by the name the client asks for (SNI):
OpenSSL's servername callback switches the connection to the chosen
service's context (its certificate, its client trust and its verify
callback), and the gate then serves the connection as that service's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from weakref import WeakKeyDictionary

from OpenSSL import SSL
from OpenSSL._util import ffi, lib
from twisted.logger import Logger

from ._admission import Admission
from ._context import ServerContext
from ._services import ServiceOptions

log = Logger(namespace="mtlsd")


class ServerNameRouter:
    """
    Chooses the service of each connection to a shared address by its
    server name: a service whose C{server-names} match, else the default
    service, else none (the handshake fails with C{unrecognized_name}).

    Session tickets are off on these connections: OpenSSL encrypts them with
    the keys of the context the connection began with, whatever service it
    was switched to, so they would outlive the chosen service's reloads.
    """

    def __init__(self, services: Sequence[tuple[ServiceOptions, ServerContext, Any]]) -> None:
        """
        @param services: each service of the address with its context and
            its gate factory (L{mtlsd._server.gateFactory}); the first
            one's is L{None}: it listens, with a gate factory of each
            listener's.
        """
        self._services = list(services)
        self._default = next((each for each in services if each[0].default), None)
        self._routes: WeakKeyDictionary[SSL.Connection, tuple[Any, Admission]] = WeakKeyDictionary()
        self._refusals: WeakKeyDictionary[SSL.Connection, str] = WeakKeyDictionary()
        # Not pyOpenSSL's set_tlsext_servername_callback: its callback cannot
        # refuse a name without printing a traceback.
        self.callback = ffi.callback("int (*)(SSL *, int *, void *)", self._choose)

    def _serviceFor(
        self, serverName: str | None
    ) -> tuple[ServiceOptions, ServerContext, Any] | None:
        if serverName:
            for each in self._services:
                if each[0].serves(serverName):
                    return each
        return self._default

    def _choose(self, ssl: Any, alert: Any, arg: Any) -> int:
        try:
            connection = SSL.Connection._reverse_mapping[ssl]
            raw = connection.get_servername()
            serverName = raw.decode("ascii", "replace") if raw else None
            found = self._serviceFor(serverName)
            if found is None:
                shown = "".join(c if c.isprintable() else "?" for c in serverName or "")[:255]
                self._refusals[connection] = shown or "(none)"
                return int(lib.SSL_TLSEXT_ERR_ALERT_FATAL)  # unrecognized_name
            _, context, gate = found
            chosen = context.sslContext
            if connection.get_context() is not chosen:
                connection.set_context(chosen)
                # OpenSSL keeps the verify callback of the context the
                # connection began with: the chosen service's decides.
                lib.SSL_set_verify(ssl, chosen.get_verify_mode(), chosen._verify_callback)
            connection.set_options(SSL.OP_NO_TICKET)
            self._routes[connection] = (gate, context.admission)
            return int(lib.SSL_TLSEXT_ERR_OK)
        except Exception:
            log.failure("choosing the service by server name failed")
            return int(lib.SSL_TLSEXT_ERR_ALERT_FATAL)

    def route(self, connection: SSL.Connection) -> tuple[Any, Admission] | None:
        """
        @return: the gate factory of the service chosen for C{connection}
            (L{None}: the listening one's), and the admission in force when
            it was chosen; L{None} before.
        """
        return self._routes.get(connection)

    def refusal(self, connection: SSL.Connection) -> str | None:
        """
        @return: the server name no service has (C{(none)}: the client
            sent none), if C{connection} was refused for it.
        """
        return self._refusals.get(connection)
