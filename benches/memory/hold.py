#!/usr/bin/env python3
"""hold.py HOST PORT PATH COUNT: COUNT idle keep-alive client connections, held open.

Opens COUNT connections to HOST:PORT one after the other; on each sends one `GET PATH` (HTTP/1.1,
keep-alive) and reads the whole response, which must be a 200 that does not close the connection.
Then prints `HELD COUNT` and holds every connection open and idle until SIGUSR1 or SIGTERM. On
SIGUSR1 it prints `OPEN K`, K being the connections the server has not closed meanwhile, and
exits; on SIGTERM it just exits. Any failure before `HELD` ends it with status 1 and says why.
Used by benches/memory.sh (which reads the server's RSS while the connections are held).
"""

import resource
import signal
import socket
import sys

TIMEOUT_S = 10.0


def read_response(sock: socket.socket) -> bytes:
    """Reads one HTTP/1.1 response (Content-Length or chunked body); returns its head."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection before the response head")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip().lower()
    if b"content-length" in headers:
        length = int(headers[b"content-length"])
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection in the response body")
            body += chunk
    elif headers.get(b"transfer-encoding") == b"chunked":
        while not body.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection in the response body")
            body += chunk
    else:
        raise ValueError("a response without Content-Length nor chunked body: not kept alive")
    if headers.get(b"connection") == b"close":
        raise ValueError("the server answered `Connection: close`: not kept alive")
    return head


def still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def main() -> int:
    if len(sys.argv) != 5:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        return 2
    host, port, path, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 50:
        if hard != resource.RLIM_INFINITY and hard < count + 50:
            print(f"open files are limited to {hard}, too few for {count} connections", file=sys.stderr)
            return 1
        resource.setrlimit(resource.RLIMIT_NOFILE, (count + 50, hard))
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: hold.py\r\n\r\n".encode()
    held = []
    for i in range(count):
        try:
            sock = socket.create_connection((host, port), timeout=TIMEOUT_S)
            sock.sendall(request)
            head = read_response(sock)
        except (OSError, ValueError) as error:
            print(f"connection {i + 1} of {count}: {error}", file=sys.stderr)
            return 1
        status = head.split(b"\r\n", 1)[0]
        if status.split()[1:2] != [b"200"]:
            print(f"connection {i + 1} of {count}: answered {status.decode(errors='replace')}", file=sys.stderr)
            return 1
        held.append(sock)
    # Blocked before saying HELD, so a signal sent on seeing it cannot arrive unhandled.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGTERM})
    print(f"HELD {len(held)}", flush=True)
    if signal.sigwait({signal.SIGUSR1, signal.SIGTERM}) == signal.SIGUSR1:
        print(f"OPEN {sum(still_open(sock) for sock in held)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
