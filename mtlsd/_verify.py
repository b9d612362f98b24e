# -*- test-case-name: mtlsd.test.test_server -*-
"""
OpenSSL's certificate verification as both sides of mutual TLS use it: the
TLS versions offered, the record of why a peer's chain failed, and a verify
callback that can fail a chain with an error of its choosing (the one place
that reaches into pyOpenSSL's bindings for it; a test checks that the names
used still exist).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from weakref import WeakKeyDictionary

from attrs import frozen
from cryptography import x509
from OpenSSL import SSL
from OpenSSL.crypto import X509
from twisted.internet.ssl import TLSVersion

from ._errors import ConfigurationError
from ._reasons import verifyErrorText

TLS_VERSIONS = {"1.2": TLSVersion.TLSv1_2, "1.3": TLSVersion.TLSv1_3}


def validTLSVersion(instance: object, attribute: object, value: str) -> None:
    """
    An attrs validator: C{value} is a minimum TLS version mtlsd offers.
    """
    if value not in TLS_VERSIONS:
        raise ConfigurationError(f"--tls-min-version must be 1.2 or 1.3, not {value!r}.")


def subjectOf(certificate: X509 | x509.Certificate) -> str:
    """
    @return: a certificate's subject (RFC 4514), or C{?} for one that
        cryptography cannot parse.
    """
    try:
        if isinstance(certificate, X509):
            certificate = certificate.to_cryptography()
        return certificate.subject.rfc4514_string()
    except Exception:
        return "?"


@frozen
class VerifyFailure:
    """
    Why a peer's certificate chain was refused: by OpenSSL, or by mtlsd (the
    issuer rule, the allow-list, a revocation check).

    @ivar errno: the C{X509_V_ERR_*} code, which also picks the TLS alert the
        peer gets when the refusal is made in the handshake.
    @ivar depth: the chain position of the failing certificate (0: leaf).
    @ivar subject: that certificate's subject (RFC 4514).
    @ivar text: mtlsd's reason, for a refusal of mtlsd's (else OpenSSL's
        text for C{errno} is the reason).
    @ivar details: the log fields naming the refused client (C{commonName},
        C{uris}, ...), instead of C{depth} and C{subject}.
    """

    errno: int
    depth: int
    subject: str
    text: str | None = None
    details: tuple[tuple[str, object], ...] = ()

    @property
    def reason(self) -> str:
        """
        mtlsd's reason when mtlsd refused a chain OpenSSL accepted (C{text}),
        else OpenSSL's text for the error, e.g. C{certificate has expired}.
        """
        return self.text or verifyErrorText(self.errno)

    @property
    def fields(self) -> dict[str, object]:
        """
        The log fields of the refusal: the identity of a client the policy
        refused, else the depth and subject of the failing certificate.
        """
        return dict(self.details) or {"depth": self.depth, "subject": self.subject}


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
            self._failures[connection] = VerifyFailure(errno, depth, subjectOf(certificate))
        return bool(ok)

    def refuse(self, connection: SSL.Connection, failure: VerifyFailure) -> int:
        """
        Record mtlsd's own refusal of a chain OpenSSL accepted.

        @return: its error code, the verdict for the verify callback to
            return (see L{setVerify}).
        """
        self._failures.setdefault(connection, failure)
        return failure.errno

    def failure(self, connection: SSL.Connection) -> VerifyFailure | None:
        """
        @return: the verification failure recorded for C{connection}, if any.
        """
        return self._failures.get(connection)


VerifyCallback = Callable[[SSL.Connection, X509, int, int, int], "bool | int"]
"""
A verify callback as L{SSL.Context.set_verify} takes, which may also
return an C{X509_V_ERR_*} code (an C{int}, not a C{bool}): the chain then
fails with that error.
"""


def setVerify(context: SSL.Context, mode: int, callback: VerifyCallback) -> None:
    """
    L{SSL.Context.set_verify}, with a callback that can fail a chain OpenSSL
    accepted with an error of its choosing.

    OpenSSL picks the TLS alert from the verification error.  pyOpenSSL's
    callback cannot set one, so a certificate refused where OpenSSL saw no
    error left it at C{X509_V_OK}, which OpenSSL sends as an "internal error"
    alert; with the error set (C{certificate rejected}, C{invalid CA}) the
    client gets "bad certificate" or "unknown CA", as for any other refusal.
    """
    from OpenSSL._util import ffi, lib

    refusal = [0]

    def verify(
        connection: SSL.Connection, certificate: X509, errno: int, depth: int, ok: int
    ) -> bool:
        verdict = callback(connection, certificate, errno, depth, ok)
        if isinstance(verdict, bool):
            return verdict
        refusal[0] = verdict
        return False

    context.set_verify(mode, verify)
    pyOpenSSLs: Any = context._verify_callback

    def setError(ok: int, storeContext: object) -> int:
        refusal[0] = 0
        result = int(pyOpenSSLs(ok, storeContext))
        if not result and refusal[0]:
            lib.X509_STORE_CTX_set_error(storeContext, refusal[0])
        return result

    withError = ffi.callback("int (*)(int, X509_STORE_CTX *)", setError)
    context._verify_callback = withError  # kept alive with the context
    lib.SSL_CTX_set_verify(context._context, mode, withError)
