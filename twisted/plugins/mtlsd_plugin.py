"""
Registers mtlsd with twistd (C{twistd mtlsd}); no logic lives here.
"""

from twisted.application.service import ServiceMaker

mtlsd = ServiceMaker(
    "mtlsd",
    "mtlsd._tap",
    "Mutual-TLS daemon: only clients with a trusted certificate get in.",
    "mtlsd",
)
