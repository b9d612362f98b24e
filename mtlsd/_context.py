# -*- test-case-name: mtlsd.test.test_server -*-
"""
Server TLS settings and the one place that turns them into an OpenSSL
context, through Twisted's L{CertificateOptions}.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from typing import Any, cast
from weakref import WeakKeyDictionary

from attrs import field, frozen
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from OpenSSL import SSL
from OpenSSL.crypto import X509, X509StoreFlags
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    trustRootFromCertificates,
)
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

from ._errors import ConfigurationError
from ._files import checkKeyMatches, loadCertificates, loadPrivateKey
from ._reasons import verifyErrorText

DEFAULT_VERIFY_DEPTH = 4


def _positive(instance: object, attribute: object, value: int) -> None:
    if value < 1:
        raise ValueError(f"verify depth must be at least 1, not {value}")


@frozen
class ServerTLSSettings:
    """
    What a mutual-TLS server needs: its certificate, chain and key, and the
    client certificates and CAs it trusts.

    @ivar certificate: the server's certificate.
    @ivar privateKey: its private key.
    @ivar chain: intermediate certificates sent after it.
    @ivar trusted: trusted client certificates and CA certificates.  A client
        is accepted when its certificate is one of them or chains to one.
    @ivar verifyDepth: the longest client chain accepted (OpenSSL's verify
        depth: a leaf, up to this many intermediates, and the root).
    """

    certificate: x509.Certificate
    privateKey: PrivateKeyTypes
    chain: tuple[x509.Certificate, ...] = ()
    trusted: tuple[x509.Certificate, ...] = field(default=())
    verifyDepth: int = field(default=DEFAULT_VERIFY_DEPTH, validator=_positive)

    @classmethod
    def fromFiles(
        cls,
        certificatePath: str | os.PathLike[str],
        keyPath: str | os.PathLike[str] | None,
        clientCertificatePaths: Sequence[str | os.PathLike[str]],
        verifyDepth: int = DEFAULT_VERIFY_DEPTH,
    ) -> ServerTLSSettings:
        """
        Load settings from PEM files.

        @param certificatePath: the server certificate, optionally followed
            by its chain and/or its key.
        @param keyPath: the server's key, or L{None} for the key inside
            C{certificatePath}.
        @param clientCertificatePaths: bundles of trusted client certificates
            and/or CA certificates.
        @raise ConfigurationError: for any unusable file, or a key that does
            not match the certificate.
        """
        certificate, *chain = loadCertificates(certificatePath, "server certificate")
        keyPath = certificatePath if keyPath is None else keyPath
        privateKey = loadPrivateKey(keyPath, "server key")
        checkKeyMatches(certificate, privateKey, certificatePath, keyPath)
        if not clientCertificatePaths:
            raise ConfigurationError("no trusted client certificates were given.")
        trusted: list[x509.Certificate] = []
        for path in clientCertificatePaths:
            trusted.extend(loadCertificates(path, "client certificates"))
        return cls(certificate, privateKey, tuple(chain), tuple(trusted), verifyDepth)

    def warnings(self, now: datetime.datetime | None = None) -> list[str]:
        """
        @return: sentences about settings that work but should not: an
            expired or not yet valid server certificate.
        """
        now = now or datetime.datetime.now(datetime.timezone.utc)
        subject = self.certificate.subject.rfc4514_string()
        if self.certificate.not_valid_after_utc < now:
            return [
                f"the server certificate {subject} EXPIRED on"
                f" {self.certificate.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC:"
                " clients will reject it."
            ]
        if self.certificate.not_valid_before_utc > now:
            return [
                f"the server certificate {subject} is not valid before"
                f" {self.certificate.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC:"
                " clients will reject it."
            ]
        return []


@frozen
class VerifyFailure:
    """
    Why OpenSSL rejected a peer's certificate chain.

    @ivar errno: the C{X509_V_ERR_*} code.
    @ivar depth: the chain position of the failing certificate (0: leaf).
    @ivar subject: that certificate's subject (RFC 4514).
    """

    errno: int
    depth: int
    subject: str

    @property
    def reason(self) -> str:
        """
        OpenSSL's text for the error, e.g. C{certificate has expired}.
        """
        return verifyErrorText(self.errno)


class VerifyRecorder:
    """
    Remembers, per OpenSSL connection, the first certificate verification
    error OpenSSL reported, so that a failed handshake can say why.  Its
    L{record} is called from verify callbacks and returns OpenSSL's verdict
    unchanged.
    """

    def __init__(self) -> None:
        self._failures: WeakKeyDictionary[SSL.Connection, VerifyFailure] = WeakKeyDictionary()

    def record(
        self,
        connection: SSL.Connection,
        certificate: X509,
        errno: int,
        depth: int,
        ok: int,
    ) -> bool:
        """
        A verify callback (the signature of L{SSL.Context.set_verify}'s) that
        records a failure and returns C{ok} unchanged.
        """
        if not ok and connection not in self._failures:
            try:
                subject = certificate.to_cryptography().subject.rfc4514_string()
            except Exception:  # a certificate cryptography cannot parse
                subject = "?"
            self._failures[connection] = VerifyFailure(errno, depth, subject)
        return bool(ok)

    def failure(self, connection: SSL.Connection) -> VerifyFailure | None:
        """
        @return: the verification failure recorded for C{connection}, if any.
        """
        return self._failures.get(connection)


@implementer(IOpenSSLServerConnectionCreator)
class ServerContext:
    """
    The server side of mutual TLS: creates the OpenSSL connection for each
    accepted socket, and remembers why a client's certificate was rejected.

    The context is built once by L{CertificateOptions} with C{trustRoot} made
    from the trusted certificates (so Twisted requires and verifies a client
    certificate), then completed before any connection uses it:
     - partial-chain verification, so a CA-issued leaf listed alone is
       trusted as a pin;
     - the trusted subjects sent as acceptable client CA names;
     - the verify depth;
     - a verify callback that records OpenSSL's verdict and never changes it.
    """

    def __init__(self, settings: ServerTLSSettings) -> None:
        self.settings = settings
        self._recorder = VerifyRecorder()
        # CertificateOptions takes cryptography objects (its hints say
        # pyOpenSSL's, whose use is deprecated).
        self._options = CertificateOptions(
            privateKey=cast(Any, settings.privateKey),
            certificate=cast(Any, settings.certificate),
            extraCertChain=cast(Any, list(settings.chain)),
            trustRoot=trustRootFromCertificates(
                [Certificate(X509.from_cryptography(c)) for c in settings.trusted]
            ),
        )
        context = self._options.getContext()
        store = context.get_cert_store()
        assert store is not None
        store.set_flags(X509StoreFlags.PARTIAL_CHAIN)
        context.set_verify_depth(settings.verifyDepth)
        for certificate in settings.trusted:
            context.add_client_ca(certificate)
        context.set_verify(context.get_verify_mode(), self._recorder.record)

    def verifyFailure(self, connection: SSL.Connection) -> VerifyFailure | None:
        """
        @return: why OpenSSL rejected the client certificate on
            C{connection}, or L{None} if it did not.
        """
        return self._recorder.failure(connection)

    def serverConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        """
        Create the OpenSSL connection for a newly accepted socket.
        """
        return self._options.serverConnectionForTLS(tlsProtocol)
