"""End-to-end tests of TLS on both sides (SPEC §7, issue 6).

Certificates come from certs.py (made once per run with the openssl command):
a private CA, a server certificate for 127.0.0.1 and localhost, an expired
one, one for wrong.example, a client certificate, and a second, untrusted CA.

  - listener: curl --cacert and Python's ssl module against `listen ... tls`
    (replay works over TLS as over plain HTTP), ALPN http/1.1, protocol
    versions and tls_protocols, ciphers, session resumption, full chains,
    X-Forwarded-Proto https, plain and TLS listeners side by side;
  - handshake failures (plain HTTP, garbage, a client that distrusts the
    certificate) logged at info while the proxy keeps serving;
  - configuration errors: key file mode, missing certificate, bad values;
  - upstream: https:// with upstream_tls_ca (success, replay, keep-alive),
    every verification failure → 502 upstream-unavailable, no execution, the
    key released, the reason in the error log; upstream_tls_server_name;
    upstream_tls_verify off; a client certificate for mTLS;
  - SIGHUP re-reads certificates; a bad new one keeps the old one.
"""

import hashlib
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
import uuid

from certs import certs
from harness import (SLOW, Client, Env, TestFailure, Upstream, _Reader, assert_problem, fnv1a64,
                     free_port, parallel, port_open, raw, read_response, request, run_idemproxy,
                     tls_client_context, wait_until)

OPENSSL_TIMEOUT = 10


def new_key():
    return "k-" + uuid.uuid4().hex


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def listener_tls(c=None):
    """proxy_tls for Env: the server certificate, trusted through the CA."""
    c = c or certs()
    return {"cert": c.server, "key": c.server_key, "ca": c.ca}


def upstream_tls(cert, key, client_ca=None, with_client_cert=False):
    c = certs()
    d = {"cert": cert, "key": key}
    if client_ca:
        d["client_ca"] = client_ca
    if with_client_cert or client_ca:
        d["client_cert"] = c.client
        d["client_key"] = c.client_key
    return d


# ---------------------------------------------------------------- tools


def curl(*args, timeout=10):
    """Runs curl -sS -i with a bounded time; returns (rc, status, headers dict
    (lower-case names, last value wins), body bytes, stderr)."""
    argv = ["curl", "-sS", "-i", "--max-time", str(timeout)] + list(args)
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout + 5)
    status, headers, body = None, {}, b""
    if p.returncode == 0:
        head, _, body = p.stdout.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return p.returncode, status, headers, body, p.stderr.decode(errors="replace")


def s_client(port, *args, data=b"", ign_eof=False, timeout=OPENSSL_TIMEOUT):
    """openssl s_client to 127.0.0.1:port; returns (rc, combined output).
    data is written to its stdin (with ign_eof it waits for the server to
    close instead of closing at the end of stdin)."""
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}"] + list(args)
    if ign_eof:
        argv.append("-ign_eof")
    try:
        p = subprocess.run(argv, input=data, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise TestFailure(f"{' '.join(argv)} did not finish within {timeout}s") from e
    return p.returncode, (p.stdout + p.stderr).decode(errors="replace")


def handshake_ok(out, version=None):
    """True when s_client output shows a finished handshake (of version)."""
    m = re.search(r"^(?:New|Reused), (\S+), Cipher is (\S+)", out, re.M)
    if not m or m.group(2) == "(NONE)":
        return False
    return version is None or m.group(1) == version


def verify_args(ca=None):
    c = certs()
    return ["-CAfile", ca or c.ca, "-verify_return_error", "-verify_ip", "127.0.0.1"]


def log_entries(proxy, since=0):
    """(level, message) for each error-log line after byte offset since."""
    out = []
    for line in proxy.error_log()[since:].splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3:
            out.append((parts[1].strip("[]:").lower(), parts[2]))
    return out


def wait_log(proxy, pred, since=0, timeout=3.0, what="a log line"):
    """Waits for an error-log line (after since) whose (level, message)
    satisfies pred; returns it."""
    def found():
        for level, msg in log_entries(proxy, since):
            if pred(level, msg):
                return (level, msg)
        return None
    try:
        return wait_until(found, timeout * SLOW, what=what)
    except TestFailure as e:
        raise TestFailure(f"{e}\n--- error log since the action:\n"
                          f"{proxy.error_log()[since:][-3000:]}") from None


def peer_fingerprint(port, cafile=None, timeout=5):
    """SHA-256 of the certificate the TLS listener on port presents (DER)."""
    ctx = tls_client_context(cafile=cafile or certs().ca)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw_sock:
        with ctx.wrap_socket(raw_sock, server_hostname="127.0.0.1") as s:
            return hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest()


def der_fingerprint(pem_path):
    with open(pem_path) as f:
        der = ssl.PEM_cert_to_DER_cert(f.read())
    return hashlib.sha256(der).hexdigest()


def check_config(env, extra, name="check.conf", tls_listener=True, scheme="http"):
    """Writes a config (base + extra) and runs idemproxy -t on it;
    returns (path, exit code, stdout + stderr)."""
    port = env.upstream_port
    lines = [f"listen 127.0.0.1:{free_port()}" + (" tls" if tls_listener else ""),
             f"upstream {scheme}://127.0.0.1:{port}",
             f"redis 127.0.0.1:{env.redis_port}",
             f"error_log {os.path.join(env.tmp, 'check-error.log')}",
             "access_log off"]
    path = os.path.join(env.tmp, name)
    write(path, "\n".join(lines + extra) + "\n")
    code, out, err = run_idemproxy(["-t", "-c", path])
    return path, code, out + err


def _read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def upstream_failure_log(proxy, since, reasons):
    """Waits for an error-log line that names one of reasons; returns it."""
    def pred(level, msg):
        low = msg.lower()
        return any(r.lower() in low for r in reasons)
    return wait_log(proxy, pred, since,
                    what=f"an error-log line naming one of {reasons}")


# ---------------------------------------------------------------- listener


def test_tls_curl_replay():
    c = certs()
    with Env(proxy_tls=listener_tls(c)) as env:
        key = new_key()
        url = f"https://127.0.0.1:{env.proxy.port}/orders"
        args = ["--cacert", c.ca, "-X", "POST", "-H", f"Idempotency-Key: {key}",
                "-H", "Content-Type: application/json", "--data-binary", '{"sku":"A1"}', url]
        rc, status, h1, body1, err = curl(*args)
        assert rc == 0, f"curl failed ({rc}): {err}"
        assert status == 201, (status, h1, body1)
        assert "idempotent-replayed" not in h1, h1
        rc, status, h2, body2, err = curl(*args)
        assert rc == 0, f"curl failed ({rc}): {err}"
        assert status == 201, (status, h2, body2)
        assert h2.get("idempotent-replayed") == "true", h2
        assert body2 == body1, (body1, body2)
        # the DNS name in the certificate works too
        rc, status, h3, body3, err = curl(*(args[:-1] + [
            f"https://localhost:{env.proxy.port}/orders", "--resolve",
            f"localhost:{env.proxy.port}:127.0.0.1"]))
        assert rc == 0 and status == 201 and body3 == body1, (rc, status, h3, err)
        assert env.upstream.count(key) == 1
        # and curl without the CA refuses the certificate (it is really our CA's)
        rc, status, _, _, err = curl("-X", "GET", f"https://127.0.0.1:{env.proxy.port}/x")
        assert rc == 60, f"curl without --cacert: rc {rc}, {err}"


def test_tls_python_ssl_replay_and_keepalive():
    c = certs()
    with Env(proxy_tls=listener_tls(c)) as env:
        key = new_key()
        ctx = tls_client_context(cafile=c.ca)
        with Client(env.proxy.port, ssl_context=ctx) as cl:
            assert cl.sock.version() in ("TLSv1.2", "TLSv1.3"), cl.sock.version()
            assert cl.sock.selected_alpn_protocol() == "http/1.1"
            r1 = cl.request("POST", "/orders", [("Idempotency-Key", key)], b'{"a":1}')
            assert r1.status == 201, r1
            # the same connection carries the replay (keep-alive over TLS)
            r2 = cl.request("POST", "/orders", [("Idempotency-Key", key)], b'{"a":1}')
            assert r2.status == 201, r2
            assert r2.header("Idempotent-Replayed") == "true", r2
            assert r2.body == r1.body
            r3 = cl.request("POST", "/orders", [("Idempotency-Key", key)], b'{"a":2}')
            assert_problem(r3, 422, "fingerprint-mismatch")
        # env.post speaks TLS to a TLS proxy
        r4 = env.post("/orders", key=key, body=b'{"a":1}')
        assert r4.status == 201 and r4.body == r1.body, r4
        assert env.upstream.count(key) == 1


def test_tls_alpn_http11():
    c = certs()
    with Env(proxy_tls=listener_tls(c)) as env:
        rc, out = s_client(env.proxy.port, "-alpn", "http/1.1", *verify_args())
        assert rc == 0 and handshake_ok(out), out[-2000:]
        assert "ALPN protocol: http/1.1" in out, out[-2000:]
        assert "Verify return code: 0 (ok)" in out, out[-2000:]
        # h2 is never chosen: either no ALPN or http/1.1 among the offers
        rc, out = s_client(env.proxy.port, "-alpn", "h2,http/1.1")
        assert "ALPN protocol: http/1.1" in out, out[-2000:]
        # a client that offers only h2 fails with no_application_protocol, as with nginx
        rc, out = s_client(env.proxy.port, "-alpn", "h2")
        assert "ALPN protocol: h2" not in out, out[-2000:]
        assert not handshake_ok(out) and "no application protocol" in out, out[-2000:]
        # a client without ALPN is served HTTP/1.1 as well
        rc, out = s_client(env.proxy.port, *verify_args())
        assert rc == 0 and handshake_ok(out) and "No ALPN negotiated" in out, out[-2000:]
        assert env.request("GET", "/x").status == 200


def test_tls_versions_by_default():
    with Env(proxy_tls=listener_tls()) as env:
        for flag, version in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
            rc, out = s_client(env.proxy.port, flag, *verify_args())
            assert rc == 0 and handshake_ok(out, version), f"{flag}:\n{out[-2000:]}"
        # TLS 1.1 is not in the default set (the client allows it explicitly)
        rc, out = s_client(env.proxy.port, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
        assert not handshake_ok(out), f"TLSv1.1 accepted:\n{out[-2000:]}"
        # and Python clients pinned to each version get answers
        for v in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            ctx = tls_client_context(cafile=certs().ca, min_version=v, max_version=v)
            r = request(env.proxy.port, "GET", "/x", ssl_context=ctx)
            assert r.status == 200, (v, r)


def test_tls_protocols_tls13_only():
    with Env(proxy_tls=listener_tls(), extra_config="tls_protocols TLSv1.3") as env:
        rc, out = s_client(env.proxy.port, "-tls1_2")
        assert rc != 0 and not handshake_ok(out), f"TLSv1.2 accepted:\n{out[-2000:]}"
        rc, out = s_client(env.proxy.port, "-tls1_3", *verify_args())
        assert rc == 0 and handshake_ok(out, "TLSv1.3"), out[-2000:]
        assert env.request("GET", "/x").status == 200


def test_tls_protocols_tls12_only():
    with Env(proxy_tls=listener_tls(), extra_config="tls_protocols TLSv1.2") as env:
        rc, out = s_client(env.proxy.port, "-tls1_3")
        assert rc != 0 and not handshake_ok(out), f"TLSv1.3 accepted:\n{out[-2000:]}"
        rc, out = s_client(env.proxy.port, "-tls1_2", *verify_args())
        assert rc == 0 and handshake_ok(out, "TLSv1.2"), out[-2000:]


def test_tls_ciphers_and_ciphersuites():
    # the test certificates have EC keys: ECDSA cipher names for TLS 1.2
    extra = ("tls_ciphers ECDHE-ECDSA-AES128-GCM-SHA256\n"
             "tls_ciphersuites TLS_CHACHA20_POLY1305_SHA256")
    with Env(proxy_tls=listener_tls(), extra_config=extra) as env:
        p = env.proxy.port
        rc, out = s_client(p, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256")
        assert rc == 0 and handshake_ok(out, "TLSv1.2"), out[-2000:]
        assert "ECDHE-ECDSA-AES128-GCM-SHA256" in out, out[-2000:]
        rc, out = s_client(p, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384")
        assert not handshake_ok(out), f"a cipher outside tls_ciphers was accepted:\n{out[-2000:]}"
        rc, out = s_client(p, "-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256")
        assert rc == 0 and handshake_ok(out, "TLSv1.3"), out[-2000:]
        assert "TLS_CHACHA20_POLY1305_SHA256" in out, out[-2000:]
        rc, out = s_client(p, "-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384")
        assert not handshake_ok(out), \
            f"a suite outside tls_ciphersuites was accepted:\n{out[-2000:]}"


def test_tls_session_resumption():
    with Env(proxy_tls=listener_tls()) as env:
        p = env.proxy.port
        req = b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        for flag in ("-tls1_2", "-tls1_3"):
            sess = os.path.join(env.tmp, f"sess{flag}.pem")
            rc, out = s_client(p, flag, "-sess_out", sess, data=req, ign_eof=True)
            assert handshake_ok(out) and "HTTP/1.1 200" in out, f"{flag} first:\n{out[-2000:]}"
            assert os.path.exists(sess) and os.path.getsize(sess) > 0, f"{flag}: no session saved"
            rc, out = s_client(p, flag, "-sess_in", sess, data=req, ign_eof=True)
            assert "HTTP/1.1 200" in out, f"{flag} resumed:\n{out[-2000:]}"
            assert re.search(r"^Reused, ", out, re.M), f"{flag}: session not resumed:\n{out[-2000:]}"
        # Python: a session from one connection resumes on the next
        ctx = tls_client_context(cafile=certs().ca)
        with Client(p, ssl_context=ctx) as first:
            assert first.request("GET", "/x").status == 200
            sess = first.sock.session
        sock = socket.create_connection(("127.0.0.1", p), timeout=5)
        with ctx.wrap_socket(sock, server_hostname="127.0.0.1", session=sess) as s:
            s.sendall(req)
            r = read_response(_Reader(s))
            assert r.status == 200, r
            assert s.session_reused, "Python client session was not resumed"


def test_tls_forwarded_proto_and_plain_listener_side_by_side():
    c = certs()
    with Env(proxy=False) as env:
        plain, tls = free_port(), free_port()
        env.start_proxy(f"listen 127.0.0.1:{plain}\nlisten 127.0.0.1:{tls} tls\n"
                        f"tls_certificate {c.server}\ntls_certificate_key {c.server_key}",
                        port=plain)
        ctx = tls_client_context(cafile=c.ca)
        # a client's own X-Forwarded-Proto is replaced, never passed on
        spoof = {"X-Forwarded-Proto": "http"}
        r = request(tls, "GET", "/x", spoof, ssl_context=ctx)
        assert r.status == 200, r
        assert r.header_all("X-Seen-Forwarded-Proto") == ["https"], r.headers
        r = request(plain, "GET", "/x", {"X-Forwarded-Proto": "https"})
        assert r.status == 200, r
        assert r.header_all("X-Seen-Forwarded-Proto") == ["http"], r.headers
        # one key, first over plain HTTP, then replayed over TLS
        key = new_key()
        r1 = request(plain, "POST", "/orders", {"Idempotency-Key": key}, b"{}")
        assert r1.status == 201, r1
        r2 = request(tls, "POST", "/orders", {"Idempotency-Key": key}, b"{}", ssl_context=ctx)
        assert r2.status == 201 and r2.header("Idempotent-Replayed") == "true", r2
        assert r2.body == r1.body
        assert env.upstream.count(key) == 1
        # plain HTTP on the plain port does not get a TLS answer and vice versa
        assert request(plain, "GET", "/y").status == 200


def test_tls_full_chain_is_served():
    c = certs()
    tls = {"cert": c.chain, "key": c.chain_key, "ca": c.ca}
    with Env(proxy_tls=tls) as env:
        # the client trusts only the root: the intermediate must come from the server
        r = env.request("GET", "/x")
        assert r.status == 200, r
        rc, out = s_client(env.proxy.port, "-showcerts", *verify_args())
        assert rc == 0 and "Verify return code: 0 (ok)" in out, out[-2000:]
        assert "idemproxy test intermediate" in out, out[-2000:]


def test_tls_large_bodies_and_pipelining():
    c = certs()
    up = upstream_tls(c.server, c.server_key)
    with Env(proxy_tls=listener_tls(c), upstream_tls=up,
             extra_config=f"upstream_tls_ca {c.ca}\nmax_request_body 4m") as env:
        n = 3 * 1024 * 1024 + 17
        r = env.request("GET", "/big", {"X-Test-Body-Size": str(n)}, timeout=20)
        assert r.status == 200 and len(r.body) == n, (r.status, len(r.body))
        r = env.request("GET", "/big", {"X-Test-Body-Size": str(n), "X-Test-Chunked": "1"},
                        timeout=20)
        assert r.status == 200 and len(r.body) == n, (r.status, len(r.body))
        body = os.urandom(2 * 1024 * 1024)
        key = new_key()
        r = env.post("/upload", key=key, body=body, timeout=20)
        assert r.status == 201, r
        doc = r.json()
        assert doc["body_len"] == len(body) and doc["body_fnv"] == fnv1a64(body), doc
        r = env.request("PUT", "/stream", body=body, timeout=20)  # uncovered: streamed
        assert r.status == 200, r
        assert r.json()["body_fnv"] == fnv1a64(body)
        # two requests in one TLS write are answered in order
        ctx = tls_client_context(cafile=c.ca)
        with Client(env.proxy.port, ssl_context=ctx) as cl:
            cl.send(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\n\r\n")
            a, b = cl.read_response(), cl.read_response()
        assert a.json()["path"] == "/one" and b.json()["path"] == "/two", (a, b)


def _vm_rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def test_tls_large_download_read_slowly_stays_bounded():
    # 64 MB from a TLS upstream to a TLS client that reads slowly for 2 s:
    # back-pressure must hold through both bufferevent_openssl layers
    from harness import SANITIZE
    from test_http import STREAM_ENV  # a small ASan quarantine, or RSS tracks bytes streamed
    c = certs()
    size = (16 if SANITIZE else 64) * 1000 * 1000
    up = upstream_tls(c.server, c.server_key)
    with Env(proxy_tls=listener_tls(c), upstream_tls=up, proxy_env=STREAM_ENV,
             extra_config=f"workers 1\nupstream_tls_ca {c.ca}") as env:
        pid = env.proxy.pid
        assert env.request("GET", "/warm").status == 200
        before = peak = _vm_rss_kb(pid)
        ctx = tls_client_context(cafile=c.ca)
        raw_sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        raw_sock.settimeout(10 * SLOW)
        raw_sock.connect(("127.0.0.1", env.proxy.port))
        received = 0
        with ctx.wrap_socket(raw_sock, server_hostname="127.0.0.1") as s:
            s.sendall(b"GET /big HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                      b"X-Test-Body-Size: %d\r\n\r\n" % size)
            head = b""
            while b"\r\n\r\n" not in head:
                d = s.recv(65536)
                assert d, f"closed before the head: {head!r}"
                head += d
            head, _, first = head.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 "), head
            received = len(first)
            slow_until = time.monotonic() + 2.0
            while time.monotonic() < slow_until:
                d = s.recv(16384)
                assert d, "closed early"
                received += len(d)
                peak = max(peak, _vm_rss_kb(pid))
                time.sleep(0.05)
            last = 0
            while received < size:
                d = s.recv(1 << 20)
                assert d, f"closed after {received} of {size} bytes"
                received += len(d)
                if received - last > 4 * 1000 * 1000:
                    last = received
                    peak = max(peak, _vm_rss_kb(pid))
        assert received == size, received
        grew_mb = (peak - before) / 1024
        assert grew_mb < 30, f"RSS grew {grew_mb:.0f} MB ({before} kB -> {peak} kB) over TLS"


def test_tls_concurrent_clients_one_execution():
    c = certs()
    with Env(proxy_tls=listener_tls(c)) as env:
        key = new_key()

        def one(i):
            return env.post("/orders", key=key, body=b"{}", headers={"X-Test-Delay": "300"})

        results = parallel(one, 20, timeout=30)
        errors = [r for r in results if isinstance(r, Exception)]
        assert not errors, errors[:3]
        codes = sorted(r.status for r in results)
        assert set(codes) <= {201, 409} and 201 in codes, codes
        assert env.upstream.count(key) == 1


# ---------------------------------------------------------------- handshake failures


def send_bytes(port, data, timeout=1.5):
    """Sends data on a new connection, half-closes, reads until the peer
    closes or timeout; returns what was read. The peer closing first (a
    reset, ENOTCONN on the half-close) is fine."""
    out = b""
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            return out
        while time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except (socket.timeout, OSError):
                break
            if not chunk:
                break
            out += chunk
    return out


def _info_handshake_line(level, msg):
    # debug lines skipped: the harness's own port probe, accepted once a
    # worker runs, may end as a handshake the client closed
    return level != "debug" and "tls handshake" in msg.lower() and "127.0.0.1" in msg


def test_tls_plain_http_to_tls_port_is_logged_and_served_after():
    with Env(proxy_tls=listener_tls()) as env:
        time.sleep(0.2)
        since = len(env.proxy.error_log())
        out = raw(env.proxy.port, b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", timeout=5)
        # whatever it answers (nothing, an alert, or a plain 400), it is not the upstream's
        assert b"X-Upstream-Count" not in out, out[:300]
        level, msg = wait_log(env.proxy, _info_handshake_line, since,
                              what="a 'TLS handshake' line naming the client")
        assert level == "info", f"handshake failure logged at {level}: {msg}"
        assert env.upstream.count() == 0
        assert env.request("GET", "/x").status == 200
        assert env.proxy.running()


def test_tls_garbage_handshakes_are_logged_and_served_after():
    with Env(proxy_tls=listener_tls()) as env:
        time.sleep(0.2)
        since = len(env.proxy.error_log())
        shapes = [
            b"\x16\x03\x01\x00\x05hello",                       # a record too short for a hello
            b"\x16\x03\x01\xff\xff" + os.urandom(300),          # a record that never ends
            os.urandom(2000),                                   # noise
            b"\x15\x03\x03\x00\x02\x02\x28",                    # an alert before any hello
        ]
        for data in shapes:
            send_bytes(env.proxy.port, data)
        level, msg = wait_log(env.proxy, _info_handshake_line, since,
                              what="a 'TLS handshake' line naming the client")
        assert level == "info", f"handshake failure logged at {level}: {msg}"
        # a reason from OpenSSL is part of the line (more than the fixed words)
        assert len(msg) > len("TLS handshake failed 127.0.0.1:12345"), msg
        # many at once do not hurt either
        results = parallel(lambda i: send_bytes(env.proxy.port, os.urandom(600)), 30)
        assert not [r for r in results if isinstance(r, Exception)], results
        for _ in range(3):
            assert env.request("GET", "/x").status == 200
        assert env.proxy.running()


def test_tls_handshake_failure_line_names_client_address_and_port():
    # docs/configuration.md: "client ADDR:PORT: TLS handshake failed: REASON"
    with Env(proxy_tls=listener_tls()) as env:
        time.sleep(0.2)
        since = len(env.proxy.error_log())
        with socket.create_connection(("127.0.0.1", env.proxy.port), timeout=5) as s:
            local_port = s.getsockname()[1]
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                s.recv(100)
            except OSError:
                pass
        level, msg = wait_log(env.proxy, _info_handshake_line, since,
                              what="a 'TLS handshake' line")
        assert level == "info", (level, msg)
        assert re.search(rf"client 127\.0\.0\.1:{local_port}: TLS handshake failed: \S", msg), \
            f"expected 'client 127.0.0.1:{local_port}: TLS handshake failed: REASON', got: {msg}"


def test_tls_stalled_handshake_is_closed_after_client_header_timeout():
    with Env(proxy_tls=listener_tls(), extra_config="client_header_timeout 1s") as env:
        time.sleep(0.2)
        since = len(env.proxy.error_log())
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", env.proxy.port), timeout=6) as s:
            s.sendall(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, then silence
            try:
                data = s.recv(100)
            except (socket.timeout, OSError):
                data = None
        dt = time.monotonic() - t0
        assert data is not None, "the stalled handshake was not closed within 6s"
        assert dt < 4 * SLOW, f"closed after {dt:.1f}s with client_header_timeout 1s"
        level, msg = wait_log(env.proxy, _info_handshake_line, since,
                              what="the handshake timeout in the log")
        assert level == "info", (level, msg)
        assert "time" in msg.lower(), f"the line does not say it timed out: {msg}"
        assert env.request("GET", "/x").status == 200


def test_tls_client_renegotiation_is_refused():
    with Env(proxy_tls=listener_tls()) as env:
        argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{env.proxy.port}", "-tls1_2"]
        p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
        try:
            time.sleep(0.5 * SLOW)
            try:
                p.stdin.write(b"R\n")  # s_client: renegotiate
                p.stdin.flush()
                time.sleep(0.5 * SLOW)
            except BrokenPipeError:
                pass
            try:
                p.stdin.close()
            except BrokenPipeError:
                pass
            p.wait(OPENSSL_TIMEOUT)
            out = p.stdout.read().decode(errors="replace")
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        assert "RENEGOTIATING" in out, out[-1500:]
        assert "no renegotiation" in out or "alert" in out.lower(), \
            f"client-initiated renegotiation was not refused:\n{out[-1500:]}"
        assert env.proxy.running()
        assert env.request("GET", "/x").status == 200


def test_tls_completed_exchanges_are_not_logged_as_handshake_failures():
    # Python's ssl module (like many clients) closes without close_notify
    # after its answer; that is a normal end, not a failed handshake.
    c = certs()
    with Env(proxy_tls=listener_tls(c)) as env:
        time.sleep(0.2)
        since = len(env.proxy.error_log())
        for _ in range(3):
            assert env.request("GET", "/x").status == 200
        ctx = tls_client_context(cafile=c.ca)
        with Client(env.proxy.port, ssl_context=ctx) as cl:
            assert cl.request("GET", "/y").status == 200
        for _ in range(2):
            rc, status, _, _, err = curl("--cacert", c.ca, f"https://127.0.0.1:{env.proxy.port}/z")
            assert rc == 0 and status == 200, err
        time.sleep(0.3)
        bad = [f"{lv} {m}" for lv, m in log_entries(env.proxy, since)
               if lv != "debug" and "tls handshake" in m.lower()]
        assert not bad, (f"{len(bad)} completed TLS exchange(s) logged as handshake failures, "
                         f"e.g. {bad[0]}")


def test_tls_client_that_distrusts_the_certificate_is_logged():
    c = certs()
    with Env(proxy_tls=listener_tls(c)) as env:
        time.sleep(0.2)
        since = len(env.proxy.error_log())
        ctx = tls_client_context(cafile=c.other_ca)
        try:
            request(env.proxy.port, "GET", "/x", ssl_context=ctx, timeout=5)
            raise AssertionError("a client trusting another CA completed the handshake")
        except ssl.SSLCertVerificationError:
            pass
        level, msg = wait_log(env.proxy, _info_handshake_line, since,
                              what="a 'TLS handshake' line for the refused certificate")
        assert level == "info", (level, msg)
        assert "unknown ca" in msg.lower() or "alert" in msg.lower(), \
            f"the line does not give OpenSSL's reason: {msg}"
        assert env.request("GET", "/x").status == 200


# ---------------------------------------------------------------- configuration


def test_tls_key_readable_by_others_is_refused():
    c = certs()
    with Env(proxy=False) as env:
        for mode in (0o644, 0o640, 0o604):
            keyfile = os.path.join(env.tmp, f"key-{mode:o}.pem")
            shutil.copyfile(c.server_key, keyfile)
            os.chmod(keyfile, mode)
            path, code, out = check_config(env, [f"tls_certificate {c.server}",
                                                 f"tls_certificate_key {keyfile}"],
                                           name=f"mode{mode:o}.conf")
            want = (f"{path}:7: tls_certificate_key: {keyfile} is readable by group or others "
                    f"(mode {mode:04o}); chmod 600 it")
            assert code == 1, f"mode {mode:o}: -t exit {code}: {out}"
            assert want in out, f"mode {mode:o}: expected\n  {want}\nin\n  {out}"
            # and a start with it fails the same way
            code2, out2, err2 = run_idemproxy(["-c", path], timeout=10)
            assert code2 == 1, f"mode {mode:o}: start exit {code2}: {out2}{err2}"
            assert "readable by group or others" in out2 + err2 + \
                _read(os.path.join(env.tmp, "check-error.log")), (out2, err2)
        # 0600 and 0400 are fine
        for mode in (0o600, 0o400):
            keyfile = os.path.join(env.tmp, f"key-{mode:o}.pem")
            shutil.copyfile(c.server_key, keyfile)
            os.chmod(keyfile, mode)
            path, code, out = check_config(env, [f"tls_certificate {c.server}",
                                                 f"tls_certificate_key {keyfile}"],
                                           name=f"mode{mode:o}.conf")
            assert code == 0, f"mode {mode:o}: -t exit {code}: {out}"


def test_tls_listener_without_certificate_is_a_config_error():
    c = certs()
    with Env(proxy=False, upstream=False, redis=False) as env:
        # neither certificate nor key: the message names the file and a line
        path, code, out = check_config(env, [], name="nocert.conf")
        assert code == 1, f"-t exit {code}: {out}"
        assert re.search(re.escape(path) + r":\d+: .*tls_certificate", out), out
        # a key without a certificate
        path, code, out = check_config(env, [f"tls_certificate_key {c.server_key}"],
                                       name="nocert2.conf")
        assert code == 1 and re.search(re.escape(path) + r":\d+: .*tls_certificate", out), out
        # a certificate without a key
        path, code, out = check_config(env, [f"tls_certificate {c.server}"], name="nokey.conf")
        assert code == 1 and re.search(re.escape(path) + r":\d+: .*tls_certificate_key", out), out


def test_tls_bad_values_are_config_errors():
    c = certs()
    good = [f"tls_certificate {c.server}", f"tls_certificate_key {c.server_key}"]
    cases = {
        "ciphers": good + ["tls_ciphers NO-SUCH-CIPHER-AT-ALL"],
        "ciphersuites": good + ["tls_ciphersuites TLS_NO_SUCH_SUITE"],
        "protocols": good + ["tls_protocols SSLv3"],
        "cert-missing": [f"tls_certificate {c.path('no-such.pem')}",
                         f"tls_certificate_key {c.server_key}"],
        "cert-garbage": [f"tls_certificate {c.garbage}", f"tls_certificate_key {c.server_key}"],
        "key-mismatch": [f"tls_certificate {c.server}", f"tls_certificate_key {c.server2_key}"],
        "verify": ["upstream_tls_verify maybe"],
        "client-cert-without-key": [f"upstream_tls_certificate {c.client}"],
        "client-key-without-cert": [f"upstream_tls_certificate_key {c.client_key}"],
        "client-key-mismatch": [f"upstream_tls_certificate {c.client}",
                                f"upstream_tls_certificate_key {c.server_key}"],
        "upstream-ca": [f"upstream_tls_ca {c.path('no-such-ca.pem')}"],
        "upstream-ca-garbage": [f"upstream_tls_ca {c.garbage}"],
    }
    failures = []
    with Env(proxy=False, upstream=False, redis=False) as env:
        for name, extra in cases.items():
            upstream_only = name in ("verify", "upstream-ca", "upstream-ca-garbage") or \
                name.startswith("client-")
            path, code, out = check_config(env, extra, name=f"bad-{name}.conf",
                                           tls_listener=not upstream_only,
                                           scheme="https" if upstream_only else "http")
            if code != 1 or not re.search(re.escape(path) + r":\d+: ", out):
                failures.append(f"{name}: exit {code}: {out.strip()[:300]}")
        # the good ones pass
        path, code, out = check_config(env, good + ["tls_protocols TLSv1.2 TLSv1.3",
                                                    "tls_ciphers ECDHE-ECDSA-AES128-GCM-SHA256",
                                                    "tls_ciphersuites TLS_AES_128_GCM_SHA256",
                                                    f"upstream_tls_ca {c.ca}",
                                                    "upstream_tls_verify on"],
                                       name="good.conf", scheme="https")
        if code != 0:
            failures.append(f"good config: exit {code}: {out.strip()[:300]}")
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------- upstream


def test_https_upstream_success_and_replay():
    c = certs()
    up = upstream_tls(c.server, c.server_key)
    with Env(upstream_tls=up, extra_config=f"upstream_tls_ca {c.ca}") as env:
        key = new_key()
        r1 = env.post("/orders", key=key, body=b'{"x":1}')
        assert r1.status == 201, r1
        assert r1.header("X-Seen-Tls-Protocol") in ("TLSv1.2", "TLSv1.3"), r1.headers
        # a request that came in over plain HTTP says so, even over an https upstream
        assert r1.header("X-Seen-Forwarded-Proto") == "http", r1.headers
        r2 = env.post("/orders", key=key, body=b'{"x":1}')
        assert r2.status == 201 and r2.header("Idempotent-Replayed") == "true", r2
        assert r2.body == r1.body
        assert env.upstream.count(key) == 1
        r = env.request("GET", "/plain-get")
        assert r.status == 200, r


def test_https_upstream_offers_alpn_http11_and_no_sni_for_an_ip():
    c = certs()
    up = upstream_tls(c.server, c.server_key)
    with Env(upstream_tls=up, extra_config=f"upstream_tls_ca {c.ca}") as env:
        r = env.request("GET", "/x")
        assert r.status == 200, r
        assert r.header("X-Seen-Alpn") == "http/1.1", \
            f"idemproxy did not offer ALPN http/1.1 upstream: {r.headers}"
        # RFC 6066 §3: an IP literal is never sent as SNI
        assert r.header("X-Seen-Sni") == "none", f"SNI for an IP address: {r.headers}"


def test_https_upstream_keepalive_pool():
    c = certs()
    up = upstream_tls(c.server, c.server_key)
    with Env(upstream_tls=up, extra_config=f"workers 1\nupstream_tls_ca {c.ca}") as env:
        for i in range(5):
            r = env.post("/orders", key=new_key(), body=b"{}") if i % 2 else \
                env.request("GET", f"/x{i}")
            assert r.status in (200, 201), r
        assert env.upstream.count() == 5
        assert env.upstream.connections() == 1, \
            f"expected one pooled TLS upstream connection, saw {env.upstream.connections()}"


def _upstream_failure(cert, key, reasons, extra=""):
    """A TLS upstream with cert; checks 502 upstream-unavailable, no
    execution, the reason logged, and the key released. Returns env bits
    for more checks."""
    c = certs()
    up = upstream_tls(cert, key)
    with Env(upstream_tls=up, extra_config=f"upstream_tls_ca {c.ca}\n{extra}",
             expect_errors=True) as env:
        since = len(env.proxy.error_log())
        key_ = new_key()
        r = env.post("/orders", key=key_, body=b"{}")
        assert_problem(r, 502, "upstream-unavailable")
        assert env.upstream.count() == 0, "the upstream executed a request it should never see"
        upstream_failure_log(env.proxy, since, reasons)
        # the key was released: a retry is forwarded again (and fails the same way)
        r = env.post("/orders", key=key_, body=b"{}")
        assert_problem(r, 502, "upstream-unavailable")
        # after the fix (a good certificate on the same port) the same key succeeds
        port = env.upstream.port
        env.upstream.stop()
        env.upstream = Upstream(port=port, tmpdir=env.tmp,
                                tls=upstream_tls(c.server, c.server_key))
        r = wait_until(lambda: (lambda resp: resp if resp.status == 201 else None)(
            env.post("/orders", key=key_, body=b"{}")), 5 * SLOW, interval=0.2,
            what="the retry after the upstream certificate was fixed")
        assert r.header("Idempotent-Replayed") is None, r
        assert env.upstream.count(key_) == 1


def test_https_upstream_untrusted_ca_is_502():
    c = certs()
    _upstream_failure(c.untrusted, c.untrusted_key,
                      ["unable to get local issuer certificate", "self-signed certificate",
                       "self signed certificate", "unable to verify the first certificate"])


def test_https_upstream_expired_certificate_is_502():
    c = certs()
    _upstream_failure(c.expired, c.expired_key, ["certificate has expired"])


def test_https_upstream_wrong_host_name_is_502():
    c = certs()
    _upstream_failure(c.wrong_host, c.wrong_host_key,
                      ["hostname mismatch", "IP address mismatch"])


def test_https_upstream_system_store_by_default():
    # without upstream_tls_ca the system store is used: our private CA is not in it
    c = certs()
    up = upstream_tls(c.server, c.server_key)
    with Env(upstream_tls=up, expect_errors=True) as env:
        since = len(env.proxy.error_log())
        r = env.post("/orders", key=new_key(), body=b"{}")
        assert_problem(r, 502, "upstream-unavailable")
        assert env.upstream.count() == 0
        upstream_failure_log(env.proxy, since,
                             ["unable to get local issuer certificate", "certificate verify failed",
                              "self-signed certificate"])


def test_https_upstream_server_name_override():
    c = certs()
    up = upstream_tls(c.wrong_host, c.wrong_host_key)
    extra = f"upstream_tls_ca {c.ca}\nupstream_tls_server_name wrong.example"
    with Env(upstream_tls=up, extra_config=extra) as env:
        key = new_key()
        r = env.post("/orders", key=key, body=b"{}")
        assert r.status == 201, r
        assert r.header("X-Seen-Sni") == "wrong.example", r.headers
        assert env.upstream.count(key) == 1


def test_https_upstream_server_name_is_sent_as_sni():
    c = certs()
    up = upstream_tls(c.server, c.server_key)
    extra = f"upstream_tls_ca {c.ca}\nupstream_tls_server_name localhost"
    with Env(upstream_tls=up, extra_config=extra) as env:
        r = env.request("GET", "/x")
        assert r.status == 200, r
        assert r.header("X-Seen-Sni") == "localhost", r.headers


def test_https_upstream_verify_off_warns_and_connects():
    c = certs()
    up = upstream_tls(c.untrusted, c.untrusted_key)
    with Env(upstream_tls=up, extra_config="upstream_tls_verify off") as env:
        level, msg = wait_log(env.proxy, lambda lv, m: "upstream_tls_verify" in m
                              or "verif" in m.lower(), what="the upstream_tls_verify warning")
        assert level == "warn", f"upstream_tls_verify off logged at {level}: {msg}"
        key = new_key()
        r = env.post("/orders", key=key, body=b"{}")
        assert r.status == 201, r
        assert env.upstream.count(key) == 1
    # an expired certificate with a wrong name too
    up = upstream_tls(c.expired, c.expired_key)
    with Env(upstream_tls=up, extra_config="upstream_tls_verify off") as env:
        assert env.request("GET", "/x").status == 200


def test_https_upstream_mtls():
    c = certs()
    up = upstream_tls(c.server, c.server_key, client_ca=c.ca)
    with Env(upstream_tls=up, extra_config=f"upstream_tls_ca {c.ca}",
             expect_errors=True) as env:
        since = len(env.proxy.error_log())
        r = env.post("/orders", key=new_key(), body=b"{}")
        assert r.status == 502, f"no client certificate, yet {r!r}"
        assert env.upstream.count() == 0
        assert len(env.proxy.error_log()) > since, "nothing logged for the refused handshake"
        r = env.request("GET", "/x")
        assert r.status == 502, r
        # with the client certificate
        env.start_proxy(f"upstream_tls_ca {c.ca}\nupstream_tls_certificate {c.client}\n"
                        f"upstream_tls_certificate_key {c.client_key}")
        key = new_key()
        r = env.post("/orders", key=key, body=b"{}")
        assert r.status == 201, r
        assert r.header("X-Seen-Client-Cn") == "idem-test-client", r.headers
        assert env.upstream.count(key) == 1


def test_https_upstream_pooled_connection_closed_by_upstream():
    # the upstream restarts while idemproxy holds a pooled TLS connection to it:
    # a covered request must not be lost on the dead connection nor sent twice
    c = certs()
    up = upstream_tls(c.server, c.server_key)
    with Env(upstream_tls=up, extra_config=f"workers 1\nupstream_tls_ca {c.ca}") as env:
        assert env.request("GET", "/warm").status == 200
        port = env.upstream.port
        env.upstream.stop()
        env.upstream = Upstream(port=port, tmpdir=env.tmp, tls=up)
        time.sleep(0.2)
        key = new_key()
        r = env.post("/orders", key=key, body=b"{}")
        assert r.status == 201, f"covered request after the upstream closed the pooled connection: {r!r}"
        assert env.upstream.count(key) == 1
        assert env.request("GET", "/after").status == 200
        assert env.upstream.count() == 2


def test_https_upstream_stalled_handshake_times_out():
    # a server that accepts TCP but never answers the ClientHello
    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        lst.bind(("127.0.0.1", 0))
        lst.listen(16)
        port = lst.getsockname()[1]
        with Env(upstream=False, proxy=False, expect_errors=True) as env:
            env.upstream_port = port
            env.start_proxy(f"upstream https://127.0.0.1:{port}\nupstream_connect_timeout 1s\n"
                            "upstream_timeout 5s\nlock_ttl 30s")
            key = new_key()
            t0 = time.monotonic()
            r = env.post("/orders", key=key, body=b"{}", timeout=15)
            dt = time.monotonic() - t0
            assert_problem(r, 502, "upstream-unavailable")
            assert dt < 3 * SLOW, f"a stalled upstream handshake took {dt:.1f}s to fail"
            # nothing was sent: the key is released
            assert_problem(env.post("/orders", key=key, body=b"{}", timeout=15), 502,
                           "upstream-unavailable")
    finally:
        lst.close()


def test_https_upstream_that_speaks_plain_http():
    with Env(proxy=False, expect_errors=True) as env:
        env.start_proxy(f"upstream https://127.0.0.1:{env.upstream_port}")
        since = len(env.proxy.error_log())
        key = new_key()
        assert_problem(env.post("/orders", key=key, body=b"{}"), 502, "upstream-unavailable")
        assert_problem(env.post("/orders", key=key, body=b"{}"), 502, "upstream-unavailable")
        assert env.upstream.count() == 0
        upstream_failure_log(env.proxy, since, ["wrong version number", "TLS handshake"])


def test_https_upstream_mtls_refusal_is_logged_with_its_reason():
    # Under TLS 1.3 the upstream's "certificate required" alert arrives after
    # the client side thinks the handshake is done; the log should still say
    # it was a TLS refusal, not just "connection closed".
    c = certs()
    up = upstream_tls(c.server, c.server_key, client_ca=c.ca)
    with Env(upstream_tls=up, extra_config=f"upstream_tls_ca {c.ca}",
             expect_errors=True) as env:
        since = len(env.proxy.error_log())
        r = env.post("/orders", key=new_key(), body=b"{}")
        assert r.status == 502, r
        upstream_failure_log(env.proxy, since, ["certificate required", "alert",
                                                "handshake failure"])


def test_https_upstream_mtls_refusal_releases_the_key():
    # The upstream refused the TLS session: it never saw the request, so the
    # key should be released (502 upstream-unavailable again on a retry),
    # not held as outcome-unknown for lock_ttl.
    c = certs()
    up = upstream_tls(c.server, c.server_key, client_ca=c.ca)
    with Env(upstream_tls=up, extra_config=f"upstream_tls_ca {c.ca}",
             expect_errors=True) as env:
        key = new_key()
        r = env.post("/orders", key=key, body=b"{}")
        assert_problem(r, 502, "upstream-unavailable")
        r = env.post("/orders", key=key, body=b"{}")
        assert r.status == 502, f"retry after a refused TLS session: {r!r}"
        assert env.upstream.count() == 0


def test_upstream_tls_certificate_key_mode_checked():
    c = certs()
    with Env(proxy=False, upstream=False, redis=False) as env:
        keyfile = os.path.join(env.tmp, "client-key.pem")
        shutil.copyfile(c.client_key, keyfile)
        os.chmod(keyfile, 0o644)
        path, code, out = check_config(env, [f"upstream_tls_certificate {c.client}",
                                             f"upstream_tls_certificate_key {keyfile}"],
                                       tls_listener=False, name="clientkey.conf", scheme="https")
        assert code == 1, f"-t exit {code}: {out}"
        assert "readable by group or others" in out and f"{path}:7:" in out, out


# ---------------------------------------------------------------- SIGHUP


def test_tls_sighup_rotates_certificate_and_keeps_old_on_bad_one():
    c = certs()
    with Env(proxy=False, expect_errors=True) as env:
        cert = os.path.join(env.tmp, "live-cert.pem")
        key = os.path.join(env.tmp, "live-key.pem")
        shutil.copyfile(c.server, cert)
        shutil.copyfile(c.server_key, key)
        os.chmod(key, 0o600)
        env.start_proxy(tls={"cert": cert, "key": key, "ca": c.ca})
        p = env.proxy.port
        old_fp, new_fp = der_fingerprint(c.server), der_fingerprint(c.server2)
        assert peer_fingerprint(p) == old_fp
        ctx = tls_client_context(cafile=c.ca)
        with Client(p, ssl_context=ctx) as kept:
            assert kept.request("GET", "/before").status == 200
            # rotate: new certificate and key, then SIGHUP
            shutil.copyfile(c.server2, cert)
            shutil.copyfile(c.server2_key, key)
            since = len(env.proxy.error_log())
            env.proxy.signal(signal.SIGHUP)
            wait_until(lambda: peer_fingerprint(p) == new_fp, 5 * SLOW, interval=0.1,
                       what="the new certificate on new connections")
            # the connection made before the reload goes on
            assert kept.request("GET", "/after").status == 200
        assert "reload failed" not in env.proxy.error_log()[since:]
        assert env.request("GET", "/x").status == 200

        # a garbage certificate: the reload fails, the last good one stays
        since = len(env.proxy.error_log())
        shutil.copyfile(c.garbage, cert)
        env.proxy.signal(signal.SIGHUP)
        level, msg = wait_log(env.proxy, lambda lv, m: "reload failed" in m or
                              ("tls_certificate" in m and lv in ("error", "warn")), since,
                              timeout=5, what="the failed reload in the error log")
        time.sleep(0.3)
        assert env.proxy.running(), "idemproxy died on a bad certificate at reload"
        assert peer_fingerprint(p) == new_fp, "the old certificate was not kept"
        assert env.request("GET", "/x").status == 200

        # a certificate that does not match the key: refused the same way
        since = len(env.proxy.error_log())
        shutil.copyfile(c.server, cert)  # key is still server2's
        env.proxy.signal(signal.SIGHUP)
        wait_log(env.proxy, lambda lv, m: "reload failed" in m or
                 ("tls_certificate" in m and lv in ("error", "warn")), since,
                 timeout=5, what="the failed reload (key mismatch) in the error log")
        time.sleep(0.3)
        assert env.proxy.running()
        assert peer_fingerprint(p) == new_fp, "a mismatched certificate was installed"

        # fixed again: the next reload takes it
        shutil.copyfile(c.server_key, key)
        env.proxy.signal(signal.SIGHUP)
        wait_until(lambda: peer_fingerprint(p) == old_fp, 5 * SLOW, interval=0.1,
                   what="the fixed certificate after the next reload")
        assert env.request("GET", "/x").status == 200


def test_tls_settings_change_by_reload():
    c = certs()
    with Env(proxy=False) as env:
        plain, tls = free_port(), free_port()
        base = (f"listen 127.0.0.1:{plain}\ntls_certificate {c.server}\n"
                f"tls_certificate_key {c.server_key}")
        env.start_proxy(base, port=plain)
        assert not port_open(tls)
        # a TLS listener added by reload, restricted to TLS 1.3
        since = len(env.proxy.error_log())
        env.proxy.write_config(base + f"\nlisten 127.0.0.1:{tls} tls\ntls_protocols TLSv1.3")
        env.proxy.signal(signal.SIGHUP)
        wait_log(env.proxy, lambda lv, m: "reload complete" in m or "reload failed" in m, since,
                 timeout=5, what="the reload")
        ctx = tls_client_context(cafile=c.ca)
        r = wait_until(lambda: request(tls, "GET", "/x", ssl_context=ctx, timeout=3), 3 * SLOW,
                       what="the TLS listener added by reload")
        assert r.status == 200 and r.header("X-Seen-Forwarded-Proto") == "https", r
        rc, out = s_client(tls, "-tls1_2")
        assert not handshake_ok(out), f"TLSv1.2 accepted after reload to TLSv1.3:\n{out[-1500:]}"
        # back to both versions
        since = len(env.proxy.error_log())
        env.proxy.write_config(base + f"\nlisten 127.0.0.1:{tls} tls")
        env.proxy.signal(signal.SIGHUP)
        wait_log(env.proxy, lambda lv, m: "reload complete" in m, since, timeout=5,
                 what="the second reload")
        rc, out = wait_until(lambda: (lambda res: res if handshake_ok(res[1], "TLSv1.2") else None)(
            s_client(tls, "-tls1_2")), 3 * SLOW, what="TLSv1.2 accepted again")
        assert request(plain, "GET", "/x").status == 200


def test_tls_session_ticket_survives_reload():
    with Env(proxy_tls=listener_tls()) as env:
        p = env.proxy.port
        ctx = tls_client_context(cafile=certs().ca)
        with Client(p, ssl_context=ctx) as first:
            assert first.request("GET", "/x").status == 200
            sess = first.sock.session
        since = len(env.proxy.error_log())
        env.proxy.signal(signal.SIGHUP)
        wait_log(env.proxy, lambda lv, m: "reload complete" in m, since, timeout=5,
                 what="reload complete")
        sock = socket.create_connection(("127.0.0.1", p), timeout=5)
        with ctx.wrap_socket(sock, server_hostname="127.0.0.1", session=sess) as s:
            s.sendall(b"GET /y HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            r = read_response(_Reader(s))
            assert r.status == 200, r
            assert s.session_reused, "a ticket from before the reload was not accepted"


def test_https_upstream_ca_change_by_sighup():
    c = certs()
    up = upstream_tls(c.untrusted, c.untrusted_key)
    with Env(upstream_tls=up, extra_config=f"upstream_tls_ca {c.ca}", expect_errors=True) as env:
        key = new_key()
        assert_problem(env.post("/orders", key=key, body=b"{}"), 502, "upstream-unavailable")
        assert env.upstream.count() == 0
        # the operator adds the other CA to the bundle and reloads
        bundle = os.path.join(env.tmp, "bundle.pem")
        with open(bundle, "w") as out:
            for part in (c.ca, c.other_ca):
                out.write(_read(part))
        since = len(env.proxy.error_log())
        env.proxy.write_config(f"upstream_tls_ca {bundle}")
        env.proxy.signal(signal.SIGHUP)
        wait_log(env.proxy, lambda lv, m: "reload complete" in m, since, timeout=5,
                 what="reload complete")
        r = wait_until(lambda: (lambda resp: resp if resp.status == 201 else None)(
            env.post("/orders", key=key, body=b"{}")), 5 * SLOW, interval=0.2,
            what="the same key forwarded after the CA was fixed by reload")
        assert env.upstream.count(key) == 1, r
        # and the reverse: a reload back to a CA that does not sign it fails again
        env.proxy.write_config(f"upstream_tls_ca {c.ca}\nupstream_keepalive 0")
        since = len(env.proxy.error_log())
        env.proxy.signal(signal.SIGHUP)
        wait_log(env.proxy, lambda lv, m: "reload complete" in m, since, timeout=5,
                 what="reload complete")
        time.sleep(0.2)
        r = env.post("/orders", key=new_key(), body=b"{}")
        assert_problem(r, 502, "upstream-unavailable")


def test_https_upstream_verify_off_warns_at_every_reload():
    c = certs()
    up = upstream_tls(c.untrusted, c.untrusted_key)
    with Env(upstream_tls=up, extra_config="upstream_tls_verify off") as env:
        def warnings():
            return [m for lv, m in log_entries(env.proxy)
                    if lv == "warn" and "upstream_tls_verify" in m]
        wait_until(lambda: len(warnings()) >= 1, 3, what="the warning at start")
        n = len(warnings())
        env.proxy.signal(signal.SIGHUP)
        wait_until(lambda: len(warnings()) > n, 5 * SLOW, what="the warning at reload")
        assert env.request("GET", "/x").status == 200


def test_tls_sighup_key_made_readable_is_refused():
    c = certs()
    with Env(proxy=False, expect_errors=True) as env:
        key = os.path.join(env.tmp, "live-key.pem")
        shutil.copyfile(c.server_key, key)
        os.chmod(key, 0o600)
        env.start_proxy(tls={"cert": c.server, "key": key, "ca": c.ca})
        since = len(env.proxy.error_log())
        os.chmod(key, 0o644)
        env.proxy.signal(signal.SIGHUP)
        wait_log(env.proxy, lambda lv, m: "readable by group or others" in m, since,
                 timeout=5, what="the key-mode error at reload")
        time.sleep(0.2)
        assert env.proxy.running()
        assert env.request("GET", "/x").status == 200


# ---------------------------------------------------------------- review findings


class CloseDelimitedTlsUpstream:
    """A TLS upstream (Python's ssl) that answers every request with a body
    ended by closing the connection, either with close_notify (clean) or
    without it (cut: what a crash or an injected FIN looks like)."""

    def __init__(self, port, clean):
        import threading
        c = certs()
        self.clean = clean
        self.requests = 0
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(c.server, c.server_key)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop:
            try:
                raw_conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                conn = self.ctx.wrap_socket(raw_conn, server_side=True)
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                self.requests += 1
                conn.sendall(b"HTTP/1.1 201 Created\r\nConnection: close\r\n\r\n"
                             b'{"order":"A1","amount":10')
                if self.clean:
                    conn.sendall(b"}")
                    conn = conn.unwrap()  # close_notify
                conn.close()  # without unwrap(): no close_notify
            except (OSError, ssl.SSLError):
                pass

    def close(self):
        self.stop = True
        self.sock.close()
        self.thread.join(2)


def test_https_close_delimited_body_needs_close_notify():
    """A body that ends with the connection is whole only if the TLS session
    ended with close_notify (RFC 9112 §9.8): a cut one is neither stored nor
    replayed; the key is held as outcome-unknown. With close_notify it is."""
    c = certs()
    for clean in (False, True):
        with Env(upstream=False, proxy=False, expect_errors=True) as env:
            up = CloseDelimitedTlsUpstream(env.upstream_port, clean)
            try:
                env.start_proxy(f"upstream_tls_ca {c.ca}", upstream_scheme="https")
                key = new_key()
                r = env.post("/orders", key=key, body=b"{}")
                if clean:
                    assert r.status == 201 and r.body == b'{"order":"A1","amount":10}', r
                    r2 = env.post("/orders", key=key, body=b"{}")
                    assert r2.status == 201 and r2.header("Idempotent-Replayed") == "true", r2
                    assert r2.body == r.body
                else:
                    assert_problem(r, 502, "upstream-unavailable")
                    r2 = env.post("/orders", key=key, body=b"{}")
                    assert_problem(r2, 409, "outcome-unknown")
                    # "unexpected eof" (or a reset, when the close raced our read)
                    log = env.proxy.error_log()
                    assert any(w in log for w in ("unexpected eof", "close_notify",
                                                  "reset by peer")), log
                assert up.requests == 1
            finally:
                up.close()


def test_tls_idle_keepalive_connection_lives_for_idle_timeout():
    """client_header_timeout bounds the handshake only; once it is done an
    idle TLS connection lives as long as a plain one (idle_timeout)."""
    c = certs()
    with Env(proxy_tls=listener_tls(c),
             extra_config="client_header_timeout 1s\nidle_timeout 20s") as env:
        with Client(env.proxy.port, ssl_context=env.proxy.ssl_context,
                    timeout=5 * SLOW) as client:
            assert client.request("GET", "/a").status == 200
            time.sleep(2.5)
            assert client.request("GET", "/b").status == 200


def test_tls_alpn_http10_is_accepted():
    c = certs()
    with Env(proxy_tls=listener_tls(c)) as env:
        out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{env.proxy.port}",
                              "-alpn", "http/1.0", "-CAfile", c.ca],
                             input=b"", capture_output=True, timeout=OPENSSL_TIMEOUT)
        text = out.stdout.decode("latin-1", "replace")
        assert "ALPN protocol: http/1.0" in text, text[-2000:]


def test_tls_tcp_probe_is_not_an_info_line():
    """A load balancer's TCP check (connect, close) on a TLS listener logs at
    debug, not as a failed handshake at info; a client that sent a
    ClientHello and then went away does."""
    c = certs()
    with Env(proxy_tls=listener_tls(c)) as env:
        for _ in range(3):
            socket.create_connection(("127.0.0.1", env.proxy.port), timeout=5).close()
        time.sleep(0.3)
        infos = [ln for ln in env.proxy.error_log().splitlines()
                 if " info " in ln and "TLS handshake failed" in ln]
        assert infos == [], infos
        assert env.request("GET", "/x").status == 200
