# -*- test-case-name: mtlsd.test.test_web -*-
"""
Mutual TLS for twisted.web sites: a part of a site only some verified
clients may see.  (The identity of a request's client is
L{mtlsd.peerIdentity}C{(request)}, for HTTP/1.1 and HTTP/2 alike; a client
for twisted.web's C{Agent} and treq is
L{mtlsd.ClientTLSSettings.policyForHTTPS}.)
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from zope.interface import implementer

from ._address import formatAddress
from ._events import emit
from ._identity import peerIdentity
from ._policy import AllowPolicy

__all__ = ["requireIdentity"]

log = Logger(namespace="mtlsd")

FORBIDDEN_BODY = b"Forbidden: your client certificate is not allowed here.\n"


class _Forbidden(Resource):
    """
    The short 403 answer to a client the policy does not admit.
    """

    isLeaf = True

    def render(self, request: IRequest) -> bytes:
        request.setResponseCode(403)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return FORBIDDEN_BODY


_FORBIDDEN = _Forbidden()


@implementer(IResource)
class _IdentityGuard:
    """
    A resource (and everything under it) that only clients the policy
    admits may reach; as twisted.web's own guard does, it hands the path
    segment back to the wrapped resource, which traverses on as it would.
    """

    isLeaf = False

    def __init__(self, wrapped: IResource, policy: AllowPolicy) -> None:
        self._wrapped = wrapped
        self._policy = policy

    def _allowed(self, request: Any) -> IResource:
        try:
            identity = peerIdentity(request)
        except ValueError:
            identity = None
        if identity is not None and self._policy.allows(identity):
            return self._wrapped
        emit(
            log,
            "forbidden",
            client=formatAddress(request.getClientAddress()),
            commonName=None if identity is None else identity.commonName,
            method=request.method.decode("ascii", "replace"),
            path=request.path.decode("ascii", "replace"),
        )
        return _FORBIDDEN

    def getChildWithDefault(self, path: bytes, request: Any) -> IResource:
        allowed = self._allowed(request)
        if allowed is self._wrapped:
            request.postpath.insert(0, request.prepath.pop())
        return allowed

    def render(self, request: Any) -> Any:
        return self._allowed(request).render(request)

    def putChild(self, path: bytes, child: IResource) -> None:
        self._wrapped.putChild(path, child)


def requireIdentity(resource: IResource, policy: AllowPolicy) -> IResource:
    """
    Guard C{resource}, and every resource under it: a client whose
    verified certificate C{policy} does not admit (or a request not over
    mutual TLS) is answered 403 with a short body, and logged
    (C{forbidden}); the others reach C{resource} as they would without
    the guard.

    @param resource: the part of the site to guard.
    @param policy: who may reach it (an empty policy admits every verified
        client).
    """
    return _IdentityGuard(resource, policy)
