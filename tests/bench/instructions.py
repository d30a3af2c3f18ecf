#!/usr/bin/env python3
"""Instructions idemproxy executes per request, counted by callgrind.

    python3 tests/bench/instructions.py [BIN...]      (make bench-instructions)

On a shared machine requests/s and CPU µs move by ±15% from one run to the
next; instruction counts do not (the same binary and requests give the same
count to a few parts in ten thousand). So a change that must not make the
proxy slower is checked here, against the binary before it, and the rates
of `make bench` are left to what they are good for.

For each binary: a Redis, the test upstream and idemproxy (one worker, under
valgrind --tool=callgrind) on free loopback ports; one keep-alive connection
sends N_WARM requests of a kind, then N more, each awaited; the difference
between two counts (N_WARM + N and N_WARM requests) divided by N is the
instructions per request of that kind, start-up and shutdown excluded.
Kinds: unique-key POST (claim, forward, store), replay, POST passthrough.
Every process is stopped by PID. Environment: N (default 1000), VALGRIND_BIN.
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
N = int(os.environ.get("N", "1000"))
N_WARM = 100
VALGRIND = os.environ.get("VALGRIND_BIN", "valgrind")
UPSTREAM = os.environ.get("UPSTREAM_BIN", os.path.join(ROOT, "build", "test-upstream"))
BODY = b'{"amount":100}'


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"instructions: {what} exited with status {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"instructions: {what} did not listen on {port}")


def request(sock, reader, key):
    head = b"POST /orders HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
    if key is not None:
        head += b"Idempotency-Key: " + key.encode() + b"\r\n"
    sock.sendall(head + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY)
    status = reader.readline()
    if b" 201 " not in status:
        raise SystemExit(f"instructions: answered {status!r}")
    length = 0
    while True:
        line = reader.readline()
        if line in (b"\r\n", b""):
            break
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    reader.read(length)


def count(binary, kind, n, tmp):
    """Instructions idemproxy ran to start, answer n + N_WARM requests of kind, stop."""
    redis_port, up_port, port = free_port(), free_port(), free_port()
    procs = []
    out = os.path.join(tmp, "callgrind.out")
    try:
        redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--save", "",
                                  "--appendonly", "no", "--dir", tmp],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(redis)
        upstream = subprocess.Popen([UPSTREAM, "-p", str(up_port)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(upstream)
        conf = os.path.join(tmp, "idemproxy.conf")
        with open(conf, "w") as f:
            f.write(f"listen 127.0.0.1:{port}\nupstream http://127.0.0.1:{up_port}\n"
                    f"redis 127.0.0.1:{redis_port}\nworkers 1\naccess_log off\n"
                    f"error_log {tmp}/idemproxy.log\nlog_level warn\n")
        wait_port(redis_port, redis, "redis-server")
        wait_port(up_port, upstream, "the test upstream")
        proxy = subprocess.Popen([VALGRIND, "--tool=callgrind", f"--callgrind-out-file={out}",
                                  binary, "-c", conf],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proxy)
        wait_port(port, proxy, "idemproxy")
        sock = socket.create_connection(("127.0.0.1", port))
        reader = sock.makefile("rb")
        replay_key = f"ir-replay-{uuid.uuid4().hex}"
        for _ in range(N_WARM + n):
            key = {"unique": f"ir-{uuid.uuid4().hex}", "replay": replay_key,
                   "passthrough": None}[kind]
            request(sock, reader, key)
        sock.close()
        proxy.terminate()
        proxy.wait(60)
        with open(out) as f:
            for line in f:
                if line.startswith("summary:") or line.startswith("totals:"):
                    return int(line.split()[1])
        raise SystemExit("instructions: no totals in callgrind's output")
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                p.wait(30)


def main(argv):
    binaries = argv[1:] or [os.path.join(ROOT, "build", "idemproxy")]
    for tool in (VALGRIND, "redis-server"):
        if shutil.which(tool) is None:
            raise SystemExit(f"instructions: {tool} not found (apt-get install valgrind "
                             "redis-server)")
    tmp = tempfile.mkdtemp(prefix="idemproxy-ir.")
    try:
        print(f"instructions per request (callgrind Ir, one worker, {N} requests after "
              f"{N_WARM})")
        print("| binary | unique-key POST | replay | POST passthrough |")
        print("|---|---:|---:|---:|")
        for binary in binaries:
            cells = []
            for kind in ("unique", "replay", "passthrough"):
                total = count(binary, kind, N, tmp)
                base = count(binary, kind, 0, tmp)
                cells.append(f"{(total - base) / N:,.0f}")
            print(f"| {binary} | " + " | ".join(cells) + " |", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
