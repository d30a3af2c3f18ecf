#!/usr/bin/env python3
"""Measures a server's resident memory per idle keep-alive connection.

    python3 tests/bench/idle_conns.py PORT PID [COUNT] [PATH]

Reads VmRSS of PID, opens COUNT (default 10000) TCP connections to
127.0.0.1:PORT, sends one `GET PATH HTTP/1.1` on each and reads the whole
response (so every connection is established at the HTTP level and idle,
kept alive), waits a moment, reads VmRSS again, checks how many connections
are still open, then closes them all. Prints one JSON object on stdout:
{"count", "open_after", "rss_before_kb", "rss_after_kb", "bytes_per_conn",
"errors", "seconds"}. Exit status 0 when the measurement was taken (even with
some failed connections: they are reported), 1 when it could not be.
Standard library only.
"""

import json
import os
import resource
import selectors
import socket
import sys
import time

BATCH = 200            # connections in flight at once while opening
IO_TIMEOUT = 10.0      # seconds for one batch


def vmrss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    want = max(want, need) if hard == resource.RLIM_INFINITY else want
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def response_complete(buf):
    """True when buf holds one whole response with a Content-Length body."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return False
    length = 0
    for line in buf[:end].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    return len(buf) >= end + 4 + length


def open_batch(port, n, request, errors):
    """Opens n connections, each sends request and reads its response.

    Returns the sockets that got a complete 2xx response."""
    sel = selectors.DefaultSelector()
    pending = {}
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex(("127.0.0.1", port))
        if err not in (0, 115):  # EINPROGRESS
            errors["connect"] = errors.get("connect", 0) + 1
            s.close()
            continue
        pending[s] = {"out": request, "in": b""}
        sel.register(s, selectors.EVENT_WRITE)
    done = []
    deadline = time.monotonic() + IO_TIMEOUT
    while pending and time.monotonic() < deadline:
        for key, events in sel.select(timeout=0.5):
            s = key.fileobj
            st = pending[s]
            try:
                if events & selectors.EVENT_WRITE:
                    sent = s.send(st["out"])
                    st["out"] = st["out"][sent:]
                    if not st["out"]:
                        sel.modify(s, selectors.EVENT_READ)
                    continue
                chunk = s.recv(65536)
            except OSError:
                errors["io"] = errors.get("io", 0) + 1
                sel.unregister(s)
                s.close()
                del pending[s]
                continue
            if not chunk:
                errors["closed"] = errors.get("closed", 0) + 1
                sel.unregister(s)
                s.close()
                del pending[s]
                continue
            st["in"] += chunk
            if response_complete(st["in"]):
                sel.unregister(s)
                del pending[s]
                if st["in"][9:10] == b"2":
                    done.append(s)
                else:
                    errors["status"] = errors.get("status", 0) + 1
                    s.close()
    for s in pending:
        errors["timeout"] = errors.get("timeout", 0) + 1
        sel.unregister(s)
        s.close()
    sel.close()
    return done


def still_open(socks):
    """Counts sockets the server has not closed (no EOF, no error waiting)."""
    alive = 0
    for s in socks:
        try:
            data = s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            if data:
                alive += 1  # unexpected bytes, but the connection is open
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
    return alive


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 1
    port, pid = int(argv[1]), int(argv[2])
    count = int(argv[3]) if len(argv) > 3 else 10000
    path = argv[4] if len(argv) > 4 else "/get"
    limit = raise_nofile(count + 64)
    if limit < count + 64:
        print(f"idle_conns: RLIMIT_NOFILE is {limit}, need {count + 64}", file=sys.stderr)
        return 1
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    t0 = time.monotonic()
    before = vmrss_kb(pid)
    socks, errors = [], {}
    while len(socks) < count:
        got = open_batch(port, min(BATCH, count - len(socks)), request, errors)
        socks.extend(got)
        if not got and sum(errors.values()) > count:
            break
    time.sleep(1.0)
    after = vmrss_kb(pid)
    alive = still_open(socks)
    for s in socks:
        s.close()
    result = {
        "count": len(socks),
        "open_after": alive,
        "rss_before_kb": before,
        "rss_after_kb": after,
        "bytes_per_conn": (after - before) * 1024 / len(socks) if socks else None,
        "errors": errors,
        "seconds": round(time.monotonic() - t0, 2),
    }
    print(json.dumps(result))
    return 0 if socks else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
