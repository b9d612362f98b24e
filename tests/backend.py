"""
A plaintext backend for the black-box tests, run as its own process:
C{python -m tests.backend MODE PORTFILE}, where MODE is C{echo} (echoes,
closes after the end of its input), C{wc} (answers the byte count after the
end of its input) or C{stall} (reads nothing until the file PORTFILE.go
exists, then reads 64 MiB and answers their count).  It listens on a free port of 127.0.0.1 and writes the port
to PORTFILE.
"""

import os
import socket
import sys
import threading
import time

STALLED_READ = 64 << 20


def serve(connection: socket.socket, mode: str, portFile: str) -> None:
    with connection:
        count = 0
        if mode == "stall":
            while not os.path.exists(portFile + ".go"):
                time.sleep(0.05)
            while count < STALLED_READ:
                data = connection.recv(1 << 16)
                if not data:
                    break
                count += len(data)
            connection.sendall(b"%d\n" % count)
            return
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
    os.replace(portFile + ".tmp", portFile)
    while True:
        connection, _ = listener.accept()
        threading.Thread(target=serve, args=(connection, mode, portFile), daemon=True).start()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
