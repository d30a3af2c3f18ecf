"""The front door (SPEC §13): a route's policy applies to the path the
upstream acts on, and what reaches the upstream is what idemproxy judged.

Every test puts a byte tap (harness.Tap) between idemproxy and the test
upstream. For each hostile request-target, alias, method or re-encoded body,
the upstream either receives nothing, or receives a request whose path is the
one the route matched (the normalised one), under that route's policy.
"""
import gzip
import json
import time

from harness import Client, strict_requests
from test_http import assert_rejected_and_closed, exchange
from test_smuggling import _with_tap

ROUTES = """
token_endpoint /idem/token
route /payments { require_key on }
route /public { bypass on }
route /tokened { require_token on }
route /webhooks/stripe { key json:/id; scope none; require_key on }
route /coupons/claim { methods GET POST; require_key on }
"""


def _raw(method, target, host="t", extra=b"", body=b""):
    head = f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n".encode()
    if body or method in ("POST", "PUT"):
        head += b"Content-Length: %d\r\n" % len(body)
    return head + extra + b"\r\n" + body


def _status(port, data):
    """The one answer to data, read on a connection of its own."""
    with Client(port) as c:
        c.send(data)
        return c.read_response("HEAD" if data.startswith(b"HEAD") else "POST")


# Aliases of /payments an upstream (nginx, Express, Flask) acts on as /payments.
PAYMENT_ALIASES = ["http://t/payments", "HTTP://T/payments", "https://t/payments?x=1",
                   "//payments", "/./payments", "/%2e/payments", "/%2E/payments", "/%70ayments",
                   "/public/../payments", "/public/%2e%2e/payments", "/public/.%2e/payments",
                   "///payments", "/public/./../payments", "/x/../payments/"]

# Forms that different upstreams read differently: refused outright.
AMBIGUOUS = ["/%2Fpayments", "/public/..%2Fpayments", "/public/..%2fpayments",
             "/public/..%5Cpayments", "/public\\..\\payments", "/..;/payments",
             "/public/..;/payments", "/%C0%AE%C0%AE/payments", "/public/%C0%AE%C0%AE/payments",
             "/%E0%80%AE/payments", "/public/%00/../payments", "/../payments", "/payments;x",
             "/payments;jsessionid=1",
             "/public/../../payments", "payments", "*", "http://u@t/payments"]


def test_aliases_of_a_require_key_route_are_held_to_it():
    with _with_tap(ROUTES) as (env, tap):
        for target in PAYMENT_ALIASES:
            r = _status(env.proxy.port, _raw("POST", target, body=b"{}"))
            assert r.status == 400 and r.json()["code"] == "missing-key", (target, r)
        for target in AMBIGUOUS:
            assert_rejected_and_closed(env.proxy.port, _raw("POST", target, body=b"{}"))
        time.sleep(0.2)
        assert tap.data() == b"", tap.data()[:300]
        assert env.upstream.count() == 0
        # the same aliases with a key: forwarded as the path the route matched
        for i, target in enumerate(PAYMENT_ALIASES):
            r = _status(env.proxy.port, _raw("POST", target, body=b"{}",
                                             extra=f"Idempotency-Key: a{i}\r\n".encode()))
            assert r.status == 201, (target, r)
        reqs = strict_requests(tap.data())
        assert len(reqs) == len(PAYMENT_ALIASES)
        for target, (_, forwarded, fields, _) in zip(PAYMENT_ALIASES, reqs):
            assert forwarded.split("?")[0] in ("/payments", "/payments/"), (target, forwarded)
            assert dict(fields)["Host"] == "t", (target, fields)
        routes = {e.get("route") for e in env.proxy.access_log() if e.get("status") == 201}
        assert routes == {"/payments"}, routes


def test_absolute_form_with_another_host_is_refused():
    with _with_tap(ROUTES) as (env, tap):
        for target, host in (("http://admin.internal/", "public.example"),
                             ("http://t/public/x", "u")):
            assert_rejected_and_closed(env.proxy.port, _raw("GET", target, host=host))
        time.sleep(0.2)
        assert tap.data() == b""
        # HTTP/1.0 without Host: the authority becomes the Host
        got, _ = exchange(env.proxy.port, b"GET http://api.example/public/x HTTP/1.0\r\n\r\n", 3)
        assert got.startswith(b"HTTP/1.1 200"), got
        (_, target, fields, _), = strict_requests(tap.data())
        assert target == "/public/x" and dict(fields)["Host"] == "api.example", (target, fields)


def test_a_host_that_is_no_host_is_refused():
    """Upstreams that build their URL from Host and target (Bun, Deno, the
    new URL('http://' + host + url) pattern) ran /payments for
    `POST /public/x` with `Host: a/payments?`."""
    with _with_tap(ROUTES) as (env, tap):
        for host in ("a/payments?", "a/payments#", "a b", "x@evil", "a\\b", "a:80x"):
            assert_rejected_and_closed(env.proxy.port, _raw("POST", "/public/x", host=host))
        time.sleep(0.2)
        assert tap.data() == b""
        assert _status(env.proxy.port, _raw("GET", "/public/x", host="api.example:8443")).status == 200


def test_aliases_cannot_reach_token_routes_or_skip_the_token_endpoint():
    with _with_tap(ROUTES) as (env, tap):
        for target in ("http://t/tokened", "//tokened", "/public/../tokened", "/%74okened"):
            r = _status(env.proxy.port, _raw("POST", target, body=b"{}"))
            assert r.status == 400 and r.json()["code"] == "token-invalid", (target, r)
        r = _status(env.proxy.port, _raw("POST", "http://t/idem/token"))
        assert r.status == 201 and "token" in r.json(), r
        r = _status(env.proxy.port, _raw("POST", "//idem/./token"))
        assert r.status == 201, r
        time.sleep(0.2)
        assert tap.data() == b""


def test_route_case_insensitive_matches_any_case():
    with _with_tap("route_case insensitive\n" + ROUTES) as (env, tap):
        for target in ("/Payments", "/PAYMENTS/1", "http://t/PayMents"):
            r = _status(env.proxy.port, _raw("POST", target, body=b"{}"))
            assert r.status == 400 and r.json()["code"] == "missing-key", (target, r)
        r = _status(env.proxy.port, _raw("POST", "/IDEM/Token"))
        assert r.status == 201, r
        time.sleep(0.2)
        assert tap.data() == b""
    # case-sensitive by default: /Payments is another path
    with _with_tap(ROUTES) as (env, tap):
        r = _status(env.proxy.port, _raw("POST", "/Payments", body=b"{}"))
        assert r.status == 201, r


def test_head_is_covered_where_get_is():
    with _with_tap(ROUTES) as (env, tap):
        r = _status(env.proxy.port, _raw("HEAD", "/coupons/claim"))
        assert r.status == 400 and r.body == b"", r
        r = _status(env.proxy.port, _raw("HEAD", "/coupons/claim",
                                         extra=b"Idempotency-Key: c1\r\n"))
        assert r.status == 200 and r.body == b"", r
        r = _status(env.proxy.port, _raw("HEAD", "/coupons/claim",
                                         extra=b"Idempotency-Key: c1\r\n"))
        assert r.status == 200 and r.header("Idempotent-Replayed") == "true", r
        assert [m for m, _, _, _ in strict_requests(tap.data())] == ["HEAD"]


def test_webhook_keys_cannot_be_hidden_by_re_encoding():
    event = json.dumps({"id": "evt_1", "type": "charge.succeeded"}).encode()
    with _with_tap(ROUTES) as (env, tap):
        hidden = [
            # gzip: idemproxy would see no key, the application decodes and runs it
            (b"Content-Type: application/json\r\nContent-Encoding: gzip\r\n",
             gzip.compress(event), 415),
            (b"Content-Type: application/json\r\nContent-Encoding: identity, gzip\r\n",
             gzip.compress(event), 415),
            # two Content-Types: which one the application believes is anyone's guess
            (b"Content-Type: text/plain\r\nContent-Type: application/json\r\n", event, 400),
            # a type idemproxy does not read as JSON, a BOM: no key -> require_key on
            (b"Content-Type: text/plain\r\n", event, 400),
            (b"Content-Type: application/json\r\n", b"\xef\xbb\xbf" + event, 400),
            (b"Content-Type: multipart/form-data; boundary=x\r\n",
             b"--x\r\nContent-Disposition: form-data; name=\"id\"\r\n\r\nevt_1\r\n--x--\r\n", 400),
        ]
        for extra, body, status in hidden:
            r = _status(env.proxy.port, _raw("POST", "/webhooks/stripe", extra=extra, body=body))
            assert r.status == status, (extra, r)
        time.sleep(0.2)
        assert tap.data() == b""
        # the plain delivery, twice: executed once
        for _ in range(2):
            r = _status(env.proxy.port, _raw("POST", "/webhooks/stripe", body=event,
                                             extra=b"Content-Type: application/json\r\n"))
            assert r.status == 201, r
        assert len(strict_requests(tap.data())) == 1


def test_forwarding_fields_from_untrusted_clients_are_replaced():
    spoof = (b"X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 7.7.7.7\r\nX-Real-IP: 6.6.6.6\r\n"
             b"Forwarded: for=6.6.6.6\r\nX-Forwarded-Host: evil\r\nX-Forwarded-Port: 1\r\n"
             b"X-Forwarded-Proto: https\r\nX-Forwarded-Ssl: on\r\nX-Forwarded-Prefix: /x\r\n"
             b"X-Forwarded-Scheme: https\r\nVia: 1.1 a\r\nVia: 1.1 b\r\n"
             b"X-Original-URL: /payments\r\nX-HTTP-Method-Override: DELETE\r\n")
    with _with_tap() as (env, tap):
        r = _status(env.proxy.port, _raw("GET", "/x", host="api.example", extra=spoof))
        assert r.status == 200
        (_, _, fields, _), = strict_requests(tap.data())
        names = [n.lower() for n, _ in fields]
        assert "x-real-ip" not in names and "forwarded" not in names, fields
        assert "x-original-url" not in names and "x-http-method-override" not in names, fields
        got = {n.lower(): v for n, v in fields if n.lower().startswith(("x-forwarded", "via"))}
        assert got == {"x-forwarded-for": "127.0.0.1", "x-forwarded-proto": "http",
                       "x-forwarded-host": "api.example", "via": "1.1 a, 1.1 b, 1.1 idemproxy"}, got
    with _with_tap("trusted_proxies 10.0.0.0/8 127.0.0.1") as (env, tap):
        r = _status(env.proxy.port, _raw("GET", "/x", host="api.example", extra=spoof))
        assert r.status == 200
        (_, _, fields, _), = strict_requests(tap.data())
        d = {}
        for n, v in fields:
            d.setdefault(n.lower(), []).append(v)
        assert d["x-forwarded-for"] == ["6.6.6.6, 7.7.7.7, 127.0.0.1"], d
        assert d["x-real-ip"] == ["6.6.6.6"] and d["forwarded"] == ["for=6.6.6.6"], d
        assert d["x-forwarded-host"] == ["evil"] and d["x-forwarded-proto"] == ["https"], d
        assert d["x-original-url"] == ["/payments"], d


def test_scope_values_are_trimmed():
    with _with_tap() as (env, tap):
        for auth in (b"Bearer A", b"Bearer A   ", b"Bearer A\t"):
            r = _status(env.proxy.port, _raw("POST", "/orders", body=b"{}",
                                             extra=b"Authorization: " + auth +
                                             b"\r\nIdempotency-Key: s1\r\n"))
            assert r.status == 201, (auth, r)
        assert len(strict_requests(tap.data())) == 1


def _recipe_routes():
    """The webhook route blocks of docs/recipes.md, as written there."""
    import os
    import re
    path = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "recipes.md")
    text = open(path).read()
    blocks = re.findall(r"^(route (/webhooks/\S+) \{\n.*?^\})", text, re.S | re.M)
    assert len(blocks) >= 5, blocks
    # Without their `verify` lines: these deliveries are unsigned; signatures
    # are tested with real secrets in test_security.py.
    return [(re.sub(r"^\s*verify .*\n", "", block, flags=re.M), prefix) for block, prefix in blocks]


def _delivery(route_text, event_id, shape):
    """(extra header bytes, body) of one delivery of event_id to a recipe."""
    if "key form:notify_id" in route_text:
        ctype, body = b"application/x-www-form-urlencoded", f"notify_id={event_id}&x=1".encode()
    else:
        ctype, body = b"application/json", json.dumps({"id": event_id, "x": 1}).encode()
    extra = b""
    m = [ln.split("header:")[1].split()[0] for ln in route_text.splitlines()
         if ln.strip().startswith("key header:")]
    if m:
        extra += f"{m[0]}: {event_id}\r\n".encode()
    if shape == "plain":
        return extra + b"Content-Type: " + ctype + b"\r\n", body
    if shape == "gzip":
        return extra + b"Content-Type: " + ctype + b"\r\nContent-Encoding: gzip\r\n", \
            gzip.compress(body)
    if shape == "two-types":
        return extra + b"Content-Type: text/plain\r\nContent-Type: " + ctype + b"\r\n", body
    if shape == "text-plain":
        return extra + b"Content-Type: text/plain\r\n", body
    if shape == "bom":
        return extra + b"Content-Type: " + ctype + b"\r\n", b"\xef\xbb\xbf" + body
    raise AssertionError(shape)


def test_every_webhook_recipe_executes_an_event_once_however_it_is_re_encoded():
    blocks = _recipe_routes()
    config = "\n".join(text for text, _ in blocks)
    with _with_tap(config) as (env, tap):
        for text, prefix in blocks:
            event = "evt_" + prefix.rsplit("/", 1)[1]
            for shape in ("plain", "gzip", "two-types", "text-plain", "bom", "plain"):
                extra, body = _delivery(text, event, shape)
                r = _status(env.proxy.port, _raw("POST", prefix, extra=extra, body=body))
                assert r.status in (200, 201, 400, 415), (prefix, shape, r)
            executed = [t for _, t, _, _ in strict_requests(tap.data()) if t == prefix]
            assert len(executed) == 1, (prefix, len(executed))


def test_a_client_that_reads_nothing_is_closed_and_its_exchange_still_stored():
    import socket
    from harness import SLOW, Env, wait_until
    size = 48 << 20  # far more than the socket buffers between them hold
    with Env(extra_config="client_send_timeout 1s\nupstream_max_conns 1\nworkers 1") as env:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", env.proxy.port))
        s.sendall(b"POST /orders HTTP/1.1\r\nHost: t\r\nIdempotency-Key: slow-1\r\n"
                  b"X-Test-Body-Size: %d\r\nContent-Length: 2\r\n\r\n{}" % size)
        # reads nothing; idemproxy gives up on it after about a second
        wait_until(lambda: "read nothing of its answer" in env.proxy.error_log(), 10 * SLOW,
                   what="the send timeout")
        s.close()
        # the exchange ran to its end: the retry is a replay, not a 409 for ever
        r = wait_until(lambda: (lambda r: r if r.status == 201 else None)(
            env.post("/orders", key="slow-1", body=b"{}",
                     headers={"X-Test-Body-Size": str(size)})), 20 * SLOW,
            what="the replay")
        assert r.header("Idempotent-Replayed") == "true", r
        assert r.header("Idempotency-Replay") == "omitted", r
        assert env.upstream.count("slow-1") == 1
        # and the one upstream connection is free again
        assert env.request("GET", "/after").status == 200


def test_buffered_bodies_have_a_process_wide_budget():
    import socket
    from harness import SLOW, Env, read_response, _Reader
    with Env(extra_config="max_buffered_bodies 64k\nworkers 2") as env:
        held = []
        head = (b"POST /orders HTTP/1.1\r\nHost: t\r\nIdempotency-Key: b%d\r\n"
                b"Content-Length: 30000\r\n\r\n")
        for i in range(2):  # 60000 bytes reserved: within the budget, bodies not sent yet
            s = socket.create_connection(("127.0.0.1", env.proxy.port), timeout=5)
            s.sendall(head % i + b"x" * 1000)
            held.append(s)
        time.sleep(0.5 * SLOW)  # no metric says the heads were read: time for them
        got, closed = exchange(env.proxy.port, head % 9 + b"x" * 30000, 3)
        assert got.startswith(b"HTTP/1.1 503") and b'"code":"overloaded"' in got, got[:300]
        assert b"Retry-After: 1" in got and closed, got[:300]
        # the held requests finish and give their bytes back
        for i, s in enumerate(held):
            s.sendall(b"x" * 29000)
            r = read_response(_Reader(s), "POST")
            assert r.status == 201, r
            s.close()
        r = env.post("/orders", key="b9", body=b"x" * 30000)
        assert r.status == 201, r
        assert env.upstream.count("b9") == 1
        assert "max_buffered_bodies" in env.proxy.error_log()


def test_key_namespace_route_keeps_one_route_from_occupying_another():
    from harness import Env
    routes = "route /webhooks/stripe { key json:/id; scope none; require_key on }\n"
    event = json.dumps({"id": "evt_9"}).encode()
    ctype = {"Content-Type": "application/json"}
    # global (the default): an anonymous POST elsewhere takes the event's key
    with Env(extra_config=routes) as env:
        assert env.post("/orders", key="evt_9", body=b"{}").status == 201
        r = env.post("/webhooks/stripe", body=event, headers=ctype)
        assert r.status == 422, r
    with Env(extra_config="key_namespace route\n" + routes) as env:
        assert env.post("/orders", key="evt_9", body=b"{}").status == 201
        r = env.post("/webhooks/stripe", body=event, headers=ctype)
        assert r.status == 201 and env.upstream.count() == 2, r
        keys = env.redis.keys("*")
        assert any(k.endswith(":evt_9") and ":r" in k for k in keys), keys


def test_one_scope_cannot_fill_redis_for_the_others():
    from harness import Env
    with Env(extra_config="max_keys_per_scope 3") as env:
        a = {"Authorization": "Bearer A"}
        for i in range(3):
            assert env.post("/orders", key=f"q{i}", headers=a).status == 201
        r = env.post("/orders", key="q3", headers=a)
        assert r.status == 429 and r.json()["code"] == "quota-exceeded", r
        assert 1 <= int(r.header("Retry-After")) <= 86400, r
        # its existing keys still replay; another tenant is untouched
        r = env.post("/orders", key="q0", headers=a)
        assert r.status == 201 and r.header("Idempotent-Replayed") == "true", r
        assert env.post("/orders", key="q3", headers={"Authorization": "Bearer B"}).status == 201
        assert env.upstream.count() == 4
        # one counter per tenant; the refused key was never created
        keys = env.redis.keys("*")
        assert len([k for k in keys if k.startswith("idem:quota:")]) == 2, keys
        assert len([k for k in keys if k.endswith(":q3")]) == 1, keys
