# -*- test-case-name: mtlsd.test.test_client -*-
"""
The client side of mutual TLS: verify the server (chain and name), present
our own certificate, and explain every failure in one sentence.
"""

from __future__ import annotations

import os
import weakref

from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from OpenSSL import SSL, crypto
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IReactorTCP,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.ssl import (
    Certificate,
    optionsForClientTLS,
    trustRootFromCertificates,
)
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from ._context import VerifyFailure, VerifyRecorder
from ._errors import ConfigurationError
from ._files import loadCertificates, loadPrivateKey
from ._identity import identityFromCertificate
from ._reasons import opensslReasons, peerAlert

Path = str | os.PathLike[str]


class ServerRejectedClient(Exception):
    """
    The server refused this client's certificate (it sent a TLS alert).
    """


class ServerNotTrusted(Exception):
    """
    The server's certificate did not verify, or does not match its name.
    """


@frozen
class ClientTLSSettings:
    """
    What a mutual-TLS client needs.

    @ivar certificate: the client's certificate, or L{None} to present none.
    @ivar privateKey: its key.
    @ivar chain: intermediates sent after the certificate.
    @ivar trusted: CA certificates (or self-signed server certificates) the
        server's certificate must verify against.
    """

    certificate: x509.Certificate | None
    privateKey: PrivateKeyTypes | None
    chain: tuple[x509.Certificate, ...]
    trusted: tuple[x509.Certificate, ...]

    @classmethod
    def fromFiles(
        cls, certificatePath: Path | None, keyPath: Path | None, caPath: Path
    ) -> ClientTLSSettings:
        """
        Load a client certificate (optionally followed by its chain and key),
        its key, and the CA bundle that verifies the server.

        @raise ConfigurationError: for any unusable file.
        """
        trusted = tuple(loadCertificates(caPath, "CA"))
        if certificatePath is None:
            if keyPath is not None:
                raise ConfigurationError("--key was given without --cert.")
            return cls(None, None, (), trusted)
        certificate, *chain = loadCertificates(certificatePath, "client certificate")
        privateKey = loadPrivateKey(certificatePath if keyPath is None else keyPath, "client key")
        return cls(certificate, privateKey, tuple(chain), trusted)

    def connectionCreator(self, hostname: str) -> ClientContext:
        """
        @param hostname: the name (DNS name or IP address) the server's
            certificate must carry in its subjectAltName.
        @return: the client connection creator for these settings.
        """
        return ClientContext(self, hostname)

    def endpoint(
        self,
        reactor: IReactorTCP | IReactorTime,
        host: str,
        port: int,
        serverName: str | None = None,
    ) -> IStreamClientEndpoint:
        """
        A client endpoint that connects to C{host:port} with mutual TLS.

        @param serverName: the name to verify on the server's certificate
            (default: C{host}).
        """
        return wrapClientTLS(
            self.connectionCreator(serverName or host),
            HostnameEndpoint(reactor, host, port),
        )


def _checkName(certificate: x509.Certificate, hostname: str) -> None:
    if isIPAddress(hostname) or isIPv6Address(hostname):
        verify_certificate_ip_address(certificate, hostname)
    else:
        verify_certificate_hostname(certificate, hostname)


@implementer(IOpenSSLClientConnectionCreator)
class ClientContext:
    """
    Creates client connections that present the client certificate and
    verify the server's chain and name.

    Twisted's L{optionsForClientTLS} builds the connection (SNI, protocol
    versions, ciphers); its verify callback is then replaced by one that also
    checks the name, because Twisted's accepts a server certificate that has
    no subjectAltName at all (it logs the error and lets the handshake go
    on).  Here every error fails the handshake.
    """

    def __init__(self, settings: ClientTLSSettings, hostname: str) -> None:
        self.settings = settings
        self.hostname = hostname
        self._recorder = VerifyRecorder()
        extra: dict[str, object] = {}
        if settings.certificate is not None:
            extra = {
                "certificate": settings.certificate,
                "privateKey": settings.privateKey,
                "extraCertChain": list(settings.chain),
            }
        self._twisted = optionsForClientTLS(
            hostname,
            trustRoot=trustRootFromCertificates(
                [Certificate(crypto.X509.from_cryptography(c)) for c in settings.trusted]
            ),
            extraCertificateOptions=extra,
        )

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        """
        Create the OpenSSL connection for a new client connection.
        """
        connection = self._twisted.clientConnectionForTLS(tlsProtocol)
        protocol = weakref.ref(tlsProtocol)

        def verify(
            connection: SSL.Connection,
            cert: crypto.X509,
            errno: int,
            depth: int,
            ok: int,
        ) -> bool:
            if not self._recorder.record(connection, cert, errno, depth, ok):
                return False
            if depth != 0:
                return True
            certificate = cert.to_cryptography()
            try:
                _checkName(certificate, self.hostname)
            except Exception as e:
                tls = protocol()
                if tls is not None:
                    tls.failVerification(Failure(_nameError(e, certificate, self.hostname)))
                return False
            return True

        connection.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verify)
        return connection

    def verifyFailure(self, connection: SSL.Connection) -> VerifyFailure | None:
        """
        @return: why the server's chain failed verification on C{connection}.
        """
        return self._recorder.failure(connection)


def _nameError(error: Exception, certificate: x509.Certificate, hostname: str) -> ServerNotTrusted:
    if isinstance(error, CertificateError) and "subjectAltName" in str(error):
        return ServerNotTrusted(
            "the server certificate has no subjectAltName, so it cannot be"
            f" verified as {hostname} (a name in the CN alone does not count);"
            f" regenerate it with -addext subjectAltName=DNS:{hostname}"
        )
    if isinstance(error, VerificationError):
        identity = identityFromCertificate(certificate)
        names = ", ".join([*identity.dnsNames, *identity.ipAddresses])
        return ServerNotTrusted(
            f"the server certificate is not valid for {hostname} (it is for: {names});"
            " use --servername with one of its names, or reissue it"
        )
    return ServerNotTrusted(f"the server certificate cannot be checked: {error}")


def describeClientFailure(
    reason: Failure, context: ClientContext, connection: SSL.Connection | None
) -> Exception | None:
    """
    Turn the reason a client connection was lost into a clear exception, or
    L{None} for a clean close.

    With TLS 1.3 a client's handshake completes before the server has checked
    its certificate; a rejection arrives afterwards as an alert.  This is
    where such an alert becomes L{ServerRejectedClient}.
    """
    error = reason.value
    if isinstance(error, ConnectionDone):
        return None
    if isinstance(error, ServerNotTrusted):
        return error
    failure = context.verifyFailure(connection) if connection is not None else None
    if failure is not None:
        return ServerNotTrusted(
            f"the server certificate failed verification: {failure.reason}"
            f" (depth {failure.depth}, {failure.subject})"
        )
    alert = peerAlert(reason)
    if alert is not None:
        if "certificate" in alert or "unknown ca" in alert or "access denied" in alert:
            return ServerRejectedClient(f"the server rejected this client's certificate ({alert})")
        return ServerRejectedClient(f"the server ended the handshake ({alert})")
    texts = opensslReasons(error)
    if texts:
        return Exception("TLS error: " + "; ".join(texts))
    return Exception(str(error) or type(error).__name__)
