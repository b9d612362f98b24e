# -*- test-case-name: mtlsd.test.test_server -*-
"""
OpenSSL's certificate verification as both sides of mutual TLS use it: the
TLS versions offered, the record of why a peer's chain failed, and a verify
callback that can fail a chain with an error of its choosing, and the TLS
groups and signature algorithms (the one place that reaches into
pyOpenSSL's bindings for them; a test checks that the names used still
exist).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from typing import Any
from weakref import WeakKeyDictionary

from attrs import frozen
from cryptography import x509
from OpenSSL import SSL
from OpenSSL._util import lib as _lib
from OpenSSL.crypto import X509
from twisted.internet.ssl import TLSVersion

from ._errors import ConfigurationError
from ._reasons import verifyErrorText

OPENSSL_VERSION = SSL.SSLeay_version(SSL.SSLEAY_VERSION).decode("ascii", "replace")

TLS_VERSIONS = {"1.2": TLSVersion.TLSv1_2, "1.3": TLSVersion.TLSv1_3}


def validTLSVersion(instance: object, attribute: object, value: str) -> None:
    """
    An attrs validator: C{value} is a minimum TLS version mtlsd offers.
    """
    if value not in TLS_VERSIONS:
        raise ConfigurationError(f"--tls-min-version must be 1.2 or 1.3, not {value!r}.")


# Mozilla's key-exchange groups (server side TLS guidelines 5.8, 2026), in
# order of preference.  OpenSSL would also accept X448, P-521 and the FFDHE
# groups, which Mozilla's profiles do not.
MOZILLA_GROUPS = ("X25519MLKEM768", "X25519", "prime256v1", "secp384r1")

# OpenSSL's SSL_CTX_set1_groups_list, bound under its older name too.
_setGroups = getattr(_lib, "SSL_CTX_set1_groups_list", None) or getattr(
    _lib, "SSL_CTX_set1_curves_list", None
)
_setSigalgs = getattr(_lib, "SSL_CTX_set1_sigalgs_list", None)


def _applies(function: Any, context: SSL.Context, value: str) -> bool:
    return value.isascii() and function(context._context, value.encode("ascii")) == 1


@cache
def _knownGroup(name: str) -> bool:
    return _setGroups is not None and _applies(_setGroups, SSL.Context(SSL.TLS_METHOD), name)


def lackingGroups() -> tuple[str, ...]:
    """
    @return: the groups of L{MOZILLA_GROUPS} that the OpenSSL in use lacks
        (and so are not offered by default).
    """
    return tuple(name for name in MOZILLA_GROUPS if not _knownGroup(name))


def _given(option: str, value: str) -> str:
    """
    How the user wrote an option: C{--tls-groups X25519} or C{tlsGroups=X25519}.
    """
    return f"{option}{value}" if option.endswith("=") else f"{option} {value}"


def tlsGroups(value: str | None, option: str = "--tls-groups") -> tuple[str, ...]:
    """
    The key-exchange groups to offer, in order of preference.

    @param value: colon-separated OpenSSL names (C{X25519:prime256v1}), or
        L{None} for L{MOZILLA_GROUPS} less those the OpenSSL in use lacks.
    @param option: how the user gave C{value}, for the error.
    @raise ConfigurationError: for an empty list or a name this OpenSSL
        does not know.
    """
    if value is None:
        return tuple(name for name in MOZILLA_GROUPS if _knownGroup(name))
    names = tuple(value.split(":"))
    if _setGroups is None:
        raise ConfigurationError(
            f"{option}: this pyOpenSSL's bindings lack SSL_CTX_set1_groups_list,"
            " so the TLS groups cannot be chosen."
        )
    for name in names:
        if not name or not _knownGroup(name):
            raise ConfigurationError(
                f"{_given(option, value)}: {name!r} is not a TLS group"
                f" {OPENSSL_VERSION} knows; give OpenSSL names such as X25519:prime256v1."
            )
    return names


def tlsSignatureAlgorithms(value: str, option: str = "--tls-sigalgs") -> str:
    """
    Check a list of signature algorithms (OpenSSL's syntax:
    C{ECDSA+SHA256:rsa_pss_rsae_sha256}).

    @raise ConfigurationError: if OpenSSL refuses it.
    """
    if _setSigalgs is None:
        raise ConfigurationError(
            f"{option}: this pyOpenSSL's bindings lack SSL_CTX_set1_sigalgs_list,"
            " so the signature algorithms cannot be chosen."
        )
    if not _applies(_setSigalgs, SSL.Context(SSL.TLS_METHOD), value):
        raise ConfigurationError(
            f"{_given(option, value)}: {OPENSSL_VERSION} does not accept this list of"
            " signature algorithms; give names such as ECDSA+SHA256:rsa_pss_rsae_sha256."
        )
    return value


def setCryptoPolicy(
    context: SSL.Context, groups: Sequence[str], signatureAlgorithms: str | None = None
) -> None:
    """
    Offer only C{groups} (see L{tlsGroups}) on C{context} and, if given,
    only C{signatureAlgorithms} (see L{tlsSignatureAlgorithms}): for a
    server, the algorithms a client may sign its CertificateVerify with,
    and those the server signs with.
    """
    if not _applies(_setGroups, context, ":".join(groups)):
        raise ConfigurationError(f"OpenSSL refused the TLS groups {':'.join(groups)}.")
    if signatureAlgorithms is not None and not _applies(_setSigalgs, context, signatureAlgorithms):
        raise ConfigurationError(f"OpenSSL refused the signature algorithms {signatureAlgorithms}.")


_PROTOCOLS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}


def checkServerSigns(context: SSL.Context, minimum: str, signatureAlgorithms: str) -> None:
    """
    Check that a server context, restricted to C{signatureAlgorithms}, can
    still sign its handshake with its own key in each TLS version it
    offers: OpenSSL applies the list to the server's signature too, and a
    list its key cannot use would refuse every client (C{no shared cipher})
    or quietly leave TLS 1.3 out.  Each version is tried with one ClientHello
    in memory.

    @raise ConfigurationError: naming the versions that fail.
    """
    failing = []
    for version in [v for v in TLS_VERSIONS if v >= minimum]:
        client = SSL.Context(SSL.TLS_METHOD)
        client.set_min_proto_version(_PROTOCOLS[version])
        client.set_max_proto_version(_PROTOCOLS[version])
        hello = SSL.Connection(client, None)
        hello.set_connect_state()
        server = SSL.Connection(context, None)
        server.set_accept_state()
        try:
            hello.do_handshake()
        except SSL.WantReadError:
            pass
        server.bio_write(hello.bio_read(1 << 16))
        try:
            server.do_handshake()
        except SSL.WantReadError:
            continue  # its first flight, signed, is out: waiting for the client
        except SSL.Error:
            failing.append(version)
    if failing:
        raise ConfigurationError(
            f"--tls-sigalgs {signatureAlgorithms}: the server's own key cannot sign with any of"
            f" these in TLS {' and '.join(failing)} (OpenSSL applies the list to the server's"
            " signature too); add one its key can use, such as ECDSA+SHA256 for a P-256 key"
            " or rsa_pss_rsae_sha256 for RSA."
        )


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
