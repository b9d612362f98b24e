"""
Registers mtlsd with twistd (C{twistd mtlsd}) and the C{mtls:} endpoint
strings; no logic lives here.
"""

from twisted.application.service import ServiceMaker

from mtlsd._parser import MtlsClientParser, MtlsServerParser

mtlsd = ServiceMaker(
    "mtlsd",
    "mtlsd._tap",
    "Mutual-TLS daemon: only clients with a trusted certificate get in.",
    "mtlsd",
)
mtlsServer = MtlsServerParser()
mtlsClient = MtlsClientParser()
