"""
A plaintext backend for the black-box tests, run as its own process:
C{python -m tests.backend MODE PORTFILE}, where MODE is C{echo} (echoes,
closes after the end of its input), C{wc} (answers the byte count after the
end of its input) or C{proxy} (answers with the PROXY header it received,
then the echo).  It listens on a free port of 127.0.0.1 and writes the port
to PORTFILE.
"""

import socket
import sys
import threading


def serve(connection: socket.socket, mode: str) -> None:
    with connection:
        if mode == "proxy":
            header = b""
            while not header.endswith(b"\r\n") and len(header) < 16 + 4096:
                header += connection.recv(1)
                if header.startswith(b"\r\n\r\n\x00\r\nQUIT\n") and len(header) >= 16:
                    length = int.from_bytes(header[14:16], "big")
                    while len(header) < 16 + length:
                        header += connection.recv(16 + length - len(header))
                    break
            connection.sendall(len(header).to_bytes(4, "big") + header)
        count = 0
        while True:
            data = connection.recv(1 << 16)
            if not data:
                break
            count += len(data)
            if mode != "wc":
                connection.sendall(data)
        if mode == "wc":
            connection.sendall(b"%d\n" % count)


def main(mode: str, portFile: str) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    with open(portFile + ".tmp", "w") as f:
        f.write(str(listener.getsockname()[1]))
    import os

    os.replace(portFile + ".tmp", portFile)
    while True:
        connection, _ = listener.accept()
        threading.Thread(target=serve, args=(connection, mode), daemon=True).start()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
