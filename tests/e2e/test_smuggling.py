"""Request smuggling, read at the byte level (SPEC §5, §13; RFC 9112).

A byte tap (harness.Tap) sits between idemproxy and the test upstream, so
each test sees exactly what idemproxy forwarded, before any upstream parser
could tidy a malformed head into a plausible one. For every hostile shape:
idemproxy answers 400 (501 for a transfer coding it does not implement, 505
for another HTTP version), closes the connection, and not one byte reaches
the upstream. For shapes idemproxy accepts, what it forwards reads as exactly
one request under a strict reading (harness.strict_requests).

The shapes are the known families: bare CR before, inside and after a field
name, in values and in the request line (the smuggle an outside corpus
found); bare LF; obs-fold; empty and non-token field names; Content-Length
and Transfer-Encoding together, duplicated, spaced, cased, quoted, listed;
transfer codings; chunk-size forms; request-line forms. The response side
uses harness.ScriptedUpstream to send malformed heads to idemproxy.
"""
import contextlib
import time

from harness import (SLOW, Client, Env, ScriptedUpstream, Tap, assert_problem, strict_requests,
                     wait_until)
from test_http import assert_rejected_and_closed, exchange, parse_responses

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n"

# Field lines (after "Host: t\r\n") that must be refused: (name, bytes, status).
HOSTILE_FIELDS = [
    # bare CR: before, inside and after a field name, in and after values
    ("cr-after-empty-value", b"x:\rContent-Length: 35\r\n\r\n" + SMUGGLED, 400),
    ("cr-swallowing-a-byte", b"x:\rZContent-Length: 35\r\n\r\n" + SMUGGLED, 400),
    ("cr-at-line-start", b"\rTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED, 400),
    ("cr-inside-name", b"Content\r-Length: 3\r\n\r\nabc", 400),
    ("cr-before-colon", b"Content-Length\r: 3\r\n\r\nabc", 400),
    ("cr-in-value", b"X-A: a\rb\r\nContent-Length: 3\r\n\r\nabc", 400),
    ("cr-cr-lf", b"X-A: a\r\r\nContent-Length: 3\r\n\r\nabc", 400),
    ("cr-in-empty-line", b"Content-Length: 3\r\n\r\r\nabc", 400),
    ("cr-only-line-end", b"Content-Length: 3\rX-A: 1\r\n\r\nabc", 400),
    # bare LF
    ("lf-line-end", b"X-A: 1\nContent-Length: 3\r\n\r\nabc", 400),
    ("lf-empty-line", b"Content-Length: 3\r\n\nabc", 400),
    ("lf-in-value-then-te", b"X-A: 1\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc",
     400),
    # obs-fold
    ("obs-fold-sp", b"X-A: 1\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("obs-fold-tab", b"X-A: 1\r\n\tContent-Length: 3\r\n\r\nabc", 400),
    ("obs-fold-of-te", b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", 400),
    # field names
    ("empty-name", b": Bar\r\nContent-Length: 3\r\n\r\nabc", 400),
    ("space-in-name", b"Content Length: 3\r\n\r\nabc", 400),
    ("space-before-colon", b"Content-Length : 3\r\n\r\nabc", 400),
    ("tab-before-colon", b"Transfer-Encoding\t: chunked\r\n\r\n0\r\n\r\n", 400),
    ("nul-in-name", b"X-A\x00: 1\r\nContent-Length: 3\r\n\r\nabc", 400),
    ("paren-in-name", b"X(A): 1\r\nContent-Length: 3\r\n\r\nabc", 400),
    ("utf8-in-name", b"X-\xc3\xa9: 1\r\nContent-Length: 3\r\n\r\nabc", 400),
    ("del-in-name", b"X-A\x7f: 1\r\nContent-Length: 3\r\n\r\nabc", 400),
    ("no-colon", b"X-A\r\nContent-Length: 3\r\n\r\nabc", 400),
    # control bytes in values
    ("nul-in-value", b"X-A: a\x00b\r\nContent-Length: 3\r\n\r\nabc", 400),
    ("ctl-in-value", b"X-A: a\x01b\r\nContent-Length: 3\r\n\r\nabc", 400),
    ("del-in-value", b"X-A: a\x7fb\r\nContent-Length: 3\r\n\r\nabc", 400),
    ("vt-in-cl", b"Content-Length:\x0b3\r\n\r\nabc", 400),
    # Content-Length with Transfer-Encoding, in every spelling
    ("cl-te", b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-cl", b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n", 400),
    ("cl-empty-te", b"Content-Length: 3\r\nTransfer-Encoding:\r\n\r\nabc", 400),
    ("cl-blank-te", b"Content-Length: 3\r\nTransfer-Encoding:  \r\n\r\nabc", 400),
    ("cl-te-identity", b"Content-Length: 3\r\nTransfer-Encoding: identity\r\n\r\nabc", 400),
    ("cl-te-upper", b"Content-Length: 3\r\nTRANSFER-ENCODING: CHUNKED\r\n\r\n0\r\n\r\n", 400),
    ("cl-te-comma", b"Content-Length: 3\r\nTransfer-Encoding: ,chunked\r\n\r\n0\r\n\r\n", 400),
    # Transfer-Encoding alone, malformed
    ("te-empty", b"Transfer-Encoding:\r\n\r\n0\r\n\r\n", 400),
    # empty list elements are legal (RFC 9110 §5.6.1), but llhttp refuses
    # them and no client sends them: refused is the safe reading
    ("te-empty-elements", b"Transfer-Encoding: , chunked ,\r\n\r\n0\r\n\r\n", 400),
    ("te-identity", b"Transfer-Encoding: identity\r\n\r\nabc", 400),
    ("te-quoted", b'Transfer-Encoding: "chunked"\r\n\r\n0\r\n\r\n', 400),
    ("te-param", b"Transfer-Encoding: chunked;q=1\r\n\r\n0\r\n\r\n", 400),
    ("te-xchunked", b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400),
    ("te-chunked-x", b"Transfer-Encoding: chunked-x\r\n\r\n0\r\n\r\n", 400),
    ("te-twice-one-field", b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-twice-two-fields",
     b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-chunked-not-last", b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400),
    ("te-gzip-alone", b"Transfer-Encoding: gzip\r\n\r\nabc", 400),
    ("te-gzip-chunked", b"Transfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 501),
    ("te-gzip-then-chunked-fields",
     b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 501),
    ("te-deflate-chunked", b"Transfer-Encoding: deflate,chunked\r\n\r\n0\r\n\r\n", 501),
    # Content-Length forms
    ("cl-twice-differing", b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    ("cl-twice-same", b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
    ("cl-list", b"Content-Length: 3, 3\r\n\r\nabc", 400),
    ("cl-plus", b"Content-Length: +3\r\n\r\nabc", 400),
    ("cl-minus", b"Content-Length: -3\r\n\r\nabc", 400),
    ("cl-hex", b"Content-Length: 0x3\r\n\r\nabc", 400),
    ("cl-two-numbers", b"Content-Length: 3 4\r\n\r\nabcd", 400),
    ("cl-overflow", b"Content-Length: 99999999999999999999999\r\n\r\nabc", 400),
    # chunk-size forms
    ("chunk-size-hex-prefix", b"Transfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-size-negative", b"Transfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-size-space-ext", b"Transfer-Encoding: chunked\r\n\r\n3 ;a=b\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-size-trailing-space", b"Transfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-size-bare-lf", b"Transfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n", 400),
    ("chunk-size-bare-cr", b"Transfer-Encoding: chunked\r\n\r\n3\rabc\r\n0\r\n\r\n", 400),
    ("chunk-ext-bare-cr", b"Transfer-Encoding: chunked\r\n\r\n3;a\rb\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-data-too-long", b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n", 400),
    ("chunk-data-no-crlf", b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc0\r\n\r\n", 400),
    ("chunk-size-overflow",
     b"Transfer-Encoding: chunked\r\n\r\n10000000000000000\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-size-empty", b"Transfer-Encoding: chunked\r\n\r\n\r\nabc\r\n0\r\n\r\n", 400),
    ("trailer-bare-cr", b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX: a\rb\r\n\r\n", 400),
    ("trailer-obs-fold", b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX: a\r\n b\r\n\r\n",
     400),
]

# Whole requests (request-line forms): (name, bytes, status).
HOSTILE_REQUESTS = [
    ("tab-in-target", b"GET /a\tb HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("space-in-target", b"GET /a b HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("nul-in-target", b"GET /a\x00b HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("ctl-in-target", b"GET /a\x01b HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("del-in-target", b"GET /a\x7f HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("utf8-in-target", b"GET /\xc3\xa9 HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("cr-in-target", b"GET /a\rb HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("cr-after-version", b"GET /a HTTP/1.1\r\rHost: t\r\n\r\n", 400),
    ("no-version", b"GET /a\r\nHost: t\r\n\r\n", 400),
    ("no-version-post", b"POST /a\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc", 400),
    ("two-spaces-before-target", b"GET  /a HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("two-spaces-before-version", b"GET /a  HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("trailing-space", b"GET /a HTTP/1.1 \r\nHost: t\r\n\r\n", 400),
    ("tab-separator", b"GET\t/a HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("leading-space", b" GET /a HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("lower-case-version", b"GET /a http/1.1\r\nHost: t\r\n\r\n", 400),
    ("long-minor", b"GET /a HTTP/1.10\r\nHost: t\r\n\r\n", 400),
    ("no-minor", b"GET /a HTTP/1\r\nHost: t\r\n\r\n", 400),
    ("space-in-version", b"GET /a HTTP /1.1\r\nHost: t\r\n\r\n", 400),
    ("bare-lf-request-line", b"GET /a HTTP/1.1\nHost: t\r\n\r\n", 400),
    ("empty-target", b"GET  HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("lower-case-method", b"get /a HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("connect", b"CONNECT t:443 HTTP/1.1\r\nHost: t:443\r\n\r\n", 400),
    ("http-2", b"GET /a HTTP/2.0\r\nHost: t\r\n\r\n", 505),
    ("http-0-9-declared", b"GET /a HTTP/0.9\r\nHost: t\r\n\r\n", 505),
    ("http-1-0-te", b"POST /a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
     400),
    ("http-1-0-te-cl",
     b"POST /a HTTP/1.0\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc", 400),
]


@contextlib.contextmanager
def _with_tap(extra_config=""):
    """An Env whose proxy reaches the upstream through a Tap: (env, tap)."""
    with Env(extra_config=extra_config, proxy=False) as env, Tap(env.upstream.port) as tap:
        env.upstream_port = tap.port
        env.start_proxy()
        yield env, tap


def _variants(fields):
    """A covered keyed POST (buffered) and an uncovered PUT (streamed)."""
    return [b"POST /orders HTTP/1.1\r\nHost: t\r\nIdempotency-Key: smuggle-1\r\n" + fields,
            b"PUT /stream HTTP/1.1\r\nHost: t\r\n" + fields]


def test_hostile_heads_forward_nothing():
    """Every shape: refused with its status, connection closed, zero bytes
    upstream (read at the tap, not at the upstream's parser)."""
    with _with_tap() as (env, tap):
        cases = [(name, req, status) for name, fields, status in HOSTILE_FIELDS
                 for req in _variants(fields)]
        cases += HOSTILE_REQUESTS
        failures = []
        for name, req, status in cases:
            try:
                assert_rejected_and_closed(env.proxy.port, req, status=status)
            except AssertionError as e:
                failures.append(f"{name}: {str(e).splitlines()[-1][:200]}")
            if tap.data():
                failures.append(f"{name}: forwarded {tap.data()[:200]!r}")
                break
        time.sleep(0.3)
        assert not failures, "\n".join(failures)
        assert tap.data() == b"", f"bytes reached the upstream: {tap.data()[:300]!r}"
        assert env.upstream.count() == 0
        # still serving, and a good request goes through the tap
        assert env.request("GET", "/after").status == 200
        reqs = strict_requests(tap.data())
        assert [(m, t) for m, t, _, _ in reqs] == [("GET", "/after")], reqs


def test_the_issue_smuggle_reaches_the_upstream_as_nothing():
    """The corpus case verbatim: before the fix the upstream saw POST /a
    without a body, then GET /smuggled."""
    data = (b"POST /a HTTP/1.1\r\nHost: x\r\nx:\rContent-Length: 35\r\n\r\n"
            b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
    with _with_tap() as (env, tap):
        assert_rejected_and_closed(env.proxy.port, data)
        time.sleep(0.3)
        assert tap.data() == b""
        assert env.upstream.count() == 0


# Heads idemproxy accepts although they look odd: each must reach the upstream
# as exactly one strict request with the framing idemproxy read.
ACCEPTED = [
    ("te-tab-ows", b"Transfer-Encoding:\tchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", b"abc"),
    ("te-upper-case", b"TRANSFER-ENCODING: CHUNKED\r\n\r\n3\r\nabc\r\n0\r\n\r\n", b"abc"),
    ("chunk-ext", b"Transfer-Encoding: chunked\r\n\r\n3;a=b\r\nabc\r\n0\r\n\r\n", b"abc"),
    ("chunk-upper-hex", b"Transfer-Encoding: chunked\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n",
     b"0123456789"),
    ("chunk-trailer", b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n", b"abc"),
    ("cl-leading-zeros", b"Content-Length: 003\r\n\r\nabc", b"abc"),
    ("obs-text-in-value", b"X-Echo-A: caf\xe9\r\nContent-Length: 3\r\n\r\nabc", b"abc"),
    ("underscore-cl", b"Content_Length: 35\r\nContent-Length: 3\r\n\r\nabc", b"abc"),
    ("underscore-te", b"Transfer_Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc", b"abc"),
    ("value-ows", b"Content-Length:   3  \r\n\r\nabc", b"abc"),
]


def test_accepted_odd_heads_forward_exactly_one_strict_request():
    with _with_tap() as (env, tap):
        seen = 0
        for name, fields, body in ACCEPTED:
            for i, req in enumerate(_variants(fields)):
                req = req.replace(b"smuggle-1", f"{name}-{i}".encode())
                with Client(env.proxy.port) as c:
                    c.send(req)
                    r = c.read_response("POST")
                assert r.status in (200, 201), f"{name}: {r!r}"
                seen += 1
                wait_until(lambda: len(strict_requests(tap.data())) == seen, 3 * SLOW,
                           what=f"{name} at the tap")
                method, target, fields_up, body_up = strict_requests(tap.data())[-1]
                assert body_up == body, f"{name}: body {body_up!r}"
                names = [n.lower() for n, _ in fields_up]
                assert not any("_" in n for n in names), f"{name}: {fields_up}"
        assert env.upstream.count() == seen


def test_underscores_in_headers_on_keeps_them_but_never_for_framing():
    with _with_tap("underscores_in_headers on") as (env, tap):
        req = (b"PUT /stream HTTP/1.1\r\nHost: t\r\nX_Api_Version: 7\r\n"
               b"Content_Length: 35\r\nContent-Length: 3\r\n\r\nabc")
        got, _ = exchange(env.proxy.port, req, 2 * SLOW)
        assert got.startswith(b"HTTP/1.1 200"), got
        wait_until(lambda: strict_requests(tap.data()), 3 * SLOW, what="request at the tap")
        (_, _, fields, body), = strict_requests(tap.data())
        assert ("X_Api_Version", "7") in fields and ("Content_Length", "35") in fields, fields
        assert body == b"abc"


def test_underscore_fields_are_dropped_with_a_debug_line():
    with _with_tap() as (env, tap):
        r = env.request("GET", "/u", headers=[("X_Api_Version", "7"), ("X-Echo-Ok", "1")])
        assert r.status == 200 and r.header("X-Echo-Ok") == "1"
        (_, _, fields, _), = strict_requests(tap.data())
        assert not any(n.lower() == "x_api_version" for n, _ in fields), fields
        wait_until(lambda: "dropped (underscores_in_headers off)" in env.proxy.error_log(), 2,
                   what="the debug line")


def test_pipelined_requests_sent_before_a_half_close_are_all_answered():
    with _with_tap() as (env, tap):
        data = (b"GET /one HTTP/1.1\r\nHost: t\r\n\r\n"
                b"POST /orders HTTP/1.1\r\nHost: t\r\nIdempotency-Key: hc-2\r\n"
                b"Content-Length: 2\r\n\r\n{}"
                b"GET /three HTTP/1.1\r\nHost: t\r\n\r\n")
        got, closed = exchange(env.proxy.port, data, 5 * SLOW, shut_write=True)
        assert closed, "connection not closed after the last answer"
        resps, rest = parse_responses(got, ["GET", "POST", "GET"])
        assert [r.status for r in resps] == [200, 201, 200], resps
        assert rest == b""
        assert [t for _, t, _, _ in strict_requests(tap.data())] == ["/one", "/orders", "/three"]


def test_a_request_cut_short_by_a_half_close_is_not_forwarded():
    with _with_tap() as (env, tap):
        data = (b"GET /one HTTP/1.1\r\nHost: t\r\n\r\n"
                b"POST /orders HTTP/1.1\r\nHost: t\r\nIdempotency-Key: hc-cut\r\n"
                b"Content-Length: 10\r\n\r\n{}")
        got, closed = exchange(env.proxy.port, data, 5 * SLOW, shut_write=True)
        assert closed
        (r,), rest = parse_responses(got, ["GET"])
        assert r.status == 200 and rest == b"", (r, rest)
        time.sleep(0.3)
        assert [t for _, t, _, _ in strict_requests(tap.data())] == ["/one"]


def test_pipelined_smuggle_after_a_good_request_is_refused_alone():
    """A good request, then a bare-CR one on the same connection: the first
    is answered, the second refused, and nothing of it goes upstream."""
    with _with_tap() as (env, tap):
        data = (b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n"
                b"POST /a HTTP/1.1\r\nHost: t\r\nx:\rContent-Length: 35\r\n\r\n" + SMUGGLED)
        got, closed = exchange(env.proxy.port, data, 5 * SLOW)
        assert closed
        (ok, bad), rest = parse_responses(got, ["GET", "POST"])
        assert ok.status == 200 and bad.status == 400, (ok, bad)
        time.sleep(0.3)
        assert [t for _, t, _, _ in strict_requests(tap.data())] == ["/ok"]


# ---------------------------------------------------------------- response side

# Heads an upstream may send that must never reach a client: 502.
HOSTILE_RESPONSE_HEADS = [
    ("bare-cr-in-field", b"HTTP/1.1 200 OK\r\nX-A: 1\rContent-Length: 2\r\n\r\nok"),
    ("bare-cr-line-start", b"HTTP/1.1 200 OK\r\n\rContent-Length: 2\r\n\r\nok"),
    ("bare-cr-status-line", b"HTTP/1.1 200 OK\rX-A: 1\r\nContent-Length: 2\r\n\r\nok"),
    ("bare-lf", b"HTTP/1.1 200 OK\nContent-Length: 2\r\n\r\nok"),
    ("obs-fold", b"HTTP/1.1 200 OK\r\nX-A: 1\r\n Content-Length: 2\r\n\r\nok"),
    ("empty-name", b"HTTP/1.1 200 OK\r\n: x\r\nContent-Length: 2\r\n\r\nok"),
    ("space-before-colon", b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok"),
    ("cl-te", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"2\r\nok\r\n0\r\n\r\n"),
    ("cl-empty-te", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding:\r\n\r\nok"),
    ("te-gzip-chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                        b"2\r\nok\r\n0\r\n\r\n"),
    ("te-http10", b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
    ("cl-differing", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok"),
    ("bad-version", b"HTTP/1.x 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    ("http2-version", b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    ("ctl-in-reason", b"HTTP/1.1 200 O\x01K\r\nContent-Length: 2\r\n\r\nok"),
]

# Bodies whose framing breaks after a good head: a streamed (uncovered)
# response is cut short, a buffered (covered) one is a 502.
HOSTILE_RESPONSE_BODIES = [
    ("bad-chunk-size", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n"),
    ("chunk-size-bare-cr",
     b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\rok\r\n0\r\n\r\n"),
    ("trailer-bare-cr",
     b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX: a\rb\r\n\r\n"),
]


def _covered_is_502_and_unknown(env, up, name, executions):
    """A covered request: sent, so its outcome is unknown to idemproxy."""
    r = env.post("/orders", key=f"resp-{name}")
    assert r.status == 502, f"{name}: {r!r}"
    r = env.post("/orders", key=f"resp-{name}")
    assert_problem(r, 409, "outcome-unknown")
    assert up.requests == executions, f"{name}: {up.requests} executions"
    assert "malformed response" in env.proxy.error_log(), name


def test_malformed_upstream_heads_are_502_and_the_connection_is_not_reused():
    for name, response in HOSTILE_RESPONSE_HEADS:
        with ScriptedUpstream(response) as up, Env(proxy=False) as env:
            env.upstream_port = up.port
            env.start_proxy()
            r = env.request("GET", "/x")
            assert_problem(r, 502, "upstream-unavailable")
            # the next request needs a new upstream connection
            r = env.request("GET", "/y")
            assert r.status == 502, f"{name}: {r!r}"
            assert up.connections == 2, f"{name}: {up.connections} connection(s) for 2 requests"
            _covered_is_502_and_unknown(env, up, name, 3)


def test_malformed_upstream_bodies_cut_the_stream_and_are_never_stored():
    for name, response in HOSTILE_RESPONSE_BODIES:
        with ScriptedUpstream(response) as up, Env(proxy=False) as env:
            env.upstream_port = up.port
            env.start_proxy()
            got, closed = exchange(env.proxy.port, b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n",
                                   3 * SLOW)
            # nothing, or a head and a cut body: never a response that looks whole
            assert closed and (got == b"" or got.startswith(b"HTTP/1.1 200")), f"{name}: {got!r}"
            assert not got.endswith(b"0\r\n\r\n"), f"{name}: cut response looks whole: {got!r}"
            _covered_is_502_and_unknown(env, up, name, 2)
