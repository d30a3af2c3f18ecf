#!/usr/bin/env python3
"""make bench: idemproxy against nginx, with wrk, on this machine.

    make bench
    BENCH_DURATION=5 python3 tests/bench/bench.py

Starts, on free 127.0.0.1 ports and in a temporary directory: a private
redis-server, nginx as a fast upstream (GET /get -> 200 "ok", POST /orders ->
201 "created"), idemproxy in front of it, and a second nginx as a plain
reverse proxy to the same upstream. Then:

  1. opens BENCH_IDLE_CONNS (10000) idle keep-alive connections to idemproxy
     and reports its resident memory per connection (idle_conns.py);
  2. runs wrk (-t BENCH_THREADS, --latency) for BENCH_DURATION seconds per
     scenario and connection count: GET passthrough and POST passthrough
     (idemproxy and nginx), POST with a unique Idempotency-Key per request and
     POST replay (idemproxy only), and both of these again paced to a modest
     fixed rate (BENCH_PACED_CONNECTIONS (10) connections that each wait
     BENCH_PACED_DELAY_MS (3) between requests: ~3k requests/s); for every
     idemproxy row, what Redis paid per request (its CPU, and `INFO
     commandstats`: commands per request and µs per call);
  3. with TLS (scenario "tls"): makes a self-signed P-256 certificate in the
     temporary directory, starts a second idemproxy with a `listen ... tls`
     listener and an nginx `listen ... ssl` proxy with the same certificate
     and worker count, in front of the same upstream, and runs, for
     BENCH_TLS_DURATION (8) seconds each: "TLS full handshakes"
     (BENCH_TLS_FULL_CLIENTS (4) parallel `openssl s_time -new`: a new
     connection, a full TLS 1.3 handshake and one GET each), "TLS handshakes,
     wrk" (wrk with `Connection: close`: a new connection per request, on
     which wrk offers its previous session, so mostly resumed handshakes) and
     "TLS keep-alive GET" (wrk), at BENCH_TLS_CONNECTIONS (50); if idemproxy
     does not start with TLS or does not speak it, its TLS rows are marked as
     not run and the rest goes on;
  4. prints a table and writes it to BENCH_OUT (build/bench-results.md).

Environment (defaults in brackets): IDEMPROXY_BIN [build/idemproxy],
BENCH_DURATION [10] seconds per wrk run, BENCH_WORKERS [cores] (idemproxy `workers`
and nginx `worker_processes`), BENCH_CONNECTIONS ["50 500"], BENCH_THREADS [2],
BENCH_IDLE_CONNS [10000] (0 skips the memory step), BENCH_OUT
[build/bench-results.md], REDIS_BIN [redis-server], NGINX_BIN [nginx],
WRK_BIN [wrk], BENCH_KEEP_TMP [0] (1 keeps the temporary directory),
BENCH_SCENARIOS ["get post unique replay replicated sealed cluster tls"] (a subset runs
only those; "replicated": unique keys through a second idemproxy with
`redis_min_replicas 1 50ms`, on a second Redis with one replica; "sealed":
unique keys and replays through a third idemproxy with
`record_encryption_key_file`, on the same Redis; "cluster": unique keys and
replays through a fourth idemproxy with `redis_cluster`, on a Redis Cluster of
three primaries; REDIS_CLI_BIN [redis-cli] creates it),
BENCH_TLS_CONNECTIONS ["50"], BENCH_TLS_DURATION [8, at most BENCH_DURATION],
BENCH_TLS_FULL_CLIENTS [4], BENCH_ONLY [] ("tls": only the TLS rows, no
idle-connection step, no plain proxies; the same as BENCH_SCENARIOS=tls
BENCH_IDLE_CONNS=0), OPENSSL_BIN [openssl].

Exit status: 0 when the measurement ran (whatever the numbers), 1 when
something failed to start, a sanity check failed, or idemproxy died during
the run. Every process it starts is stopped by PID.
"""

import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def env(name, default):
    v = os.environ.get(name, "")
    return v if v != "" else default


IDEMPROXY_BIN = env("IDEMPROXY_BIN", os.path.join(ROOT, "build", "idemproxy"))
DURATION = int(env("BENCH_DURATION", "10"))
WORKERS = int(env("BENCH_WORKERS", str(os.cpu_count() or 1)))
CONNECTIONS = [int(c) for c in env("BENCH_CONNECTIONS", "50 500").split()]
THREADS = int(env("BENCH_THREADS", "2"))
IDLE_CONNS = int(env("BENCH_IDLE_CONNS", "10000"))
OUT = env("BENCH_OUT", os.path.join(ROOT, "build", "bench-results.md"))
REDIS_BIN = env("REDIS_BIN", "redis-server")
NGINX_BIN = env("NGINX_BIN", "nginx")
WRK_BIN = env("WRK_BIN", "wrk")
# The paced rows: unique keys and replays at a modest fixed rate (~3k
# requests/s, where most deployments live), not at saturation.
PACED_UNIQUE = "POST unique key, paced"
PACED_REPLAY = "POST replay, paced"
PACED_CONNECTIONS = int(env("BENCH_PACED_CONNECTIONS", "10"))
PACED_DELAY_MS = int(env("BENCH_PACED_DELAY_MS", "3"))
KEEP_TMP = env("BENCH_KEEP_TMP", "0") == "1"
SCENARIOS = env("BENCH_SCENARIOS",
                "get post unique replay replicated sealed cluster peer tls").replace(
    ",", " ").split()
TLS_CONNECTIONS = [int(c) for c in env("BENCH_TLS_CONNECTIONS", "50").split()]
TLS_DURATION = int(env("BENCH_TLS_DURATION", str(min(DURATION, 8))))
TLS_FULL_CLIENTS = int(env("BENCH_TLS_FULL_CLIENTS", "4"))
OPENSSL_BIN = env("OPENSSL_BIN", "openssl")
ONLY = env("BENCH_ONLY", "")
if ONLY == "tls":
    SCENARIOS = ["tls"]
    IDLE_CONNS = 0
elif ONLY:
    raise SystemExit(f"bench: BENCH_ONLY={ONLY!r}: only \"tls\" is known")
# nginx keeps as many idle upstream connections per worker as there are
# clients (SPEC §8.1: with fewer it reconnects under load and loses ~40%).
NGINX_KEEPALIVE = max(CONNECTIONS + TLS_CONNECTIONS)
PLAIN_SCENARIOS = ("get", "post", "unique", "replay", "replicated", "sealed", "cluster", "peer")
# The replicated row: a second idemproxy with redis_min_replicas 1, on a
# second Redis with one replica of its own.
REPLICATED = "POST unique key, redis_min_replicas 1"
# The sealed rows: a third idemproxy with record_encryption_key_file.
SEALED_UNIQUE = "POST unique key, sealed records"
SEALED_REPLAY = "POST replay, sealed records"
# The cluster rows: a fourth idemproxy with redis_cluster, on three primaries.
CLUSTER_UNIQUE = "POST unique key, 3-primary cluster"
CLUSTER_REPLAY = "POST replay, 3-primary cluster"
# The peer rows: the same job done inside the application (tests/bench/peer:
# Express with @node-idempotency/core, `npm ci` there by `make bench`), on
# idemproxy's Redis, so that both Redis bills come from one run.
PEER_DIR = os.path.join(HERE, "peer")
NODE_BIN = env("NODE_BIN", "node")
PEER_UNIQUE = "POST unique key, in-process peer"
PEER_REPLAY = "POST replay, in-process peer"
PEER_PACED_UNIQUE = "POST unique key, in-process peer, paced"
PEER_PACED_REPLAY = "POST replay, in-process peer, paced"
PEER_ROWS = (PEER_UNIQUE, PEER_REPLAY, PEER_PACED_UNIQUE, PEER_PACED_REPLAY)
PACED_ROWS = (PACED_UNIQUE, PACED_REPLAY, PEER_PACED_UNIQUE, PEER_PACED_REPLAY)
BODY = b'{"amount":100}'


class BenchError(Exception):
    """Something failed to start or a sanity check failed: exit 1."""


def say(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def find_bin(name, extra=("/usr/sbin", "/sbin", "/usr/local/sbin")):
    if os.sep in name:
        return name if os.access(name, os.X_OK) else None
    path = shutil.which(name)
    if path:
        return path
    for d in extra:
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            return p
    return None


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def render(template, out_path, **values):
    with open(os.path.join(HERE, template)) as f:
        text = f.read()
    for k, v in values.items():
        text = text.replace(f"@{k}@", str(v))
    left = [w for line in text.splitlines() if not line.lstrip().startswith("#")
            for w in re.findall(r"@[A-Z_]+@", line)]
    if left:
        raise BenchError(f"{template}: placeholders left unfilled: {left}")
    with open(out_path, "w") as f:
        f.write(text)
    return out_path


def tail(path, n=20):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


class Procs:
    """The processes started by the benchmark, stopped by PID in reverse."""

    def __init__(self):
        self.procs = []  # (name, Popen)

    def start(self, name, argv, log_path, port, wait=10.0):
        log = open(log_path, "ab")
        try:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        self.procs.append((name, p))
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if p.poll() is not None:
                raise BenchError(f"{name} exited with status {p.returncode} at start:\n"
                                 f"{tail(log_path)}")
            if port_open(port):
                return p
            time.sleep(0.05)
        raise BenchError(f"{name} did not listen on 127.0.0.1:{port} within {wait:.0f}s:\n"
                         f"{tail(log_path)}")

    @staticmethod
    def stop(p, timeout=10.0):
        if p.poll() is not None:
            return
        try:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        except ProcessLookupError:
            pass

    def stop_all(self):
        while self.procs:
            _, p = self.procs.pop()
            self.stop(p)


# ---- a little HTTP/1.1 client for the sanity checks ------------------------

def http(port, method, path, headers=None, body=b"", timeout=5.0):
    """One request on a fresh connection: (status, {lower-name: value}, body)."""
    hdrs = {"Host": f"127.0.0.1:{port}", "Connection": "close"}
    hdrs.update(headers or {})
    if body or method in ("POST", "PUT", "PATCH"):
        hdrs["Content-Length"] = str(len(body))
    req = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(req.encode() + b"\r\n" + body)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    h = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        h[k.strip().lower()] = v.strip()
    return status, h, rest


def redis_cmd(port, *args):
    """One RESP command, the reply's first line (enough for DBSIZE / PING)."""
    msg = f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(msg.encode())
        return s.recv(4096).decode().split("\r\n")[0]


def redis_info(port, section):
    """INFO SECTION as text."""
    return redis_bulk(port, "INFO", section)


def redis_bulk(port, *args):
    """A command whose reply is one bulk string (INFO, CLUSTER INFO), as text."""
    msg = (f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(msg)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            head, _, rest = data.partition(b"\r\n")
            if head.startswith(b"$") and len(rest) >= int(head[1:]) + 2:
                break
    return data.decode(errors="replace")


def redis_commandstats(ports):
    """INFO commandstats as {command: (calls, usec)}, summed over ports."""
    out = {}
    for port in ports:
        for m in re.finditer(r"cmdstat_([a-z|_]+):calls=(\d+),usec=(\d+)",
                             redis_info(port, "commandstats")):
            calls, usec = out.get(m.group(1), (0, 0))
            out[m.group(1)] = (calls + int(m.group(2)), usec + int(m.group(3)))
    return out


def redis_dbsize(ports):
    return sum(int(redis_cmd(port, "DBSIZE")[1:]) for port in ports)


def start_cluster(procs, redis, tmp, n=3):
    """n primaries (no replicas) joined by redis-cli --cluster create; their ports."""
    ports = []
    while len(ports) < n:
        port = free_port()
        if port + 10000 > 65535 or port in ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))  # the cluster bus
            except OSError:
                continue
        d = os.path.join(tmp, f"cluster-{port}")
        os.makedirs(d)
        procs.start(f"redis (cluster node {len(ports) + 1})",
                    [redis, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--dir", d, "--daemonize", "no",
                     "--cluster-enabled", "yes", "--cluster-config-file", f"{d}/nodes.conf",
                     "--logfile", os.path.join(d, "redis.log")],
                    os.path.join(d, "redis.out"), port)
        ports.append(port)
    cli = find_bin(env("REDIS_CLI_BIN", "redis-cli"))
    if not cli:
        raise BenchError("redis-cli not found (apt-get install redis-tools)")
    cp = subprocess.run([cli, "--cluster", "create"] + [f"127.0.0.1:{p}" for p in ports] +
                        ["--cluster-replicas", "0", "--cluster-yes"],
                        capture_output=True, text=True, timeout=60)
    if cp.returncode != 0:
        raise BenchError(f"redis-cli --cluster create failed:\n{cp.stdout}{cp.stderr}")
    deadline = time.monotonic() + 20
    while not all("cluster_state:ok" in redis_bulk(p, "CLUSTER", "INFO") for p in ports):
        if time.monotonic() > deadline:
            raise BenchError("the cluster did not reach cluster_state:ok")
        time.sleep(0.1)
    return ports


def commandstats_per_request(before, after, requests):
    """{command: (calls per request, usec per call)} for what ran meanwhile."""
    out = {}
    for cmd, (calls, usec) in after.items():
        c0, u0 = before.get(cmd, (0, 0))
        if calls - c0 > 0 and cmd not in ("info", "dbsize", "ping"):
            out[cmd] = ((calls - c0) / requests, (usec - u0) / (calls - c0))
    return out


# ---- TLS ----------------------------------------------------------------------

def make_cert(openssl, tmp):
    """A self-signed P-256 certificate for localhost and 127.0.0.1; key mode 0600."""
    cert = os.path.join(tmp, "tls-cert.pem")
    key = os.path.join(tmp, "tls-key.pem")
    argv = [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", key, "-out", cert, "-days", "30", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"]
    old = os.umask(0o077)
    try:
        cp = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=30)
    finally:
        os.umask(old)
    if cp.returncode != 0:
        raise BenchError(f"openssl req failed: {cp.stdout.strip()}")
    os.chmod(key, 0o600)
    return cert, key


def tls_probe(port, cafile, tls12=False, path="/get", timeout=5.0):
    """Two GETs over TLS, each on its own connection, verifying the certificate
    (name localhost) and offering ALPN http/1.1; the second offers the session
    of the first. Returns status, body, version, cipher, ALPN and whether the
    second handshake was a resumption. tls12: TLS 1.2 only."""
    import ssl
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.set_alpn_protocols(["http/1.1"])
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    out = {}
    session = None
    for attempt in (1, 2):
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
                # Read before the peer's close: afterwards version() is None.
                negotiated = (s.version(), s.cipher()[0], s.selected_alpn_protocol(),
                              s.session_reused)
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n"
                          f"Connection: close\r\n\r\n".encode())
                data = b""
                while True:
                    try:
                        chunk = s.recv(65536)
                    except ssl.SSLZeroReturnError:
                        break
                    if not chunk:
                        break
                    data += chunk
                if attempt == 1:
                    session = s.session  # the ticket arrived with the response (TLS 1.3)
                    head, _, body = data.partition(b"\r\n\r\n")
                    out["status"] = int(head.split(b" ", 2)[1]) if head else None
                    out["body"] = body
                    out["version"], out["cipher"], out["alpn"], _ = negotiated
                else:
                    out["resumed"] = negotiated[3]
    return out


def f_tls(probes):
    if not probes:
        return "—"
    return "; ".join(f"{p['version']} {p['cipher']}, ALPN {p['alpn'] or 'none'}, "
                     f"resumption {'yes' if p.get('resumed') else 'no'}" for p in probes)


# ---- wrk --------------------------------------------------------------------

UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def to_ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        return None
    return float(m.group(1)) * UNITS_MS[m.group(2)]


def parse_wrk(out):
    r = {"rps": None, "p50": None, "p99": None, "requests": None, "non2xx": 0,
         "socket_errors": {}}
    m = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    if m:
        r["rps"] = float(m.group(1))
    m = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    if m:
        r["p50"] = to_ms(m.group(1))
    m = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    if m:
        r["p99"] = to_ms(m.group(1))
    m = re.search(r"^\s+(\d+) requests in", out, re.M)
    if m:
        r["requests"] = int(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if m:
        r["non2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        r["socket_errors"] = {k: int(v) for k, v in
                              zip(("connect", "read", "write", "timeout"), m.groups()) if int(v)}
    return r


def run_wrk(wrk, url, conns, script, extra_env, log, headers=(), duration=None):
    duration = duration or DURATION
    argv = [wrk, f"-t{min(THREADS, conns)}", f"-c{conns}", f"-d{duration}s", "--latency",
            "--timeout", "5s"]
    for h in headers:
        argv += ["-H", h]
    if script:
        argv += ["-s", os.path.join(HERE, script)]
    argv.append(url)
    e = dict(os.environ)
    e.update(extra_env)
    try:
        cp = subprocess.run(argv, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            timeout=duration + 60, text=True)
        out = cp.stdout
    except subprocess.TimeoutExpired as ex:
        out = (ex.stdout or b"").decode(errors="replace") if isinstance(ex.stdout, bytes) \
            else (ex.stdout or "")
        out += "\n(wrk timed out)\n"
    log.write(f"$ {' '.join(argv)}\n{out}\n")
    log.flush()
    r = parse_wrk(out)
    if r["rps"] is None:
        r["failed"] = out.strip().splitlines()[-1] if out.strip() else "no output"
    return r


def run_s_time(openssl, port, clients, duration, log):
    """`clients` parallel `openssl s_time -new -tls1_3`: each opens connection
    after connection, with a full handshake (no session offered) and one
    `GET /get` (HTTP/1.0) on each, for `duration` seconds. Returns a wrk-like
    result: connections per second over the wall-clock time of the run."""
    argv = [openssl, "s_time", "-connect", f"127.0.0.1:{port}", "-new", "-tls1_3",
            "-time", str(duration), "-www", "/get"]
    t0 = time.monotonic()
    ps = [subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True) for _ in range(clients)]
    outs = []
    for p in ps:
        try:
            out, _ = p.communicate(timeout=duration + 60)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
            out += "\n(s_time timed out)\n"
        outs.append((p.returncode, out))
    wall = time.monotonic() - t0
    total = 0
    failed = None
    for rc, out in outs:
        log.write(f"$ {' '.join(argv)}\n{out}\n")
        m = re.search(r"^(\d+) connections in [\d.]+s;", out, re.M)
        if m and rc == 0:
            total += int(m.group(1))
        else:
            last = out.strip().splitlines()
            failed = f"s_time exited {rc}: {last[-1] if last else 'no output'}"
    log.write(f"# {clients} s_time clients: {total} connections in {wall:.2f} s\n\n")
    log.flush()
    r = {"rps": total / wall if total and not failed else None, "p50": None, "p99": None,
         "requests": total, "non2xx": 0, "socket_errors": {}}
    if failed:
        r["failed"] = failed
    return r


# ---- formatting --------------------------------------------------------------

def f_rps(v):
    return "—" if v is None else f"{v:,.0f}"


def f_ms(v):
    if v is None:
        return "—"
    return f"{v * 1000:.0f}µs" if v < 1 else f"{v:.2f}ms"


def f_ratio(a, b):
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}"


def f_cpu(r):
    if r is None or r.get("cpu_us") is None:
        return "—"
    return f"{r['cpu_us']:.1f}"


def f_err(r):
    if r is None:
        return "—"
    if r.get("skipped"):
        return "— (not run: " + r["skipped"] + ")"
    parts = [str(r["non2xx"])]
    se = r.get("socket_errors") or {}
    if se:
        parts.append(", ".join(f"{k} {v}" for k, v in se.items()))
    if r.get("failed"):
        parts.append("wrk failed: " + r["failed"])
    return "; ".join(parts)


def machine_info():
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/loadavg") as f:
            load = " ".join(f.read().split()[:3])
    except OSError:
        load = "?"
    return {"nproc": os.cpu_count(), "cpu": model,
            "kernel": f"{platform.system()} {platform.release()}", "load": load}


def proc_tree(pid):
    """pid and its children (nginx: the master and its workers)."""
    pids = [pid]
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                pids.append(int(d))
        except (OSError, IndexError, ValueError):
            pass
    return pids


def cpu_seconds(pids):
    """User + system CPU time consumed so far by these processes."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


def version_of(argv):
    try:
        cp = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, timeout=5)
        return cp.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "?"


# ---- the benchmark -------------------------------------------------------------

def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def main():
    redis = find_bin(REDIS_BIN)
    nginx = find_bin(NGINX_BIN)
    wrk = find_bin(WRK_BIN)
    for name, path in (("redis-server", redis), ("nginx", nginx), ("wrk", wrk)):
        if not path:
            raise BenchError(f"{name} not found (apt-get install redis-server nginx wrk)")
    if not os.access(IDEMPROXY_BIN, os.X_OK):
        raise BenchError(f"{IDEMPROXY_BIN} not found: run make first")

    nofile = raise_nofile()  # inherited by idemproxy and idle_conns.py
    if IDLE_CONNS and nofile < IDLE_CONNS + 100:
        say(f"RLIMIT_NOFILE is {nofile}: the idle-connection step needs "
            f"{IDLE_CONNS + 100}; it may fail")

    info = machine_info()
    tmp = tempfile.mkdtemp(prefix="idemproxy-bench.")
    procs = Procs()
    ok = False
    problems = []
    try:
        run_id = f"{int(time.time())}{os.getpid()}"
        user_line = ""
        if os.geteuid() == 0:
            # nginx started by root switches its workers to `nobody`, who
            # cannot enter the private temporary directory: keep them as root.
            user_line = "user root;"

        redis_port = free_port()
        redis_proc = procs.start("redis-server",
                    [redis, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--dir", tmp, "--daemonize", "no",
                     "--logfile", os.path.join(tmp, "redis.log")],
                    os.path.join(tmp, "redis.out"), redis_port)

        up_port = free_port()
        conf = render("nginx-upstream.conf.in", os.path.join(tmp, "nginx-upstream.conf"),
                      DIR=tmp, PORT=up_port, USER_LINE=user_line)
        upstream_proc = procs.start("nginx (upstream)",
                    [nginx, "-p", tmp, "-e", os.path.join(tmp, "nginx-upstream.error.log"),
                     "-c", conf, "-g", f"daemon off; pid {tmp}/nginx-upstream.pid;"],
                    os.path.join(tmp, "nginx-upstream.out"), up_port)

        plain = IDLE_CONNS > 0 or any(sc in SCENARIOS for sc in PLAIN_SCENARIOS)
        with_tls = "tls" in SCENARIOS
        idem = nginx_proxy = idem_tls = nginx_tls = openssl = idem_rep = idem_seal = None
        idem_seal_port = None
        rep_redis_port = idem_rep_port = None
        rep_procs = {}
        idem_cl = idem_cl_port = None
        peer = peer_port = None
        peer_skip = None  # why the peer rows were not run
        cl_ports = []
        idem_port = px_port = idem_tls_port = ngx_tls_port = None
        idem_log = os.path.join(tmp, "idemproxy.log")
        idem_tls_log = os.path.join(tmp, "idemproxy-tls.log")
        idem_tls_skip = None  # why idemproxy's TLS rows were not run
        tls_info = {}  # "idem" / "nginx" -> tls_probe() result

        if plain:
            idem_port = free_port()
            conf = render("idemproxy.conf.in", os.path.join(tmp, "idemproxy.conf"),
                          DIR=tmp, PORT=idem_port, UPSTREAM_PORT=up_port, REDIS_PORT=redis_port,
                          WORKERS=WORKERS)
            idem = procs.start("idemproxy", [IDEMPROXY_BIN, "-c", conf],
                               os.path.join(tmp, "idemproxy.out"), idem_port)

            px_port = free_port()
            conf = render("nginx-proxy.conf.in", os.path.join(tmp, "nginx-proxy.conf"),
                          DIR=tmp, PORT=px_port, UPSTREAM_PORT=up_port, WORKERS=WORKERS,
                          USER_LINE=user_line, KEEPALIVE=NGINX_KEEPALIVE)
            nginx_proxy = procs.start("nginx (proxy)",
                        [nginx, "-p", tmp, "-e", os.path.join(tmp, "nginx-proxy.error.log"),
                         "-c", conf, "-g", f"daemon off; pid {tmp}/nginx-proxy.pid;"],
                        os.path.join(tmp, "nginx-proxy.out"), px_port)
            if "replicated" in SCENARIOS:
                rep_redis_port, rep_replica_port = free_port(), free_port()
                rep_procs = {}
                for label, port, extra in (("redis (replicated primary)", rep_redis_port, []),
                                           ("redis (replica)", rep_replica_port,
                                            ["--replicaof", "127.0.0.1", str(rep_redis_port)])):
                    d = os.path.join(tmp, f"redis-{port}")
                    os.makedirs(d)
                    rep_procs[port] = procs.start(label, [redis, "--port", str(port), "--bind", "127.0.0.1",
                                        "--save", "", "--appendonly", "no", "--dir", d,
                                        "--daemonize", "no", "--logfile",
                                        os.path.join(d, "redis.log")] + extra,
                                os.path.join(d, "redis.out"), port)
                deadline = time.monotonic() + 10
                while "state=online" not in redis_info(rep_redis_port, "replication"):
                    if time.monotonic() > deadline:
                        raise BenchError("the replica did not come online")
                    time.sleep(0.1)
                idem_rep_port = free_port()
                conf = render("idemproxy.conf.in", os.path.join(tmp, "idemproxy-rep.conf"),
                              DIR=tmp + "/rep", PORT=idem_rep_port, UPSTREAM_PORT=up_port,
                              REDIS_PORT=rep_redis_port, WORKERS=WORKERS)
                os.makedirs(tmp + "/rep")
                with open(conf, "a") as f:
                    f.write("redis_min_replicas 1 50ms\n")
                idem_rep = procs.start("idemproxy (redis_min_replicas 1)",
                                       [IDEMPROXY_BIN, "-c", conf],
                                       os.path.join(tmp, "idemproxy-rep.out"), idem_rep_port)
            if "sealed" in SCENARIOS:
                idem_seal_port = free_port()
                os.makedirs(tmp + "/sealed")
                key_path = os.path.join(tmp, "sealed", "record-key")
                with open(os.open(key_path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
                    f.write(os.urandom(32).hex() + "\n")
                conf = render("idemproxy.conf.in", os.path.join(tmp, "idemproxy-sealed.conf"),
                              DIR=tmp + "/sealed", PORT=idem_seal_port, UPSTREAM_PORT=up_port,
                              REDIS_PORT=redis_port, WORKERS=WORKERS)
                with open(conf, "a") as f:
                    f.write(f"record_encryption_key_file {key_path}\n")
                idem_seal = procs.start("idemproxy (sealed records)",
                                        [IDEMPROXY_BIN, "-c", conf],
                                        os.path.join(tmp, "idemproxy-sealed.out"), idem_seal_port)
            if "cluster" in SCENARIOS:
                cl_ports = start_cluster(procs, redis, tmp)
                idem_cl_port = free_port()
                os.makedirs(tmp + "/cluster")
                conf = render("idemproxy.conf.in", os.path.join(tmp, "idemproxy-cluster.conf"),
                              DIR=tmp + "/cluster", PORT=idem_cl_port, UPSTREAM_PORT=up_port,
                              REDIS_PORT=redis_port, WORKERS=WORKERS)
                with open(conf) as f:
                    text = f.read().replace(f"redis 127.0.0.1:{redis_port}\n",
                                            "redis_cluster " + " ".join(
                                                f"127.0.0.1:{p}" for p in cl_ports) + "\n")
                with open(conf, "w") as f:
                    f.write(text)
                idem_cl = procs.start("idemproxy (redis_cluster)", [IDEMPROXY_BIN, "-c", conf],
                                      os.path.join(tmp, "idemproxy-cluster.out"), idem_cl_port)
            if "peer" in SCENARIOS:
                node = find_bin(NODE_BIN)
                if not node or not os.path.isdir(os.path.join(PEER_DIR, "node_modules")):
                    peer_skip = (f"node or {PEER_DIR}/node_modules missing (`make bench` runs "
                                 "npm ci there)")
                    problems.append(f"in-process peer rows not run: {peer_skip}")
                else:
                    peer_port = free_port()
                    peer = procs.start("in-process peer (node)",
                                       ["env", f"PORT={peer_port}", f"REDIS_PORT={redis_port}",
                                        node, os.path.join(PEER_DIR, "app.js")],
                                       os.path.join(tmp, "peer.log"), peer_port)
            say(f"redis :{redis_port}, upstream nginx :{up_port}, idemproxy :{idem_port} "
                f"(pid {idem.pid}), nginx proxy :{px_port}; files in {tmp}")

        if with_tls:
            openssl = find_bin(OPENSSL_BIN)
            if not openssl:
                raise BenchError("openssl not found (apt-get install openssl)")
            cert, _ = make_cert(openssl, tmp)
            ngx_tls_port = free_port()
            conf = render("nginx-tls.conf.in", os.path.join(tmp, "nginx-tls.conf"),
                          DIR=tmp, PORT=ngx_tls_port, UPSTREAM_PORT=up_port, WORKERS=WORKERS,
                          USER_LINE=user_line, KEEPALIVE=NGINX_KEEPALIVE)
            nginx_tls = procs.start("nginx (TLS proxy)",
                        [nginx, "-p", tmp, "-e", os.path.join(tmp, "nginx-tls.error.log"),
                         "-c", conf, "-g", f"daemon off; pid {tmp}/nginx-tls.pid;"],
                        os.path.join(tmp, "nginx-tls.out"), ngx_tls_port)
            idem_tls_port = free_port()
            conf = render("idemproxy-tls.conf.in", os.path.join(tmp, "idemproxy-tls.conf"),
                          DIR=tmp, PORT=idem_tls_port, UPSTREAM_PORT=up_port,
                          REDIS_PORT=redis_port, WORKERS=WORKERS)
            try:
                idem_tls = procs.start("idemproxy (TLS)", [IDEMPROXY_BIN, "-c", conf],
                                       os.path.join(tmp, "idemproxy-tls.out"), idem_tls_port)
            except BenchError as e:
                lines_ = [ln for ln in str(e).splitlines()[1:] if ln.strip()]
                idem_tls_skip = "idemproxy did not start with TLS" + \
                    (f": {lines_[-1].strip()}" if lines_ else "")
                say(f"{idem_tls_skip}; its TLS rows are marked as not run")
                problems.append(idem_tls_skip)
            say(f"TLS: nginx :{ngx_tls_port}, idemproxy :{idem_tls_port} "
                f"({'pid ' + str(idem_tls.pid) if idem_tls else 'not running'}); "
                f"certificate {cert}")

        # Sanity: both proxies answer, idemproxy stores and replays.
        if plain:
            for name, port in (("idemproxy", idem_port), ("nginx proxy", px_port)):
                st, _, body = http(port, "GET", "/get")
                if st != 200 or body != b"ok":
                    raise BenchError(f"{name}: GET /get answered {st} {body[:80]!r}")
                st, _, body = http(port, "POST", "/orders", {"Content-Type": "application/json"},
                                   BODY)
                if st != 201 or body != b"created":
                    raise BenchError(f"{name}: POST /orders answered {st} {body[:80]!r}")
            key_hdr = {"Content-Type": "application/json", "Idempotency-Key": f"sanity-{run_id}"}
            st1, h1, _ = http(idem_port, "POST", "/orders", key_hdr, BODY)
            st2, h2, b2 = http(idem_port, "POST", "/orders", key_hdr, BODY)
            if st1 != 201 or st2 != 201 or h2.get("idempotent-replayed") != "true" \
                    or "idempotent-replayed" in h1:
                raise BenchError(f"idemproxy does not replay: first {st1}, second {st2} "
                                 f"{h2} {b2[:200]!r}\n{tail(idem_log)}")
        if with_tls:
            # Over TLS: the certificate verifies for localhost, GET /get
            # answers "ok"; the negotiated parameters go into the report.
            tls_targets = [("nginx", ngx_tls_port)] + ([("idem", idem_tls_port)] if idem_tls
                                                        else [])
            for tname, port in tls_targets:
                who = "idemproxy" if tname == "idem" else "nginx"
                try:
                    probes = [tls_probe(port, cert), tls_probe(port, cert, tls12=True)]
                    for p in probes:
                        if p["status"] != 200 or p["body"] != b"ok":
                            raise BenchError(f"{who} over {p['version']}: GET /get answered "
                                             f"{p['status']} {p['body'][:80]!r}")
                except (OSError, BenchError) as e:  # ssl.SSLError is an OSError
                    if tname != "idem":
                        raise BenchError(f"{who} over TLS: {e}")
                    # An idemproxy without working TLS: its rows are not run.
                    idem_tls_skip = f"idemproxy's TLS listener failed the check: {e}"
                    say(f"{idem_tls_skip}; its TLS rows are marked as not run\n"
                        f"{tail(idem_tls_log)}")
                    problems.append(idem_tls_skip)
                    procs.stop(idem_tls)
                    idem_tls = None
                    continue
                tls_info[tname] = probes
                say(f"TLS {who}: {f_tls(probes)}")

        # 1. Memory per idle keep-alive connection (on a fresh process, before
        # the load runs have grown and fragmented its heap).
        idle = None
        if IDLE_CONNS > 0:
            say(f"opening {IDLE_CONNS} idle keep-alive connections to idemproxy")
            cp = subprocess.run([sys.executable, os.path.join(HERE, "idle_conns.py"),
                                 str(idem_port), str(idem.pid), str(IDLE_CONNS), "/get"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                timeout=180)
            if cp.returncode == 0:
                idle = json.loads(cp.stdout)
                say(f"idle connections: {idle}")
                if idle["count"] < IDLE_CONNS or idle["open_after"] < idle["count"]:
                    problems.append(f"idle connections: {idle['count']} of {IDLE_CONNS} "
                                    f"established, {idle['open_after']} still open after 1 s, "
                                    f"errors {idle['errors']}")
            else:
                problems.append(f"idle-connection step failed: {cp.stderr.strip()}")
                say(problems[-1])
            if idem.poll() is not None:
                raise BenchError(f"idemproxy died during the idle-connection step "
                                 f"(status {idem.returncode}):\n{tail(idem_log)}")
            time.sleep(1.0)  # let the closes settle

        # 2. Load. (name, path, wrk script, wrk headers, with nginx, selector,
        # TLS, connection counts)
        scenarios = [
            ("GET passthrough", "/get", None, (), True, "get", False, CONNECTIONS),
            ("POST passthrough (no key)", "/orders", "post_nokey.lua", (), True, "post", False,
             CONNECTIONS),
            ("POST unique key (claim+forward+store)", "/orders", "post_unique.lua", (), False,
             "unique", False, CONNECTIONS),
            ("POST replay (same key)", "/orders", "post_replay.lua", (), False, "replay", False,
             CONNECTIONS),
            (PACED_UNIQUE, "/orders", "post_unique.lua", (), False, "unique", False,
             [PACED_CONNECTIONS]),
            (REPLICATED, "/orders", "post_unique.lua", (), False, "replicated", False,
             CONNECTIONS),
            (PACED_REPLAY, "/orders", "post_replay.lua", (), False, "replay", False,
             [PACED_CONNECTIONS]),
            (SEALED_UNIQUE, "/orders", "post_unique.lua", (), False, "sealed", False,
             CONNECTIONS),
            (SEALED_REPLAY, "/orders", "post_replay.lua", (), False, "sealed", False,
             CONNECTIONS),
            (CLUSTER_UNIQUE, "/orders", "post_unique.lua", (), False, "cluster", False,
             CONNECTIONS),
            (CLUSTER_REPLAY, "/orders", "post_replay.lua", (), False, "cluster", False,
             CONNECTIONS),
            (PEER_UNIQUE, "/orders", "post_unique.lua", (), False, "peer", False, CONNECTIONS),
            (PEER_REPLAY, "/orders", "post_replay.lua", (), False, "peer", False, CONNECTIONS),
            (PEER_PACED_UNIQUE, "/orders", "post_unique.lua", (), False, "peer", False,
             [PACED_CONNECTIONS]),
            (PEER_PACED_REPLAY, "/orders", "post_replay.lua", (), False, "peer", False,
             [PACED_CONNECTIONS]),
            (f"TLS full handshakes (s_time -new, {TLS_FULL_CLIENTS} clients)", "/get", "s_time",
             (), True, "tls", True, [TLS_FULL_CLIENTS]),
            ("TLS handshakes, wrk (Connection: close)", "/get", None, ("Connection: close",),
             True, "tls", True, TLS_CONNECTIONS),
            ("TLS keep-alive GET", "/get", None, (), True, "tls", True, TLS_CONNECTIONS),
        ]
        scenarios = [sc for sc in scenarios if sc[5] in SCENARIOS]
        results = {}  # (scenario, conns) -> {"idem": r, "nginx": r}
        unique_2xx = 0
        wrk_log = open(os.path.join(tmp, "wrk.log"), "w")
        try:
            for name, path, script, headers, with_nginx, _, tls, conn_list in scenarios:
                for conns in conn_list:
                    extra = {}
                    if name in PACED_ROWS:
                        extra["BENCH_DELAY_MS"] = str(PACED_DELAY_MS)
                    if script == "post_unique.lua":
                        # the sealed rows share the plain rows' Redis: keys of their own
                        extra["BENCH_RUN_ID"] = f"{run_id}-c{conns}" + (
                            "-sealed" if name == SEALED_UNIQUE else
                            "-peer" if name in PEER_ROWS else "")
                    if script == "post_replay.lua":
                        key = f"bench-replay-{run_id}-c{conns}"
                        extra["BENCH_REPLAY_KEY"] = key + {
                            PACED_REPLAY: "-paced", SEALED_REPLAY: "-sealed",
                            CLUSTER_REPLAY: "-cluster", PEER_REPLAY: "-peer",
                            PEER_PACED_REPLAY: "-peer-paced"}.get(name, "")
                        key = extra["BENCH_REPLAY_KEY"]
                        hdr = {"Content-Type": "application/json", "Idempotency-Key": key}
                        warm_port = {SEALED_REPLAY: idem_seal_port, CLUSTER_REPLAY: idem_cl_port,
                                     PEER_REPLAY: peer_port,
                                     PEER_PACED_REPLAY: peer_port}.get(name, idem_port)
                        st, h, _ = (http(warm_port, "POST", "/orders", hdr, BODY) if warm_port
                                    else (201, {}, b""))
                        if st != 201 or "idempotent-replayed" in h:
                            problems.append(f"replay warm-up answered {st} {h}")
                    row = {}
                    # (tname, scheme, port, the proxy's process, its log)
                    if tls:
                        targets = [("idem", "https", idem_tls_port, idem_tls, idem_tls_log),
                                   ("nginx", "https", ngx_tls_port, nginx_tls, None)]
                    elif name == REPLICATED:
                        targets = [("idem", "http", idem_rep_port, idem_rep,
                                    os.path.join(tmp, "rep", "idemproxy.log"))]
                    elif name in (SEALED_UNIQUE, SEALED_REPLAY):
                        targets = [("idem", "http", idem_seal_port, idem_seal,
                                    os.path.join(tmp, "sealed", "idemproxy.log"))]
                    elif name in (CLUSTER_UNIQUE, CLUSTER_REPLAY):
                        targets = [("idem", "http", idem_cl_port, idem_cl,
                                    os.path.join(tmp, "cluster", "idemproxy.log"))]
                    elif name in PEER_ROWS:
                        targets = [("idem", "http", peer_port, peer,
                                    os.path.join(tmp, "peer.log"))]
                    else:
                        targets = [("idem", "http", idem_port, idem, idem_log)]
                        if with_nginx:
                            targets.append(("nginx", "http", px_port, nginx_proxy, None))
                    for tname, scheme, port, proc, plog in targets:
                        if tname == "idem" and proc is None:
                            row[tname] = {"skipped": (peer_skip if name in PEER_ROWS
                                                      else idem_tls_skip) or "not started"}
                            continue
                        pids = [proc.pid] if tname == "idem" and name not in PEER_ROWS \
                            else proc_tree(proc.pid)
                        cpu0 = cpu_seconds(pids)
                        # Where the machine's CPU went (idemproxy's plain rows): the
                        # proxy, Redis, the upstream and wrk share the same cores.
                        cluster_row = name in (CLUSTER_UNIQUE, CLUSTER_REPLAY)
                        redis_pids = [rep_procs[rep_redis_port].pid] if name == REPLICATED \
                            else [p.pid for n, p in procs.procs if n.startswith("redis (cluster")] \
                            if cluster_row else [redis_proc.pid]
                        others = [("redis", redis_pids),
                                  ("upstream", proc_tree(upstream_proc.pid))]
                        others0 = {k: cpu_seconds(v) for k, v in others}
                        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                        say(f"{name}, {conns} connections, "
                            f"{'idemproxy' if tname == 'idem' else 'nginx'}: "
                            f"{TLS_DURATION if tls else DURATION}s")
                        keys_before = None
                        stats_ports = [rep_redis_port] if name == REPLICATED else cl_ports \
                            if cluster_row else [redis_port]
                        stats0 = redis_commandstats(stats_ports) if tname == "idem" and not tls \
                            else None
                        if script == "post_unique.lua" and tname == "idem":
                            keys_before = redis_dbsize(stats_ports)
                        if script == "s_time":
                            r = run_s_time(openssl, port, conns, TLS_DURATION, wrk_log)
                        else:
                            r = run_wrk(wrk, f"{scheme}://127.0.0.1:{port}{path}", conns,
                                        script, extra, wrk_log, headers,
                                        TLS_DURATION if tls else DURATION)
                        row[tname] = r
                        if r["requests"]:
                            r["cpu_us"] = (cpu_seconds(pids) - cpu0) * 1e6 / r["requests"]
                            children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                            r["budget"] = {k: (cpu_seconds(v) - others0[k]) * 1e6 / r["requests"]
                                           for k, v in others}
                            if stats0 is not None:
                                r["redis_cmds"] = commandstats_per_request(
                                    stats0, redis_commandstats(stats_ports), r["requests"])
                            r["budget"]["load generator"] = (
                                children1.ru_utime + children1.ru_stime
                                - children0.ru_utime - children0.ru_stime) * 1e6 / r["requests"]
                        say(f"  {f_rps(r['rps'])} req/s, p50 {f_ms(r['p50'])}, "
                            f"p99 {f_ms(r['p99'])}, non-2xx {f_err(r)}")
                        if keys_before is not None and r["requests"] is not None:
                            stored = redis_dbsize(stats_ports) - keys_before
                            ok_2xx = r["requests"] - r["non2xx"]
                            unique_2xx += ok_2xx
                            r["keys_stored"] = stored
                            say(f"  redis: {stored} new keys for {ok_2xx} 2xx responses")
                        if tname == "idem" and proc.poll() is not None:
                            raise BenchError(
                                f"idemproxy died during '{name}' at {conns} connections "
                                f"(status {proc.returncode}):\n{tail(plog, 40)}")
                        time.sleep(1.0)
                    results[(name, conns)] = row
        finally:
            wrk_log.close()

        # Problems worth a line.
        for (name, conns), row in results.items():
            for tname, r in row.items():
                if r.get("skipped"):
                    continue
                who = "idemproxy" if tname == "idem" else "nginx"
                if r.get("failed"):
                    problems.append(f"{name} c{conns} {who}: wrk failed: {r['failed']}")
                if r["non2xx"]:
                    problems.append(f"{name} c{conns} {who}: {r['non2xx']} non-2xx responses")
                if r["socket_errors"]:
                    problems.append(f"{name} c{conns} {who}: socket errors {r['socket_errors']}")
                if "keys_stored" in r:
                    ok_2xx = r["requests"] - r["non2xx"]
                    if r["keys_stored"] < ok_2xx:
                        problems.append(f"{name} c{conns}: {ok_2xx} 2xx responses but only "
                                        f"{r['keys_stored']} keys in Redis")

        log_lines = []
        for path, started in ((idem_log, idem), (idem_tls_log, idem_tls)):
            if started is None:
                continue
            try:
                with open(path, errors="replace") as f:
                    lines_ = [ln.rstrip("\n") for ln in f if ln.strip()]
            except OSError:
                lines_ = []
            if lines_:
                problems.append(f"idemproxy ({os.path.basename(path)}) logged {len(lines_)} "
                                f"line(s) at warn or above; first: {lines_[0]}")
            log_lines += lines_

        # 3. The report.
        lines = []
        lines.append("# idemproxy benchmark results")
        lines.append("")
        lines.append(f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
        lines.append(f"- machine: {info['nproc']} CPU(s), {info['cpu']}, {info['kernel']}, "
                     f"load average (1, 5, 15 min) at start {info['load']}, "
                     f"at end {machine_info()['load']}")
        lines.append(f"- idemproxy: {version_of([IDEMPROXY_BIN, '-v'])}, `workers {WORKERS}`; "
                     f"nginx proxy: {version_of([nginx, '-v'])}, "
                     f"`worker_processes {WORKERS}`; upstream: nginx, 1 worker")
        lines.append(f"- load: {version_of([wrk, '-v'])}, `-t{THREADS} --latency`, "
                     f"{DURATION} s per run; everything on 127.0.0.1 of this one machine")
        lines.append("")
        lines.append("| scenario | conns | idemproxy req/s | p50 | p99 | nginx req/s | p50 | p99 "
                     "| idemproxy/nginx | CPU µs/req idemproxy | CPU µs/req nginx "
                     "| non-2xx, errors (idemproxy) | non-2xx, errors (nginx) |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
        for name, _, _, _, _, _, _, conn_list in scenarios:
            for conns in conn_list:
                row = results.get((name, conns), {})
                i, n = row.get("idem"), row.get("nginx")
                lines.append("| " + " | ".join([
                    name, str(conns),
                    f_rps(i and i.get("rps")), f_ms(i and i.get("p50")),
                    f_ms(i and i.get("p99")),
                    f_rps(n and n.get("rps")), f_ms(n and n.get("p50")),
                    f_ms(n and n.get("p99")),
                    f_ratio(i and i.get("rps"), n and n.get("rps")),
                    f_cpu(i), f_cpu(n),
                    f_err(i), f_err(n) if n else "— (not run)"]) + " |")
        lines.append("")
        lines.append("CPU µs/req: user + system CPU time of the proxy's processes (idemproxy; "
                     "nginx master and workers) during the run divided by the requests wrk "
                     "counted; Redis and the upstream are not included.")
        lines.append("")
        if any(results.get((n, c), {}).get("idem", {}).get("rps")
               for n in PEER_ROWS for c in CONNECTIONS + [PACED_CONNECTIONS]):
            lines.append("In-process peer rows: no idemproxy; the Node.js app of "
                         "tests/bench/peer (Express, @node-idempotency/core with its Redis "
                         "adapter) answers the same requests itself, on the same Redis. Its "
                         "columns are the app's (its CPU includes the handler), and its unique "
                         "keys' completion is a plain SET, not owner-checked.")
            lines.append("")
        if with_tls:
            lines.append(
                "TLS: one self-signed ECDSA P-256 certificate for both proxies; idemproxy with "
                "its default tls_protocols, tls_ciphers and tls_ciphersuites, nginx with the same "
                "lists and session tickets. \"TLS full handshakes\": parallel `openssl s_time "
                "-new -tls1_3` clients (the conns column is their number), each opening "
                "connection after connection with a full handshake and one GET; req/s is "
                "connections per second, CPU µs/req is the proxy's CPU per connection. \"TLS "
                "handshakes, wrk\": wrk with `Connection: close`, a new TCP connection and "
                "handshake per request, on which wrk offers the session of its previous "
                "connection, so these are resumed handshakes where the proxy resumes (wrk's "
                "latency starts when the request is written, after the handshake). "
                f"{TLS_DURATION} s per TLS run. Negotiated (Python's ssl client, ALPN http/1.1 "
                "offered, a second connection offering the first one's session; TLS 1.3, then "
                "TLS 1.2 only):")
            lines.append("")
            lines.append(f"- idemproxy: {f_tls(tls_info.get('idem'))}"
                         + (f" ({idem_tls_skip})" if idem_tls_skip else ""))
            lines.append(f"- nginx: {f_tls(tls_info.get('nginx'))}")
            lines.append("")
        if any(sc in SCENARIOS for sc in ("unique", "replay")):
            lines.append("Ratios, idemproxy only (req/s over POST passthrough req/s at the "
                         "same connection count):")
            lines.append("")
            lines.append("| connections | unique-key POST / POST passthrough "
                         "| replay / POST passthrough |")
            lines.append("|---:|---:|---:|")
            for conns in CONNECTIONS:
                base = results.get(("POST passthrough (no key)", conns), {}).get("idem")
                uniq = results.get(("POST unique key (claim+forward+store)", conns),
                                   {}).get("idem")
                rep = results.get(("POST replay (same key)", conns), {}).get("idem")
                lines.append(f"| {conns} | {f_ratio(uniq and uniq['rps'], base and base['rps'])} "
                             f"| {f_ratio(rep and rep['rps'], base and base['rps'])} |")
            lines.append("")
        budget_rows = [(name, conns, results.get((name, conns), {}).get("idem"))
                       for name, _, _, _, _, _, tls, conn_list in scenarios if not tls
                       for conns in conn_list]
        budget_rows = [(n, c, r) for n, c, r in budget_rows if r and r.get("budget")]
        if budget_rows:
            lines.append("Where the CPU went in idemproxy's runs (µs of CPU per request, user + "
                         "system; every process shares the same cores, so a scenario's rate is "
                         "about cores / the sum):")
            lines.append("")
            lines.append("| scenario | conns | idemproxy | Redis | upstream nginx | wrk | sum |")
            lines.append("|---|---:|---:|---:|---:|---:|---:|")
            for name, conns, r in budget_rows:
                b = r["budget"]
                parts = [r["cpu_us"], b["redis"], b["upstream"], b["load generator"]]
                lines.append(f"| {name} | {conns} | "
                             + " | ".join(f"{v:.1f}" for v in parts)
                             + f" | {sum(parts):.1f} |")
            lines.append("")
        redis_rows = [(n, c, r) for n, c, r in budget_rows if r.get("redis_cmds")]
        if redis_rows:
            lines.append("What Redis paid per request (SPEC §8.1): its process CPU (user + "
                         "system, as `INFO cpu` counts it) per request, and from `INFO "
                         "commandstats` the commands per request with Redis' own µs per call "
                         "(commands run by a script are counted too, inside the script's "
                         "time). Paced rows: "
                         f"{PACED_CONNECTIONS} connections, each waiting {PACED_DELAY_MS} ms "
                         "between requests (a modest fixed rate).")
            lines.append("")
            lines.append("| scenario | conns | req/s | Redis CPU µs/req | commands per request "
                         "(µs per call) |")
            lines.append("|---|---:|---:|---:|---|")
            for name, conns, r in redis_rows:
                cmds = ", ".join(f"{cmd} {per:.2f} ({usec:.1f})" for cmd, (per, usec)
                                 in sorted(r["redis_cmds"].items(), key=lambda kv: -kv[1][0]))
                lines.append(f"| {name} | {conns} | {f_rps(r['rps'])} | "
                             f"{r['budget']['redis']:.1f} | {cmds} |")
            lines.append("")
        if idle:
            lines.append(f"Idle keep-alive connections: {idle['count']} open to idemproxy "
                         f"({idle['open_after']} still open when measured); VmRSS "
                         f"{idle['rss_before_kb']} kB before, {idle['rss_after_kb']} kB after: "
                         f"**{idle['bytes_per_conn']:,.0f} bytes per connection**.")
        elif IDLE_CONNS > 0:
            lines.append("Idle keep-alive connections: not measured (the step failed).")
        lines.append("")
        if problems:
            lines.append("Notes:")
            lines.append("")
            for p in problems:
                lines.append(f"- {p}")
        else:
            lines.append("Notes: no non-2xx responses, no socket errors, nothing in "
                         "idemproxy's error log.")
        report = "\n".join(lines) + "\n"
        os.makedirs(os.path.dirname(os.path.abspath(OUT)), exist_ok=True)
        with open(OUT, "w") as f:
            f.write(report)
        print()
        print(report)
        say(f"written to {OUT}")
        if log_lines:
            say("idemproxy error log (last lines):\n" + "\n".join(log_lines[-20:]))
        ok = True
    finally:
        procs.stop_all()
        if ok and not KEEP_TMP:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            say(f"files kept in {tmp}")
    return 0


def _on_signal(signum, frame):
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    try:
        sys.exit(main())
    except BenchError as e:
        say(f"FAILED: {e}")
        sys.exit(1)
