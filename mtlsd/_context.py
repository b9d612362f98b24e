# -*- test-case-name: mtlsd.test.test_server -*-
"""
The one place that turns server settings into an OpenSSL context, through
Twisted's L{CertificateOptions}, and creates each accepted socket's OpenSSL
connection; new settings are taken while running.
"""

from __future__ import annotations

import datetime
import socket
from collections.abc import Sequence
from typing import Any, cast

from OpenSSL import SSL
from OpenSSL._util import lib as _lib  # the mode bits pyOpenSSL does not name
from OpenSSL.crypto import FILETYPE_ASN1, X509, PKey, X509StoreFlags, dump_certificate
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.ssl import (
    AcceptableCiphers,
    Certificate,
    CertificateOptions,
    trustRootFromCertificates,
)
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

from ._admission import Admission, AdmissionCheck, Rechecking
from ._sessions import SessionRegistry
from ._settings import ServerTLSSettings
from ._verify import (
    TLS_VERSIONS,
    VerifyFailure,
    VerifyRecorder,
    checkServerSigns,
    setCryptoPolicy,
    setVerify,
)

_UNABLE_TO_GET_CRL = SSL.X509VerificationCodes.ERR_UNABLE_TO_GET_CRL

# TLS 1.2 cipher suites: Mozilla's "intermediate" list (ssl-config.mozilla.org,
# version 5.7): forward secrecy and AEAD only.  Twisted's default also admits
# CBC and CCM suites.  TLS 1.3 suites are OpenSSL's (all three are in it).
_INTERMEDIATE_CIPHERS = AcceptableCiphers.fromOpenSSLCipherString(
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"
)

TICKET_LIMIT = 32 * 1024  # client certificates larger get no session ticket


def _selectALPN(connection: SSL.Connection, offered: list[bytes]) -> Any:
    """
    Choose the application protocol (ALPN) among those the client offers.

    Twisted 26's own callback answers an empty protocol when nothing
    overlaps, which OpenSSL turns into an "internal error" alert: every
    client offering ALPN (curl, browsers) failed against an application
    that negotiates nothing.  Declining is the right answer.
    """
    # The connection's app data is its TLS transport (mtlsd's, on a socket or
    # on Twisted's memory BIOs), which knows the application.
    transport = connection.get_app_data()
    wanted: list[bytes] = getattr(transport, "applicationProtocols", list)()
    for protocol in wanted:
        if protocol in offered:
            return bytes(protocol)
    return SSL.NO_OVERLAPPING_PROTOCOLS


def _storeFlags(settings: ServerTLSSettings) -> int:
    flags = X509StoreFlags.PARTIAL_CHAIN
    if settings.checksRevocation:
        flags |= X509StoreFlags.CRL_CHECK
        if settings.crlCheckChain:
            flags |= X509StoreFlags.CRL_CHECK_ALL
    return flags


@implementer(IOpenSSLServerConnectionCreator)
class ServerContext:
    """
    The server side of mutual TLS: creates the OpenSSL connection for each
    accepted socket, remembers why a client's certificate was rejected, and
    takes new settings while running (L{update}).  Who gets in is decided by
    the L{Admission} of the settings in force (L{admission}); its live
    sessions are in L{sessions}.

    Each context is built by L{CertificateOptions} with C{trustRoot} made from
    the trusted certificates (so Twisted requires and verifies a client
    certificate) and session tickets on (TLS 1.3 resumption: each context
    has ticket keys of its own, so a ticket never outlives the settings that
    verified its client), then completed before any connection uses it:
     - partial-chain verification, so a CA-issued leaf listed alone is
       trusted as a pin;
     - the CRLs and CRL checking;
     - the trusted subjects sent as acceptable client CA names;
     - the verify depth;
     - the key-exchange groups (Mozilla's by default) and, if chosen, the
       signature algorithms;
     - a verify callback that records OpenSSL's verdict and asks the
       admission about each certificate OpenSSL accepted.  It changes one
       verdict of OpenSSL's only: when the issuer has no CRL here and CRLs
       are not required, "unable to get certificate CRL" is not an error.
    """

    def __init__(self, settings: ServerTLSSettings, checks: Sequence[AdmissionCheck] = ()) -> None:
        """
        @param checks: further checks of each client after its handshake
            (see L{Admission}).
        """
        self._recorder = VerifyRecorder()
        self._checks = tuple(checks)
        self._servernameCallback: Any = None
        self.sessions = SessionRegistry()
        self.update(settings)

    def update(self, settings: ServerTLSSettings) -> None:
        """
        Use C{settings} for new connections; established ones keep theirs
        (see L{revalidate}).

        @raise OpenSSL.SSL.Error: if OpenSSL refuses the settings; the
            current ones then stay in force.
        """
        minimum = settings.minimumTLSVersion
        # CertificateOptions takes cryptography objects (its hints say
        # pyOpenSSL's, whose use is deprecated).
        options = CertificateOptions(
            privateKey=cast(Any, settings.privateKey),
            certificate=cast(Any, settings.certificate),
            extraCertChain=cast(Any, list(settings.chain)),
            enableSessionTickets=True,
            acceptableCiphers=_INTERMEDIATE_CIPHERS,
            trustRoot=trustRootFromCertificates(
                [Certificate(X509.from_cryptography(c)) for c in settings.anchors]
            ),
            **({"raiseMinimumTo": TLS_VERSIONS[minimum]} if minimum != "1.2" else {}),
        )
        context = options.getContext()
        for certificate, key, chain in settings.moreCertificates:
            # OpenSSL keeps one certificate per key type and presents the one
            # the client's signature algorithms allow; intermediates join the
            # context's extra chain.
            context.use_certificate(X509.from_cryptography(certificate))
            context.use_privatekey(PKey.from_cryptography_key(cast(Any, key)))
            context.check_privatekey()
            for intermediate in chain:
                context.add_extra_chain_cert(X509.from_cryptography(intermediate))
        setCryptoPolicy(context, settings.groups, settings.signatureAlgorithms)
        # On a socket (mtlsd._sockettls), a write OpenSSL could not finish is
        # retried from a buffer that may have moved; idle connections give
        # back their record buffers (about 34 KiB each).
        context.set_mode(_lib.SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | _lib.SSL_MODE_RELEASE_BUFFERS)
        # Resumption is by ticket alone (the ticket carries the session): no
        # server-side cache holding a session, client certificate included,
        # for every client of the last hours.
        context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        store = context.get_cert_store()
        assert store is not None
        crlIssuers = {crl.issuer for crl in settings.usableCRLs}
        for crl in settings.usableCRLs:
            store.add_crl(crl)
        store.set_flags(_storeFlags(settings))
        context.set_verify_depth(settings.verifyDepth)
        for certificate in settings.anchors:
            context.add_client_ca(certificate)
        admission = Admission(settings, self._checks)

        def verify(
            connection: SSL.Connection, certificate: X509, errno: int, depth: int, ok: int
        ) -> bool | int:
            if depth == 0 and len(dump_certificate(FILETYPE_ASN1, certificate)) > TICKET_LIMIT:
                # A ticket holds the client certificate and has at most 64
                # KiB: OpenSSL would fail the handshake ("internal error").
                connection.set_options(SSL.OP_NO_TICKET)
            if not ok:
                if (
                    errno == _UNABLE_TO_GET_CRL
                    and not settings.crlRequired
                    and certificate.to_cryptography().issuer not in crlIssuers
                ):
                    return True  # no CRL was given for this issuer: not checked
                return self._recorder.record(connection, certificate, errno, depth, ok)
            refused = admission.verifyStep(connection, certificate, depth, self.admission)
            return True if refused is None else self._recorder.refuse(connection, refused)

        setVerify(context, context.get_verify_mode(), verify)
        context.set_alpn_select_callback(_selectALPN)
        if settings.signatureAlgorithms is not None:  # it makes a connection
            checkServerSigns(context, minimum, settings.signatureAlgorithms)
        if self._servernameCallback is not None:  # after the probe, which sends no name
            _lib.SSL_CTX_set_tlsext_servername_callback(context._context, self._servernameCallback)
        self.settings, self.admission, self._options = settings, admission, options

    @property
    def sslContext(self) -> SSL.Context:
        """
        The OpenSSL context of the settings in force.
        """
        return self._options.getContext()

    def chooseServiceWith(self, callback: Any) -> None:
        """
        Have OpenSSL call C{callback} (a C{SSL_CTX} servername callback, see
        L{mtlsd._sni}) with each client's server name, now and after every
        reload.
        """
        self._servernameCallback = callback
        _lib.SSL_CTX_set_tlsext_servername_callback(self.sslContext._context, callback)

    def revalidate(self) -> int:
        """
        Cut every established connection whose peer the current settings
        no longer admit.

        @return: how many were cut.
        """
        return self.sessions.cutWhere(lambda session: self.admission.decide(*session.peer()))

    def cutExpired(self, now: datetime.datetime | None = None) -> int:
        """
        Cut the established connections whose client certificate has
        expired since they began.

        @return: how many were cut.
        """
        now = now or datetime.datetime.now(datetime.timezone.utc)
        return self.sessions.cutWhere(
            lambda session: self.admission.expired(session.peerNotAfter, now)
        )

    def recheck(self) -> None:
        """
        Ask the further checks again about the live sessions if one of them
        has verdicts that expired (see L{Rechecking}): a certificate found
        revoked since has its sessions cut.
        """
        due = [check.recheckDue() for check in self._checks if isinstance(check, Rechecking)]
        if any(due) and self.sessions:
            self.admission.recheck(self.sessions)

    def verifyFailure(self, connection: SSL.Connection) -> VerifyFailure | None:
        """
        @return: why the client certificate on C{connection} was refused in
            the handshake (by OpenSSL or by the admission), or L{None}.
        """
        return self._recorder.failure(connection)

    def serverConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        """
        Create the OpenSSL connection for a newly accepted socket, on
        Twisted's memory BIOs.
        """
        return self._options.serverConnectionForTLS(tlsProtocol)

    def socketConnection(self, sock: socket.socket, transport: object) -> SSL.Connection:
        """
        Create the OpenSSL connection of a newly accepted socket that
        OpenSSL reads and writes itself (see L{mtlsd._sockettls}).

        @param transport: the socket's TLS transport (the connection's app
            data, as Twisted makes it the TLS protocol).
        """
        connection = SSL.Connection(self._options.getContext(), sock)
        connection.set_app_data(transport)
        return connection
