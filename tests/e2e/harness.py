"""End-to-end test harness for idemproxy (Python 3 standard library only).

Every test builds its own world: a private redis-server, the test upstream
(tests/upstream/upstream.c) and idemproxy started from a generated config, all
on free 127.0.0.1 ports, stopped by PID when the test ends:

    with Env(extra_config="on_duplicate reject") as env:
        r = env.post("/orders", key="k1", body=b"{}")
        assert r.status == 201
        assert env.upstream.count("k1") == 1

Stopping the proxy fails the test when its stderr or error log holds a
sanitizer report, or when it does not exit 0 after SIGTERM.

TLS (test_tls.py, certificates from certs.py): Env(upstream_tls=...) runs the
test upstream with -c/-k[/-C] and points idemproxy at https://;
Env(proxy_tls=...) gives idemproxy a `listen ... tls` listener, and then
env.request / env.post speak TLS to it; tls_client_context() makes client
contexts for request(..., ssl_context=...) and Client(..., ssl_context=...).

Environment: IDEMPROXY_BIN (default build/idemproxy), UPSTREAM_BIN (default
build/test-upstream), REDIS_BIN (default redis-server), SANITIZE=1 (sanitizer
options and longer waits), KEEP_TMP=1 (keep the temporary directories).
"""

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SANITIZE = os.environ.get("SANITIZE", "0") == "1"
# Start-up and shutdown waits grow under sanitizers.
SLOW = 3.0 if SANITIZE else 1.0

SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "runtime error:")
# An error-log line at a level that a healthy run never produces
# ("2026-11-26T07:37:19.123Z error message", see src/log.h).
ERROR_LINE_RE = re.compile(r"^\S+\s+\[?(error|crit|alert|emerg|fatal)\]?[\s:]", re.I)


class TestFailure(AssertionError):
    """A failure the harness detected itself (start-up, sanitizer, exit code)."""


def _bin(env_name, default):
    path = os.environ.get(env_name, default)
    if not os.path.isabs(path) and os.sep in path:
        path = os.path.join(ROOT, path)
    return path


def idemproxy_bin():
    return _bin("IDEMPROXY_BIN", "build/idemproxy")


def upstream_bin():
    return _bin("UPSTREAM_BIN", "build/test-upstream")


# The runner's parallel workers (run.py, E2E_JOBS) each take ports from a
# range of their own, below the kernel's ephemeral range: a port one worker
# picked and has not yet handed to a server cannot be picked by another, nor
# be taken by an outgoing connection.
PORT_RANGE = None  # (first, count), set by run.py in a worker
PORTS_PER_WORKER = 3000
_next_port = [0]


def use_port_range(worker):
    global PORT_RANGE
    PORT_RANGE = (10000 + worker * PORTS_PER_WORKER, PORTS_PER_WORKER)


def free_port():
    """A TCP port on 127.0.0.1 that nobody listened on a moment ago."""
    if PORT_RANGE is None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    first, count = PORT_RANGE
    for _ in range(count):
        port = first + _next_port[0] % count
        _next_port[0] += 1
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise TestFailure(f"no free port in {first}..{first + count - 1}")


def alone(test):
    """Marks a test that loads the machine (many clients, kills, failovers):
    the runner runs it by itself, after the tests that share the machine."""
    test.alone = True
    return test


def wait_until(predicate, timeout, interval=0.05, what="condition"):
    """Polls predicate() until it returns a true value; returns that value.
    Raises TestFailure after timeout seconds."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = predicate()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - reported below
            last_exc = e
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            raise TestFailure(f"timed out after {timeout}s waiting for {what}{extra}")
        time.sleep(interval)


def port_open(port, host="127.0.0.1", timeout=0.2):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def connect_refused(port, host="127.0.0.1", timeout=0.5):
    """True when a connection to port is actively refused."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def _read_file(path, limit=None):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return ""
    if limit is not None and len(data) > limit:
        data = data[-limit:]
    return data.decode("utf-8", "replace")


def _tail(text, lines=30):
    return "\n".join(text.splitlines()[-lines:])


# Logs of processes from the test that is running, for the runner to print
# when the test fails: list of (label, text).
FAILURE_CONTEXT = []


# Every process the harness started, so the runner can kill leftovers (by
# PID) when a test was interrupted in the middle of its cleanup.
PROCESSES = []


def _spawn(argv, **kwargs):
    proc = subprocess.Popen(argv, **kwargs)  # the one place
    PROCESSES.append(proc)
    return proc


def reap_leftovers():
    """Kills (by PID) every process the harness started that still runs.
    Returns how many there were."""
    n = 0
    for proc in PROCESSES:
        if proc.poll() is None:
            n += 1
            proc.kill()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
    PROCESSES.clear()
    return n


def _note_context(label, text):
    if text.strip():
        FAILURE_CONTEXT.append((label, _tail(text)))


# ---------------------------------------------------------------- RESP / Redis


class RedisError(Exception):
    """An error reply (-ERR ...) from Redis."""


def resp_encode(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        elif isinstance(a, int):
            a = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class _Reader:
    """Buffered reads from a socket; raises ConnectionError on early EOF."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.eof = False

    def _fill(self):
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def readline(self):
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line, self.buf = self.buf[: i + 1], self.buf[i + 1 :]
                return line
            if not self._fill():
                raise ConnectionError("connection closed mid-line")

    def read(self, n):
        while len(self.buf) < n:
            if not self._fill():
                raise ConnectionError(f"connection closed: wanted {n} bytes, got {len(self.buf)}")
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_all(self):
        while self._fill():
            pass
        data, self.buf = self.buf, b""
        return data


def resp_read(reader):
    line = reader.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError(f"bad RESP line {line!r}")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        return RedisError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = reader.read(n + 2)
        return data[:-2]
    if kind == b"*":
        n = int(rest)
        if n < 0:
            return None
        return [resp_read(reader) for _ in range(n)]
    raise ConnectionError(f"unknown RESP type {line!r}")


def redis_command(port, *args, timeout=3.0):
    """Sends one command to 127.0.0.1:port; returns the decoded reply (str
    for simple strings, int, bytes for bulk, list, None for nil). An error
    reply raises RedisError."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(resp_encode(*args))
        reply = resp_read(_Reader(s))
    if isinstance(reply, RedisError):
        raise reply
    return reply


class Redis:
    """A private redis-server on 127.0.0.1, without persistence unless asked."""

    def __init__(self, port=None, tmpdir=None, persistent=False, extra_args=(), tls=None,
                 tls_port=None):
        self.port = port or free_port()
        self.extra_args = list(extra_args)  # e.g. ["--replicaof", "127.0.0.1", "6379"]
        # tls=dict(cert, key, ca[, auth_clients]): also a TLS port (self.tls_port); the
        # plain one stays for the harness
        self.tls_port = (tls_port or free_port()) if tls else None
        if tls:
            self.extra_args += redis_tls_args(tls) + ["--tls-port", str(self.tls_port)]
        # persistent: every write on disk before it is acknowledged (AOF,
        # fsync always), so a SIGKILLed Redis started again keeps them all.
        self.persistent = persistent
        self._own_tmp = tmpdir is None
        self.dir = tmpdir or tempfile.mkdtemp(prefix="idem-redis-")
        self.proc = None
        self.log_path = os.path.join(self.dir, "redis.log")
        self.start()

    def start(self, timeout=5.0):
        """Starts (again) on the same port; waits until PING answers."""
        if self.proc is not None and self.proc.poll() is None:
            return
        binary = os.environ.get("REDIS_BIN", "redis-server")
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--dir", self.dir,
                "--appendonly", "yes" if self.persistent else "no", "--appendfsync", "always",
                "--daemonize", "no", "--logfile", self.log_path] + self.extra_args
        try:
            self.proc = _spawn(argv, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
        except FileNotFoundError as e:
            raise TestFailure(f"cannot start {binary}: {e}") from None
        try:
            wait_until(self._pong, timeout * SLOW, what=f"redis on port {self.port}")
        except TestFailure:
            self.stop()
            raise TestFailure(f"redis did not start:\n{_tail(_read_file(self.log_path))}") from None

    def _pong(self):
        if self.proc.poll() is not None:
            raise TestFailure(f"redis exited with {self.proc.returncode}:\n"
                              f"{_tail(_read_file(self.log_path))}")
        try:
            return self.cmd("PING") == "PONG"
        except OSError:
            return False

    def stop(self, timeout=5.0):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        """SIGKILL: no chance to write anything more."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            self.proc = None

    def cmd(self, *args, timeout=3.0):
        return redis_command(self.port, *args, timeout=timeout)

    def keys(self, pattern="*"):
        return sorted(k.decode() for k in self.cmd("KEYS", pattern))

    def key_state(self, name):
        """An idempotency key as Redis holds it (src/store_keys.h), or None:
        {"state": inflight|unknown|done, "fingerprint", "owner" and
        "waiting" (in flight), "unknown_ms" (in flight), "record" (done),
        "pttl"}."""
        v = self.cmd("GET", name)
        if v is None:
            return None
        out = {"pttl": self.cmd("PTTL", name)}
        if v[:1] == b"i":
            _, owner, fp, ms = v.split(b":")
            out.update(state="inflight", waiting=v[1:2] == b"1", owner=owner,
                       fingerprint=fp, unknown_ms=int(ms))
        elif v[:2] == b"u:":
            out.update(state="unknown", fingerprint=v[2:])
        elif v[:2] == b"d:":
            fp, record = v[2:].split(b":", 1)
            out.update(state="done", fingerprint=fp, record=record)
        else:
            raise AssertionError(f"{name}: not a key value: {v[:40]!r}")
        return out

    def close(self):
        self.stop()
        if self._own_tmp and os.environ.get("KEEP_TMP") != "1":
            shutil.rmtree(self.dir, ignore_errors=True)


def redis_tls_args(tls):
    """redis-server arguments for TLS with tls=dict(cert, key, ca[, auth_clients,
    client_cert, client_key])."""
    args = ["--tls-cert-file", tls["cert"], "--tls-key-file", tls["key"],
            "--tls-ca-cert-file", tls["ca"],
            "--tls-auth-clients", "yes" if tls.get("auth_clients") else "no",
            "--tls-replication", "yes"]
    if tls.get("client_cert"):  # what this server shows when it connects (cluster bus)
        args += ["--tls-client-cert-file", tls["client_cert"],
                 "--tls-client-key-file", tls["client_key"]]
    return args


class Sentinel:
    """One redis-server --sentinel on 127.0.0.1 watching MASTER (over TLS,
    with a TLS port of its own, when tls is given)."""

    def __init__(self, tmpdir, master, primary_port, down_after_ms=1000, tls=None):
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        self.dir = tmpdir
        os.makedirs(tmpdir, exist_ok=True)
        self.conf = os.path.join(tmpdir, "sentinel.conf")
        self.log_path = os.path.join(tmpdir, "sentinel.log")
        with open(self.conf, "w") as f:
            f.write(f"port {self.port}\nbind 127.0.0.1\ndaemonize no\ndir {tmpdir}\n"
                    f"logfile {self.log_path}\n"
                    f"sentinel monitor {master} 127.0.0.1 {primary_port} 2\n"
                    f"sentinel down-after-milliseconds {master} {down_after_ms}\n"
                    f"sentinel failover-timeout {master} 10000\n"
                    f"sentinel parallel-syncs {master} 1\n")
            if tls:
                f.write(f"tls-port {self.tls_port}\ntls-cert-file {tls['cert']}\n"
                        f"tls-key-file {tls['key']}\ntls-ca-cert-file {tls['ca']}\n"
                        f"tls-auth-clients {'yes' if tls.get('auth_clients') else 'no'}\n"
                        "tls-replication yes\n")
        self.proc = None
        self.start()

    def start(self):
        binary = os.environ.get("REDIS_BIN", "redis-server")
        self.proc = _spawn([binary, self.conf, "--sentinel"], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: self._pong(), 5 * SLOW, what=f"sentinel on port {self.port}")

    def _pong(self):
        try:
            return self.cmd("PING") == "PONG"
        except OSError:
            return False

    def cmd(self, *args, timeout=3.0):
        return redis_command(self.port, *args, timeout=timeout)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


class SentinelSet:
    """A primary, its replicas and three sentinels, on free loopback ports,
    in tmpdir: what SPEC §8's redis_sentinel talks to.

        s = SentinelSet(tmp); s.directive() -> "redis_sentinel mymaster 127.0.0.1:A ..."
        s.primary_port() asks a sentinel; s.servers maps ports to Redis objects."""

    def __init__(self, tmpdir, replicas=1, master="mymaster", down_after_ms=1000, tls=None):
        """tls=dict(cert, key, ca[, auth_clients]): replication, sentinels and
        clients speak TLS on the tls ports (the plain ones stay for the
        harness); the sentinels then name the primary's TLS port."""
        self.master = master
        self.tls = tls
        os.makedirs(os.path.join(tmpdir, "r0"), exist_ok=True)
        primary = Redis(tmpdir=os.path.join(tmpdir, "r0"), tls=tls)
        self.servers = {primary.port: primary}
        self.sentinels = []
        try:
            for i in range(replicas):
                d = os.path.join(tmpdir, f"r{i + 1}")
                os.makedirs(d, exist_ok=True)
                target = primary.tls_port if tls else primary.port
                r = Redis(tmpdir=d, tls=tls,
                          extra_args=["--replicaof", "127.0.0.1", str(target)])
                self.servers[r.port] = r
            wait_until(lambda: primary.cmd("INFO", "replication").count(b"state=online")
                       == replicas, 10 * SLOW, what=f"{replicas} replica(s) in sync")
            for i in range(3):
                self.sentinels.append(Sentinel(os.path.join(tmpdir, f"s{i}"), master,
                                               primary.tls_port if tls else primary.port,
                                               down_after_ms, tls=tls))
            wait_until(self._settled, 15 * SLOW, what="sentinels to see each other and the replicas")
        except BaseException:
            self.close()
            raise

    def _settled(self):
        for s in self.sentinels:
            try:
                if (len(s.cmd("SENTINEL", "replicas", self.master)) < len(self.servers) - 1
                        or len(s.cmd("SENTINEL", "sentinels", self.master)) < 2):
                    return False
            except (OSError, RedisError):
                return False
        return True

    def directive(self):
        return f"redis_sentinel {self.master} " + " ".join(
            f"127.0.0.1:{s.tls_port if self.tls else s.port}" for s in self.sentinels)

    def primary_port(self):
        for s in self.sentinels:
            try:
                return int(s.cmd("SENTINEL", "get-master-addr-by-name", self.master)[1])
            except (OSError, RedisError, TypeError):
                continue
        return None

    def primary(self):
        port = self.primary_port()
        return next(r for r in self.servers.values() if port in (r.port, r.tls_port))

    def close(self):
        for s in self.sentinels:
            s.stop()
        for r in self.servers.values():
            r.close()


def cluster_port():
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise TestFailure("no free port with a free cluster bus port")


def crc16(data):
    """CRC16 XMODEM, the Redis Cluster key hash."""
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def key_slot(key):
    """The cluster slot of a key (bytes or str), hash tags included."""
    if isinstance(key, str):
        key = key.encode()
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1:end]
    return crc16(key) % 16384


class RedisCluster:
    """A Redis Cluster on loopback: primaries * (1 + replicas) redis-server
    --cluster-enabled processes in tmpdir, joined by redis-cli --cluster
    create; stopped by PID (close).

        c = RedisCluster(tmp); c.directive() -> "redis_cluster 127.0.0.1:A ..."
        c.owner(slot) -> the Redis that serves it; c.primaries() -> [Redis]

    tls=dict(cert, key, ca) (as Redis takes it): every node also has a TLS
    port, the cluster bus speaks TLS, and directive() names the TLS ports
    (a client on TLS is told TLS ports by CLUSTER SLOTS).

    hostname="localhost": every node announces that name and the cluster
    names its nodes by it (cluster-preferred-endpoint-type hostname), in
    CLUSTER SLOTS and in -MOVED/-ASK."""

    def __init__(self, tmpdir, primaries=3, replicas=0, node_timeout_ms=1000, tls=None,
                 hostname=None):
        self.nodes = []
        self.replicas = replicas
        self.tls = tls
        try:
            for i in range((1 + replicas) * primaries):
                d = os.path.join(tmpdir, f"n{i}")
                os.makedirs(d, exist_ok=True)
                # with tls-cluster the bus is the TLS port + 10000: both ports need room
                port, tls_port = cluster_port(), None
                while tls and tls_port in (None, port):
                    tls_port = cluster_port()
                self.nodes.append(Redis(port=port, tmpdir=d, tls=tls, tls_port=tls_port, extra_args=[
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", os.path.join(d, "nodes.conf"),
                    "--cluster-node-timeout", str(node_timeout_ms)] +
                    (["--tls-cluster", "yes"] if tls else []) +
                    (["--cluster-announce-hostname", hostname,
                      "--cluster-preferred-endpoint-type", "hostname"] if hostname else [])))
            argv = [os.environ.get("REDIS_CLI_BIN", "redis-cli"), "--cluster", "create"] + \
                [f"127.0.0.1:{n.port}" for n in self.nodes] + \
                ["--cluster-replicas", str(replicas), "--cluster-yes"]
            out = subprocess.run(argv, capture_output=True, timeout=60 * SLOW)
            if out.returncode != 0:
                raise TestFailure(f"redis-cli --cluster create failed:\n{out.stdout.decode()}"
                                  f"\n{out.stderr.decode()}")
            wait_until(self._settled, 20 * SLOW, what="the cluster to agree (cluster_state:ok)")
        except BaseException:
            self.close()
            raise

    def _settled(self):
        for n in self.running():
            if b"cluster_state:ok" not in n.cmd("CLUSTER", "INFO"):
                return False
            if sum(e[1] - e[0] + 1 for e in n.cmd("CLUSTER", "SLOTS")) != 16384:
                return False
        return all(p.cmd("INFO", "replication").count(b"state=online") >= self.replicas
                   for p in self.primaries())

    def directive(self, n=None):
        return "redis_cluster " + " ".join(
            f"127.0.0.1:{r.tls_port if self.tls else r.port}" for r in self.nodes[:n])

    def running(self):
        return [n for n in self.nodes if n.running()]

    def by_port(self, port):
        return next(n for n in self.nodes if n.port == port)

    def slot_map(self):
        """{slot range (first, last): port of its primary}, as a running node says."""
        for n in self.running():
            try:
                return {(e[0], e[1]): e[2][1] for e in n.cmd("CLUSTER", "SLOTS")}
            except (OSError, RedisError):
                continue
        return {}

    def owner(self, slot):
        for (first, last), port in self.slot_map().items():
            if first <= slot <= last:
                return self.by_port(port)
        return None

    def primaries(self):
        ports = set(self.slot_map().values())
        return [n for n in self.nodes if n.port in ports]

    def node_id(self, node):
        return node.cmd("CLUSTER", "MYID").decode()

    def get(self, key):
        """GET key from the primary of its slot."""
        return self.owner(key_slot(key)).cmd("GET", key)

    def close(self):
        for n in self.nodes:
            n.close()


def failover_config(store, admin_port):
    """The settings of the failover tests: store names Redis (a
    redis_sentinel or redis_cluster line); claims confirmed by a replica; a
    short redis_timeout; leases that outlast the window; /readyz on admin_port."""
    return (f"{store}\nredis_min_replicas 1 200ms\nredis_timeout 700ms\n"
            f"lock_ttl 10s\nupstream_timeout 8s\nadmin_listen 127.0.0.1:{admin_port}")


def recording_client(post, new_key, statuses, keys, lock, stop, tries=200):
    """A client through a failover: fresh keys (new_key()) one after
    another, each POSTed (post(key)) until it gets a 201 or stop is set;
    every answer's status goes to statuses (under lock): the code, "conflict"
    or another problem code for a 409, "conn" when the connection failed."""
    while not stop.is_set():
        key = new_key()
        with lock:
            keys.append(key)
        for _ in range(tries):
            try:
                r = post(key)
            except OSError:
                code = "conn"
            else:
                code = r.status if r.status != 409 else problem(r).get("code")
            with lock:
                statuses.append(code)
            if code == 201 or stop.is_set():
                break
            time.sleep(0.05)


def retrying_client(proxies, rnd, stop, stats, lock):
    """A client as SDKs are (tests that kill things under load): fresh keys
    one after another at random proxies; each is retried (503, 409
    conflict, 502, 504, refused connections) until it gets a 201 (a first
    answer), then once more for its replay, is found unknown, or 15 s pass.
    stats (under lock): "keys" (a list), counts by outcome "done",
    "unknown", "gave_up", "different_body" (a repeat after the 201 that is
    not its replay), and "replayed"."""
    while not stop.is_set():
        key = "c-" + os.urandom(16).hex()
        delay = str(rnd.choice((0, 0, 50, 200, 600)))
        body = b'{"amount":%d}' % rnd.randrange(1000)
        deadline = time.monotonic() + 15 * SLOW
        outcome = "gave_up"
        first_body = None
        while time.monotonic() < deadline:
            proxy = rnd.choice(proxies)
            try:
                r = proxy.request("POST", "/charges",
                                  {"Idempotency-Key": key, "X-Test-Delay": delay}, body,
                                  timeout=5)
            except OSError:
                time.sleep(0.1)
                continue
            if r.status == 201 and first_body is None:
                # once more, as a client whose answer was lost would: a replay
                first_body = r.body
                outcome = "done"
                continue
            if r.status == 201:
                if r.body != first_body or r.header("Idempotent-Replayed") != "true":
                    outcome = "different_body"
                else:
                    with lock:
                        stats["replayed"] += 1
                break
            if r.status == 409 and (problem(r) or {}).get("code") == "outcome-unknown":
                outcome = "unknown" if first_body is None else outcome
                break
            time.sleep(rnd.uniform(0.05, 0.2))  # 503, 409 conflict, 502, 504: retry
        with lock:
            stats[outcome] += 1
            stats["keys"].append(key)


# ---------------------------------------------------------------- HTTP client


class Response:
    def __init__(self, status, reason, headers, body, version="HTTP/1.1"):
        self.status = status
        self.reason = reason
        self.headers = headers  # list of (name, value) as received
        self.body = body
        self.version = version

    def header(self, name, default=None):
        """First value of a header, case-insensitive; default when absent."""
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    def header_all(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def __repr__(self):
        body = self.body[:300]
        return f"<Response {self.status} {self.headers!r} {body!r}>"


def _encode_request(method, path, headers, body, host):
    if headers is None:
        headers = []
    elif isinstance(headers, dict):
        headers = list(headers.items())
    names = {k.lower() for k, _ in headers}
    lines = [f"{method} {path} HTTP/1.1".encode()]
    if "host" not in names:
        lines.append(f"Host: {host}".encode())
    if body is None:
        body = b""
    if isinstance(body, str):
        body = body.encode()
    if ("content-length" not in names and "transfer-encoding" not in names
            and (body or method in ("POST", "PUT", "PATCH"))):
        lines.append(b"Content-Length: %d" % len(body))
    for k, v in headers:
        k = k.encode() if isinstance(k, str) else k
        v = v.encode("latin-1") if isinstance(v, str) else v
        lines.append(k + b": " + v)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def read_response(reader, method="GET"):
    """Reads one response (skipping 1xx interim ones) from a _Reader."""
    while True:
        line = reader.readline()
        if not line.strip():
            # tolerate a stray CRLF before the status line
            line = reader.readline()
        parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise ConnectionError(f"bad status line {line!r}")
        version, status = parts[0], int(parts[1])
        reason = parts[2] if len(parts) > 2 else ""
        headers = []
        while True:
            h = reader.readline()
            if h in (b"\r\n", b"\n"):
                break
            name, _, value = h.decode("latin-1").rstrip("\r\n").partition(":")
            headers.append((name, value.strip(" \t")))
        if 100 <= status < 200 and status != 101:
            continue
        break
    resp = Response(status, reason, headers, b"", version)
    te = (resp.header("Transfer-Encoding") or "").lower()
    cl = resp.header("Content-Length")
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        body = b""
    elif "chunked" in te:
        chunks = []
        while True:
            size_line = reader.readline().split(b";")[0].strip()
            size = int(size_line, 16)
            if size == 0:
                while reader.readline() not in (b"\r\n", b"\n"):
                    pass
                break
            chunks.append(reader.read(size))
            reader.read(2)
        body = b"".join(chunks)
    elif cl is not None:
        body = reader.read(int(cl))
    else:
        body = reader.read_all()
    resp.body = body
    return resp


class Client:
    """One keep-alive HTTP/1.1 connection; requests are sent one at a time.
    With ssl_context, the connection speaks TLS (server_hostname: the SNI
    name and the name checked, default host)."""

    def __init__(self, port, host="127.0.0.1", timeout=10, ssl_context=None,
                 server_hostname=None):
        self.host = f"{host}:{port}"
        sock = socket.create_connection((host, port), timeout=timeout)
        if ssl_context is not None:
            try:
                sock = ssl_context.wrap_socket(sock, server_hostname=server_hostname or host)
            except BaseException:
                sock.close()
                raise
        self.sock = sock
        self.reader = _Reader(self.sock)

    def request(self, method, path, headers=None, body=b""):
        self.sock.sendall(_encode_request(method, path, headers, body, self.host))
        return read_response(self.reader, method)

    def send(self, data):
        self.sock.sendall(data)

    def read_response(self, method="GET"):
        return read_response(self.reader, method)

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def request(port, method, path, headers=None, body=b"", timeout=10, host="127.0.0.1",
            ssl_context=None, server_hostname=None):
    """One request on a new connection. headers: dict or list of (name, value)
    (a list may repeat a name). Content-Length is added unless given.
    ssl_context: speak TLS (see tls_client_context)."""
    with Client(port, host, timeout, ssl_context, server_hostname) as c:
        return c.request(method, path, headers, body)


def tls_client_context(cafile=None, verify=True, cert=None, key=None, alpn=("http/1.1",),
                       min_version=None, max_version=None):
    """An ssl.SSLContext for a client: trusts cafile (host name checked) or,
    with verify=False, anything; cert/key: a client certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify:
        if cafile is not None:
            ctx.load_verify_locations(cafile)
        else:
            ctx.load_default_certs()
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if min_version is not None:
        ctx.minimum_version = min_version
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


def raw(port, data, timeout=5, host="127.0.0.1", shut_write=False):
    """Sends bytes as they are; returns everything read until the peer
    closes or timeout seconds pass."""
    out = b""
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(data)
        if shut_write:
            s.shutdown(socket.SHUT_WR)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            s.settimeout(left)
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
    return out


def parallel(fn, n, timeout=30):
    """Runs fn(i) in n threads released together; returns the results in
    order (an exception is returned in place of its result)."""
    results = [None] * n
    barrier = threading.Barrier(n)

    def run(i):
        try:
            barrier.wait(timeout)
            results[i] = fn(i)
        except Exception as e:  # noqa: BLE001 - handed to the caller
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        raise TestFailure(f"parallel: threads still running after {timeout}s")
    return results


def background(fn, *args, **kwargs):
    """Runs fn in a thread; returns an object whose .result(timeout) gives
    fn's return value (or raises its exception)."""

    class _Job:
        def __init__(self):
            self.value = None
            self.error = None
            self.thread = threading.Thread(target=self._run, daemon=True)

        def _run(self):
            try:
                self.value = fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - re-raised in result()
                self.error = e

        def result(self, timeout=15):
            self.thread.join(timeout)
            if self.thread.is_alive():
                raise TestFailure(f"background job still running after {timeout}s")
            if self.error is not None:
                raise self.error
            return self.value

    job = _Job()
    job.thread.start()
    return job


def problem(resp):
    """Checks resp is an RFC 9457 problem response; returns its JSON."""
    ctype = resp.header("Content-Type") or ""
    assert ctype.split(";")[0].strip().lower() == "application/problem+json", \
        f"Content-Type {ctype!r} is not application/problem+json: {resp!r}"
    doc = resp.json()
    assert doc.get("status") == resp.status, f"problem status {doc.get('status')} != {resp.status}"
    return doc


def assert_problem(resp, status, code):
    assert resp.status == status, f"expected {status} {code}, got {resp!r}"
    doc = problem(resp)
    assert doc.get("code") == code, f"expected code {code!r}, got {doc!r}"
    return doc


# ---------------------------------------------------------------- upstream


class Upstream:
    """The test upstream (tests/upstream/upstream.c) on a free port.

    tls=dict(cert=PEM, key=PEM[, client_ca=PEM][, client_cert=PEM,
    client_key=PEM]) serves HTTPS (-c/-k; -C client_ca requires a client
    certificate). client_cert/client_key are what the harness's own control
    requests (count, reset, connections) present to an mTLS upstream."""

    def __init__(self, port=None, tmpdir=None, tls=None):
        self.port = port or free_port()
        self._own_tmp = tmpdir is None
        self.dir = tmpdir or tempfile.mkdtemp(prefix="idem-upstream-")
        self.proc = None
        self.tls = dict(tls) if tls else None
        self.ssl_context = None
        if self.tls:
            self.ssl_context = tls_client_context(verify=False, cert=self.tls.get("client_cert"),
                                                  key=self.tls.get("client_key"))
        self.out_path = os.path.join(self.dir, f"upstream-{self.port}.out")
        self.err_path = os.path.join(self.dir, f"upstream-{self.port}.err")
        self.start()

    def start(self, timeout=5.0):
        if self.proc is not None and self.proc.poll() is None:
            return
        binary = upstream_bin()
        if not os.path.exists(binary):
            raise TestFailure(f"test upstream binary not found: {binary} (make build/test-upstream)")
        argv = [binary, "-p", str(self.port)]
        if self.tls:
            argv += ["-c", self.tls["cert"], "-k", self.tls["key"]]
            if self.tls.get("client_ca"):
                argv += ["-C", self.tls["client_ca"]]
        with open(self.out_path, "wb") as out, open(self.err_path, "ab") as err:
            self.proc = _spawn(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err)

        def ready():
            if self.proc.poll() is not None:
                raise TestFailure(f"test upstream exited with {self.proc.returncode}: "
                                  f"{_read_file(self.err_path)}")
            return f"ready {self.port}" in _read_file(self.out_path)

        try:
            wait_until(ready, timeout * SLOW, what=f"test upstream on port {self.port}")
        except TestFailure:
            self.stop(check=False)
            raise

    def count(self, key=None):
        path = "/__count"
        if key is not None:
            from urllib.parse import quote
            path += "?key=" + quote(key, safe="")
        r = self.request("GET", path)
        assert r.status == 200, f"upstream /__count answered {r!r}"
        return int(r.body)

    def connections(self):
        """Connections that carried counted requests (GET /__connections)."""
        r = self.request("GET", "/__connections")
        assert r.status == 200, f"upstream /__connections answered {r!r}"
        return int(r.body)

    def reset(self):
        r = self.request("POST", "/__reset")
        assert r.status == 200, f"upstream /__reset answered {r!r}"

    def request(self, method, path, headers=None, body=b"", timeout=5):
        """A request straight to the upstream (over TLS when it serves TLS)."""
        return request(self.port, method, path, headers, body, timeout,
                       ssl_context=self.ssl_context)

    @property
    def scheme(self):
        return "https" if self.tls else "http"

    def stop(self, check=True):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5 * SLOW)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        err = _read_file(self.err_path)
        if check and any(m in err for m in SANITIZER_MARKERS):
            raise TestFailure(f"sanitizer report from the test upstream:\n{_tail(err, 60)}")

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def close(self):
        try:
            self.stop()
        finally:
            if self._own_tmp and os.environ.get("KEEP_TMP") != "1":
                shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------- idemproxy


def run_idemproxy(args, timeout=10, env=None):
    """Runs the binary to completion (for -t, -v, start-up failures).
    Returns (exit code, stdout text, stderr text)."""
    binary = idemproxy_bin()
    if not os.path.exists(binary):
        raise TestFailure(f"idemproxy binary not found: {binary} (make)")
    full_env = dict(os.environ)
    full_env.update(_sanitizer_env())
    if env:
        full_env.update(env)
    try:
        p = subprocess.run([binary] + list(args), stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=timeout * SLOW, env=full_env)
    except subprocess.TimeoutExpired as e:
        raise TestFailure(f"idemproxy {' '.join(args)} did not exit within {timeout * SLOW}s") from e
    out = p.stdout.decode("utf-8", "replace")
    err = p.stderr.decode("utf-8", "replace")
    if any(m in out + err for m in SANITIZER_MARKERS):
        raise TestFailure(f"sanitizer report from idemproxy {' '.join(args)}:\n{_tail(err, 60)}")
    return p.returncode, out, err


def _sanitizer_env():
    if not SANITIZE:
        return {}
    return {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0",
            "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}


def _directive_name(line):
    s = line.strip()
    if not s or s.startswith("#"):
        return None
    return s.split()[0]


class Proxy:
    """idemproxy from a generated config.

    The base config sets listen, upstream, redis, access_log, error_log,
    log_level and shutdown_timeout. extra_config is appended; a global
    directive in it whose name is one of the base ones replaces the base line
    (so extra_config="listen 127.0.0.1:9999" moves the listener)."""

    def __init__(self, upstream_port, redis_port, extra_config="", tmpdir=None, port=None,
                 start=True, env=None, config_text=None, expect_errors=False,
                 upstream_scheme="http", tls=None):
        self.port = port or free_port()
        # "https" makes the base upstream line https://127.0.0.1:PORT.
        self.upstream_scheme = upstream_scheme
        # tls=dict(cert=PEM, key=PEM, ca=PEM): the base listener is
        # "listen ... tls" with tls_certificate/_key lines; requests made
        # through proxy.request / env.request / env.post speak TLS and
        # trust ca (self.ssl_context).
        self.tls = dict(tls) if tls else None
        self.ssl_context = None
        if self.tls:
            self.ssl_context = tls_client_context(cafile=self.tls.get("ca"),
                                                  verify=self.tls.get("ca") is not None)
        # False: an error-level line in the error log fails the test.
        self.expect_errors = expect_errors
        self.upstream_port = upstream_port
        self.redis_port = redis_port
        self._own_tmp = tmpdir is None
        self.dir = tmpdir or tempfile.mkdtemp(prefix="idem-proxy-")
        self.config_path = os.path.join(self.dir, "idemproxy.conf")
        self.access_log_path = os.path.join(self.dir, "access.log")
        self.error_log_path = os.path.join(self.dir, "error.log")
        self.stderr_path = os.path.join(self.dir, "stderr.log")
        self.stdout_path = os.path.join(self.dir, "stdout.log")
        self.extra_env = env or {}
        self.proc = None
        self.exit_code = None
        self.write_config(extra_config, config_text=config_text)
        if start:
            self.start()

    def base_config(self):
        lines = [
            f"listen 127.0.0.1:{self.port}" + (" tls" if self.tls else ""),
            f"upstream {self.upstream_scheme}://127.0.0.1:{self.upstream_port}",
            f"redis 127.0.0.1:{self.redis_port}",
            f"access_log {self.access_log_path}",
            f"error_log {self.error_log_path}",
            "log_level debug",
            "shutdown_timeout 5s",
        ]
        if self.tls:
            lines += [f"tls_certificate {self.tls['cert']}",
                      f"tls_certificate_key {self.tls['key']}"]
        return lines

    def config_for(self, extra_config=""):
        extra_lines = extra_config.splitlines() if extra_config else []
        # Only top-level lines (outside route blocks) override the base.
        depth = 0
        overridden = set()
        for line in extra_lines:
            name = _directive_name(line)
            if depth == 0 and name and name != "route":
                overridden.add(name)
            depth += line.count("{") - line.count("}")
        if overridden & {"redis_sentinel", "redis_cluster"}:  # name the store in place of redis
            overridden.add("redis")
        base = [line for line in self.base_config() if _directive_name(line) not in overridden]
        return "\n".join(["# generated by tests/e2e/harness.py"] + base + extra_lines) + "\n"

    def write_config(self, extra_config="", config_text=None):
        """(Re)writes the config file; the running proxy sees it on SIGHUP."""
        self.extra_config = extra_config
        text = config_text if config_text is not None else self.config_for(extra_config)
        tmp = self.config_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.config_path)

    def start(self, timeout=5.0):
        binary = idemproxy_bin()
        if not os.path.exists(binary):
            raise TestFailure(f"idemproxy binary not found: {binary} (make)")
        env = dict(os.environ)
        env.update(_sanitizer_env())
        env.update(self.extra_env)
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = _spawn([binary, "-c", self.config_path], stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=err, env=env)
        self.exit_code = None

        def ready():
            if self.proc.poll() is not None:
                raise TestFailure(f"idemproxy exited with {self.proc.returncode} during start-up")
            return port_open(self.port)

        try:
            wait_until(ready, timeout * SLOW, what=f"idemproxy listening on {self.port}")
        except TestFailure as e:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
            self.exit_code = self.proc.returncode
            self.proc = None
            raise TestFailure(f"{e}\n--- error log:\n{_tail(self.error_log())}\n"
                              f"--- stderr:\n{_tail(self.stderr())}") from None

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        assert self.running(), "idemproxy is not running"
        self.proc.send_signal(sig)

    def wait(self, timeout):
        """Waits for exit; returns the exit code (None if still running)."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, sig=None, timeout=None, check=True):
        """Sends sig, waits for exit and returns the exit code. With check,
        fails on a sanitizer report or on a non-zero exit after SIGTERM."""
        if sig is None:
            sig = signal.SIGTERM
        if self.proc is None:
            return self.exit_code
        if timeout is None:
            timeout = 10.0 * SLOW
        killed = False
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                killed = True
        self.exit_code = self.proc.returncode
        self.proc = None
        if check:
            self.check_logs()
            if killed:
                raise TestFailure(f"idemproxy did not exit within {timeout}s of signal {sig}; killed")
            if sig == signal.SIGTERM and self.exit_code != 0:
                raise TestFailure(f"idemproxy exited with {self.exit_code} after SIGTERM\n"
                                  f"--- stderr:\n{_tail(self.stderr())}")
        return self.exit_code

    def check_logs(self):
        """Fails on any sanitizer report in stderr or the error log, and,
        unless expect_errors, on an error-level line in the error log."""
        for label, text in (("stderr", self.stderr()), ("error log", self.error_log())):
            for m in SANITIZER_MARKERS:
                if m in text:
                    i = text.index(m)
                    raise TestFailure(f"sanitizer report ({m}) in idemproxy {label}:\n"
                                      f"{text[max(0, i - 200): i + 4000]}")
        if not self.expect_errors:
            bad = self.error_lines()
            if bad:
                raise TestFailure("unexpected error in the idemproxy error log (pass "
                                  "expect_errors=True if the test provokes it):\n"
                                  + "\n".join(bad[:10]))

    def error_lines(self):
        """Error-level lines of the error log and stderr."""
        text = self.error_log() + "\n" + self.stderr()
        return [line for line in text.splitlines() if ERROR_LINE_RE.match(line)]

    def access_log(self):
        """Parsed access log lines (list of dicts). A line that is not JSON
        fails the test."""
        out = []
        for n, line in enumerate(_read_file(self.access_log_path).splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except ValueError:
                raise TestFailure(f"access log line {n} is not JSON: {line!r}") from None
        return out

    def wait_access_log(self, n, timeout=3.0):
        """Waits until the access log has at least n entries; returns them."""
        return wait_until(lambda: len(self.access_log()) >= n and self.access_log(), timeout,
                          what=f"{n} access log lines")

    def error_log(self):
        return _read_file(self.error_log_path)

    def stderr(self):
        return _read_file(self.stderr_path)

    def request(self, method, path, headers=None, body=b"", timeout=10):
        return request(self.port, method, path, headers, body, timeout,
                       ssl_context=self.ssl_context)

    def close(self):
        """Stops (checking logs) and records the logs for failure reports."""
        try:
            self.stop()
        finally:
            _note_context(f"idemproxy error log ({self.error_log_path})", self.error_log())
            _note_context("idemproxy stderr", self.stderr())
            if self._own_tmp and os.environ.get("KEEP_TMP") != "1":
                shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------- Env


class Env:
    """Redis + test upstream + idemproxy for one test, cleaned up on exit.

        with Env(extra_config="require_key on") as env:
            env.redis, env.upstream, env.proxy, env.tmp

    proxy=False leaves the proxy unstarted (env.start_proxy(extra) later);
    redis=False / upstream=False skip those (ports are still reserved);
    expect_errors=True for tests that provoke error-level log lines.
    upstream_tls=dict(...) starts the upstream with TLS (see Upstream) and
    points the proxy at https://; proxy_tls=dict(cert, key, ca) gives the
    proxy a TLS listener (see Proxy)."""

    def __init__(self, extra_config="", proxy=True, redis=True, upstream=True, proxy_env=None,
                 expect_errors=False, upstream_tls=None, proxy_tls=None):
        self.upstream_tls = upstream_tls
        self.proxy_tls = proxy_tls
        self.extra_config = extra_config
        self.expect_errors = expect_errors
        self.want_proxy = proxy
        self.want_redis = redis
        self.want_upstream = upstream
        self.proxy_env = proxy_env
        self.tmp = None
        self.redis = None
        self.upstream = None
        self.proxy = None
        self.redis_port = None
        self.upstream_port = None

    def __enter__(self):
        self.tmp = tempfile.mkdtemp(prefix="idem-e2e-")
        try:
            if self.want_redis:
                self.redis = Redis(tmpdir=self.tmp)
                self.redis_port = self.redis.port
            else:
                self.redis_port = free_port()
            if self.want_upstream:
                self.upstream = Upstream(tmpdir=self.tmp, tls=self.upstream_tls)
                self.upstream_port = self.upstream.port
            else:
                self.upstream_port = free_port()
            if self.want_proxy:
                self.start_proxy(self.extra_config)
        except BaseException:
            self._cleanup(ok=False)
            raise
        return self

    def start_proxy(self, extra_config=None, **kwargs):
        if extra_config is None:
            extra_config = self.extra_config
        if self.proxy is not None:
            self.proxy.close()
        kwargs.setdefault("expect_errors", self.expect_errors)
        kwargs.setdefault("upstream_scheme", "https" if self.upstream_tls else "http")
        kwargs.setdefault("tls", self.proxy_tls)
        self.proxy = Proxy(self.upstream_port, self.redis_port, extra_config, tmpdir=self.tmp,
                           env=self.proxy_env, **kwargs)
        return self.proxy

    def __exit__(self, exc_type, exc, tb):
        self._cleanup(ok=exc_type is None)
        return False

    def _cleanup(self, ok):
        errors = []
        for part in (self.proxy, self.upstream, self.redis):
            if part is None:
                continue
            try:
                part.close()
            except Exception as e:  # noqa: BLE001 - collected below
                errors.append(e)
        if self.tmp and os.environ.get("KEEP_TMP") != "1":
            shutil.rmtree(self.tmp, ignore_errors=True)
        if errors and ok:
            raise errors[0]
        if errors:
            for e in errors:
                FAILURE_CONTEXT.append(("also during cleanup", str(e)))

    # Short-hands for requests through the proxy.

    def request(self, method, path, headers=None, body=b"", timeout=10):
        return request(self.proxy.port, method, path, headers, body, timeout,
                       ssl_context=self.proxy.ssl_context)

    def post(self, path="/orders", key=None, body=b"{}", headers=None, method="POST", timeout=10):
        """A covered request; key (if given) goes into Idempotency-Key as is."""
        h = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        if key is not None:
            h.insert(0, ("Idempotency-Key", key))
        return request(self.proxy.port, method, path, h, body, timeout,
                       ssl_context=self.proxy.ssl_context)


HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer",
              "transfer-encoding", "upgrade", "proxy-authenticate", "proxy-authorization"}


def end_to_end_headers(resp, ignore=()):
    """Response headers without hop-by-hop ones, Date and the names in
    ignore, lower-cased names, in order."""
    skip = HOP_BY_HOP | {"date"} | {i.lower() for i in ignore}
    return [(k.lower(), v) for k, v in resp.headers if k.lower() not in skip]


def fnv1a64(data):
    """The hash the test upstream reports as body_fnv."""
    h = 14695981039346656037
    for b in data:
        h ^= b
        h = (h * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"



# ---------------------------------------------------------------- byte-level tools


class _Listener:
    """A loopback listener on a free port whose accepted connections are
    handed to self._on_accept(sock) in the accept thread; closed, with every
    connection it accepted, on exit."""

    def __init__(self):
        self.port = None
        self._sock = None
        self._conns = []
        self._stopped = False

    def __enter__(self):
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._stopped = True
        self._sock.close()
        for s in list(self._conns):
            try:
                s.close()
            except OSError:
                pass
        return False

    def _accept(self):
        while not self._stopped:
            try:
                s, _ = self._sock.accept()
            except OSError:
                return
            self._conns.append(s)
            self._on_accept(s)


class Tap(_Listener):
    """A TCP relay on a free port that records every byte going from its
    clients to target_port. Put between idemproxy and the upstream, it shows
    what idemproxy forwarded, byte for byte, before any upstream parser could
    tidy it up:

        with Tap(env.upstream.port) as tap:
            env.upstream_port = tap.port; env.start_proxy()
            ...; assert tap.data() == b""
    """

    def __init__(self, target_port):
        super().__init__()
        self.target_port = target_port
        self._chunks = []  # bytes in arrival order, every connection
        self._lock = threading.Lock()

    def _on_accept(self, down):
        try:
            up = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        except OSError:
            down.close()
            return
        up.settimeout(None)
        self._conns.append(up)
        threading.Thread(target=self._pipe, args=(down, up, True), daemon=True).start()
        threading.Thread(target=self._pipe, args=(up, down, False), daemon=True).start()

    def _pipe(self, src, dst, record):
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                for s, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
                    try:
                        s.shutdown(how)
                    except OSError:
                        pass
                return
            if record:
                with self._lock:
                    self._chunks.append(data)
            try:
                dst.sendall(data)
            except OSError:
                return

    def data(self):
        """Every byte forwarded so far, all connections in arrival order."""
        with self._lock:
            return b"".join(self._chunks)


def strict_requests(stream):
    """Reads a stream of HTTP/1.1 requests as a strict RFC 9112 recipient
    would (CRLF only, token field names, one framing header, chunked or
    Content-Length bodies). Returns [(method, target, [(name, value)], body)];
    raises AssertionError at anything a lenient parser might read otherwise,
    so a test sees both what went upstream and that it was unambiguous."""
    tchar = set(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    out = []
    rest = stream
    while rest:
        head, sep, rest = rest.partition(b"\r\n\r\n")
        assert sep, f"unterminated head: {head!r}"
        for i, b in enumerate(head):
            assert b != 0x0D or head[i + 1:i + 2] == b"\n", f"bare CR in {head!r}"
            assert b != 0x0A or head[i - 1:i] == b"\r", f"bare LF in {head!r}"
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        assert len(parts) == 3 and parts[2] == b"HTTP/1.1", f"request line {lines[0]!r}"
        assert parts[0] and all(c in tchar for c in parts[0]), f"method {parts[0]!r}"
        assert parts[1] and all(0x21 <= c <= 0x7E for c in parts[1]), f"target {parts[1]!r}"
        fields = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            assert colon and name and all(c in tchar for c in name), f"field line {line!r}"
            assert all(c == 9 or 0x20 <= c != 0x7F for c in value), f"field value {line!r}"
            fields.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
        names = [n.lower() for n, _ in fields]
        te = [v for n, v in fields if n.lower() == "transfer-encoding"]
        cl = [v for n, v in fields if n.lower() == "content-length"]
        assert not (te and cl), f"both framings in {head!r}"
        assert len(cl) <= 1 and names.count("host") == 1, f"framing or Host in {head!r}"
        body = b""
        if te:
            assert te == ["chunked"], f"Transfer-Encoding {te!r}"
            while True:
                size_line, sep, rest = rest.partition(b"\r\n")
                assert sep, "unterminated chunk size"
                size_hex = size_line.split(b";")[0]
                assert re.fullmatch(rb"[0-9a-fA-F]+", size_hex), f"chunk size {size_line!r}"
                size = int(size_hex, 16)
                if size == 0:
                    trailer, sep, rest = rest.partition(b"\r\n")
                    assert sep and trailer == b"", f"trailer {trailer!r}"
                    break
                body += rest[:size]
                assert rest[size:size + 2] == b"\r\n", "chunk not followed by CRLF"
                rest = rest[size + 2:]
        elif cl:
            assert cl[0].isdigit(), f"Content-Length {cl[0]!r}"
            n = int(cl[0])
            assert len(rest) >= n, "body shorter than its Content-Length"
            body, rest = rest[:n], rest[n:]
        out.append((parts[0].decode(), parts[1].decode("latin-1"), fields, body))
    return out


class ScriptedUpstream(_Listener):
    """An upstream that answers every request with canned bytes, as they are
    (malformed response heads for the response-side tests). It reads a request
    head (and a Content-Length body), sends `response`, and then closes or
    keeps the connection as close_after says. Counts connections and
    requests."""

    def __init__(self, response, close_after=False):
        super().__init__()
        self.response = response
        self.close_after = close_after
        self.connections = 0
        self.requests = 0

    def _on_accept(self, s):
        self.connections += 1
        threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s):
        buf = b""
        with s:
            while True:
                while b"\r\n\r\n" not in buf:
                    try:
                        data = s.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                need = int(m.group(1)) if m else 0
                while len(buf) < need:
                    data = s.recv(65536)
                    if not data:
                        return
                    buf += data
                buf = buf[need:]
                self.requests += 1
                try:
                    s.sendall(self.response)
                except OSError:
                    return
                if self.close_after:
                    return
