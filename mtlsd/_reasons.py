# -*- test-case-name: mtlsd.test.test_server -*-
"""
Turning OpenSSL's errors into the short reasons mtlsd logs and prints.
"""

from __future__ import annotations

from OpenSSL import SSL
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.python.failure import Failure

# OpenSSL's reason strings for bytes that are not a TLS record at all.
_NOT_TLS = frozenset(
    {
        "http request",
        "https proxy request",
        "wrong version number",
        "unknown protocol",
        "packet length too long",
        "record layer failure",
    }
)

NO_CLIENT_CERTIFICATE = "no client certificate"
NOT_TLS = "not TLS"
HANDSHAKE_TIMEOUT = "handshake timeout"
CLOSED_BEFORE_HANDSHAKE = "closed before handshake"
NO_SERVICE = "no service for server name"
CLOSED_BEFORE_ADMISSION = "closed before the admission checks answered"
INVALID_PROXY_HEADER = "invalid PROXY header"
NOT_ALLOWED = "not allowed by policy"
REVOKED = "revoked"
NO_LONGER_TRUSTED = "no longer trusted"
ISSUER_NOT_CA = "issuer is a client certificate, not a CA"
OCSP_REVOKED = "certificate revoked (OCSP)"
OCSP_UNKNOWN = "OCSP status unknown"
OCSP_UNAVAILABLE = "OCSP responder unavailable"


def verifyErrorText(errno: int) -> str:
    """
    OpenSSL's text for an C{X509_V_ERR_*} code, e.g. 10 -> C{certificate has
    expired}.

    pyOpenSSL does not export C{X509_verify_cert_error_string}, so this is
    the one place that reaches into its bindings; a test pins the texts.
    """
    try:
        from OpenSSL._util import ffi, lib

        return str(ffi.string(lib.X509_verify_cert_error_string(errno)).decode())
    except (ImportError, AttributeError):  # pragma: no cover
        names = {v: k for k, v in vars(SSL.X509VerificationCodes).items()}
        return names.get(errno, f"verify error {errno}")


def opensslReasons(error: BaseException | None) -> list[str]:
    """
    @return: OpenSSL's reason strings in an L{SSL.Error}, e.g. C{["certificate
        verify failed"]}; empty for any other exception.
    """
    if not isinstance(error, SSL.Error) or not error.args:
        return []
    details = error.args[0]
    if not isinstance(details, list):
        return [str(details)]
    return [str(entry[-1]) for entry in details if isinstance(entry, tuple)]


def isPlainHTTP(error: BaseException | None) -> bool:
    """
    Whether OpenSSL failed a server's handshake because the client sent a
    plain HTTP request (C{GET}, C{POST}, C{HEAD}, C{PUT} or C{CONNECT}):
    OpenSSL then sends no alert, so an HTTP answer can go back instead.
    """
    return bool({"http request", "https proxy request"}.intersection(opensslReasons(error)))


def handshakeFailureReason(reason: Failure) -> str:
    """
    The reason a server-side handshake failed, for the C{rejected} event,
    when no certificate verification error was recorded for it.
    """
    texts = opensslReasons(reason.value)
    if reason.check(InvalidProxyHeader):
        return INVALID_PROXY_HEADER
    if not texts:
        return CLOSED_BEFORE_HANDSHAKE
    if "peer did not return a certificate" in texts:
        return NO_CLIENT_CERTIFICATE
    if _NOT_TLS.intersection(texts):
        return NOT_TLS
    alert = peerAlert(reason)
    if alert is not None:
        return f"client sent alert: {alert}"
    return "TLS error: " + "; ".join(texts)


def peerAlert(reason: Failure) -> str | None:
    """
    @return: the text of a TLS alert the peer sent (C{"tlsv13 alert
        certificate required"}), or L{None} if C{reason} is not one.
    """
    for text in opensslReasons(reason.value):
        if " alert " in text:
            return text
    return None
