"""
What mtlsd's own tests share beyond the public L{mtlsd.testing}.
"""

from __future__ import annotations

import datetime

from twisted.internet.address import IPv4Address

# A client's address, for tests that build a server protocol by hand.
CLIENT_ADDRESS = IPv4Address("TCP", "192.0.2.7", 40001)


def hoursAgo(hours: float) -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=hours)
