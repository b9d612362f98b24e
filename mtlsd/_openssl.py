# -*- test-case-name: mtlsd.test.test_server -*-
"""
What pyOpenSSL does not offer, taken from its bindings in this one module
(a test checks that the names used still exist).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from OpenSSL import SSL
from OpenSSL.crypto import X509

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
