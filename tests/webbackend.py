"""
HTTP backends for the black-box tests of C{--forward-http}, run as their own
process: C{python -m tests.webbackend MODE PORTFILE}.  C{echo} is a
twisted.web site answering every request with what it received (method,
URI, each header line, body length) as JSON; C{stall} reads a request head,
then nothing until the file PORTFILE.go exists, then the body, and answers
its length.  Each listens on a free port of 127.0.0.1 and writes it to
PORTFILE.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from typing import Any


def echo(portFile: str) -> None:
    from twisted.internet import reactor
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    class Echo(Resource):
        isLeaf = True

        def render(self, request: Any) -> bytes:
            body = request.content.read()
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(
                {
                    "method": request.method.decode(),
                    "uri": request.uri.decode(),
                    "headers": [
                        [name.decode(), value.decode("latin-1")]
                        for name, values in request.requestHeaders.getAllRawHeaders()
                        for value in values
                    ],
                    "length": len(body),
                }
            ).encode()

    port = reactor.listenTCP(0, Site(Echo()), interface="127.0.0.1")  # type: ignore[attr-defined]
    publish(portFile, port.getHost().port)
    reactor.run()  # type: ignore[attr-defined]


def stall(portFile: str) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    publish(portFile, listener.getsockname()[1])

    def serve(connection: socket.socket) -> None:
        with connection:
            head = b""
            while b"\r\n\r\n" not in head:
                data = connection.recv(1 << 16)
                if not data:
                    return
                head += data
            head, _, count = head.partition(b"\r\n\r\n")
            length = int(
                next(
                    line.split(b":", 1)[1]
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
            )
            while not os.path.exists(portFile + ".go"):
                time.sleep(0.05)
            received = len(count)
            while received < length:
                data = connection.recv(1 << 20)
                if not data:
                    return
                received += len(data)
            answer = b"%d" % received
            connection.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer)
            )

    while True:
        connection, _ = listener.accept()
        threading.Thread(target=serve, args=(connection,), daemon=True).start()


def publish(portFile: str, port: int) -> None:
    with open(portFile + ".tmp", "w") as f:
        f.write(str(port))
    os.replace(portFile + ".tmp", portFile)


if __name__ == "__main__":
    {"echo": echo, "stall": stall}[sys.argv[1]](sys.argv[2])
