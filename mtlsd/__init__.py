"""
mtlsd: a mutual-TLS daemon and library for Twisted.

Only clients whose certificate is in (or chains to) a bundle of trusted
certificates get through to the application.
"""

from ._admission import AdmissionCheck, Verdict
from ._build import MtlsServer, MtlsServerEndpoint, ServerConfiguration
from ._client import (
    ClientContext,
    ClientTLSSettings,
    MtlsClientEndpoint,
    ServerNotTrusted,
    ServerRejectedClient,
)
from ._context import ServerContext
from ._errors import ConfigurationError
from ._identity import PeerIdentity, identityFromCertificate, peerIdentity
from ._policy import AllowPolicy
from ._reload import TrustReloader
from ._server import ConnectionLimits, mtlsServerFactory
from ._settings import ServerTLSSettings
from ._verify import VerifyFailure

__all__ = [
    "AdmissionCheck",
    "AllowPolicy",
    "ClientContext",
    "ClientTLSSettings",
    "ConfigurationError",
    "ConnectionLimits",
    "MtlsClientEndpoint",
    "MtlsServer",
    "MtlsServerEndpoint",
    "PeerIdentity",
    "ServerConfiguration",
    "ServerContext",
    "ServerNotTrusted",
    "ServerRejectedClient",
    "ServerTLSSettings",
    "TrustReloader",
    "Verdict",
    "VerifyFailure",
    "identityFromCertificate",
    "mtlsServerFactory",
    "peerIdentity",
]
