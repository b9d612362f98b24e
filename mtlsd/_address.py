# -*- test-case-name: mtlsd.test.test_server -*-
"""
Peers as the logs name them, and the TCP options of the sockets mtlsd
relays over.
"""

from __future__ import annotations

import socket
import struct

from twisted.internet.interfaces import IAddress, ITransport


def formatAddress(address: IAddress) -> str:
    """
    @return: C{host:port} (C{[host]:port} for IPv6) for an IP address, the
        path for a UNIX address, else the address's C{repr}.
    """
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None and port is not None:
        if host.startswith("::ffff:") and "." in host:
            host = host[len("::ffff:") :]  # an IPv4 client of a dual-stack socket
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    name = getattr(address, "name", None)
    if name is not None:
        return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
    return repr(address)


def unixClient(transport: ITransport) -> str:
    """
    A client of a UNIX socket, which has no address of its own, as the logs
    give it: C{unix:PATH} of the socket it connected to, and the client's
    process and user where the kernel tells them (C{SO_PEERCRED}), e.g.
    C{unix:/run/mtlsd.sock pid=1234 uid=1000}.
    """
    described = f"unix:{formatAddress(transport.getHost())}"
    # The socket: a TLS transport's handle is its OpenSSL connection.
    handle = getattr(transport, "socket", None)
    credentials = getattr(socket, "SO_PEERCRED", None)
    if isinstance(handle, socket.socket) and credentials is not None:
        try:
            pid, uid, _ = struct.unpack("3i", handle.getsockopt(socket.SOL_SOCKET, credentials, 12))
        except OSError:
            return described
        described += f" pid={pid} uid={uid}"
    return described


def noDelay(transport: object) -> None:
    """
    Turn off Nagle's algorithm on the TCP connection under C{transport}
    (through TLS and PROXY wrappers, which pass the call on), as proxies do:
    small writes, such as a relayed answer, then leave at once instead of
    waiting up to 40 ms for the peer's delayed acknowledgement.
    """
    setTcpNoDelay = getattr(transport, "setTcpNoDelay", None)
    if setTcpNoDelay is not None:
        setTcpNoDelay(True)
