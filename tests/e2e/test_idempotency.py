"""End-to-end tests of idemproxy's idempotency contract (SPEC §4.1, §4.2, §4.5).

Each test starts its own redis-server, test upstream and idemproxy (harness.Env).
The test upstream counts executions globally and per raw Idempotency-Key value.
"""

import re
import socket
import time
import uuid

from harness import (SLOW, Env, assert_problem, background, end_to_end_headers, fnv1a64,
                     parallel, problem, raw, request, run_idemproxy, wait_until)

REPLAY = "Idempotent-Replayed"


def new_key():
    return "k-" + uuid.uuid4().hex


def is_replay(resp):
    return (resp.header(REPLAY) or "").lower() == "true"


def retry_after(resp):
    v = resp.header("Retry-After")
    assert v is not None and v.strip().isdigit(), f"Retry-After missing or not seconds: {resp!r}"
    return int(v)


# ---------------------------------------------------------------- replay


def test_same_key_five_times_executes_once():
    with Env() as env:
        key = new_key()
        body = b'{"item":"book","qty":1}'
        answers = [env.post("/orders", key=key, body=body) for _ in range(5)]
        first = answers[0]
        assert first.status == 201, first
        assert env.upstream.count(key) == 1
        assert env.upstream.count() == 1
        assert not is_replay(first), f"first answer carries {REPLAY}: {first!r}"
        assert first.header("X-Custom") == "yes", "upstream header lost"
        want = end_to_end_headers(first, ignore=[REPLAY])
        for i, r in enumerate(answers[1:], 2):
            assert r.status == first.status, f"answer {i}: {r!r}"
            assert r.body == first.body, f"answer {i} body differs: {r.body!r} vs {first.body!r}"
            assert is_replay(r), f"answer {i} lacks {REPLAY}: true: {r!r}"
            assert r.header_all(REPLAY) == ["true"], r.header_all(REPLAY)
            assert r.header("Date"), f"answer {i} has no Date"
            got = end_to_end_headers(r, ignore=[REPLAY])
            assert sorted(got) == sorted(want), f"answer {i} headers differ:\n{got}\nvs\n{want}"


def test_sf_string_and_bare_key_are_the_same_key():
    with Env() as env:
        key = new_key()
        r1 = env.post("/orders", key=f'"{key}"', body=b"{}")
        assert r1.status == 201 and not is_replay(r1), r1
        r2 = env.post("/orders", key=key, body=b"{}")
        assert r2.status == 201 and is_replay(r2), f"bare key did not replay the sf-string one: {r2!r}"
        assert r2.body == r1.body
        assert env.upstream.count() == 1
        # and the other way round
        other = new_key()
        r3 = env.post("/orders", key=other, body=b"{}")
        r4 = env.post("/orders", key=f'"{other}"', body=b"{}")
        assert r3.status == 201 and not is_replay(r3), r3
        assert is_replay(r4) and r4.body == r3.body, r4
        assert env.upstream.count() == 2


def test_hundred_concurrent_clients_one_execution():
    with Env() as env:
        key = new_key()
        body = b'{"amount":100}'

        def one(_i):
            return env.post("/orders", key=key, body=body,
                            headers={"X-Test-Delay": "300"}, timeout=20)

        results = parallel(one, 100, timeout=60)
        errors = [r for r in results if isinstance(r, Exception)]
        assert not errors, f"{len(errors)} clients failed, e.g. {errors[0]!r}"
        statuses = sorted({r.status for r in results})
        assert set(statuses) <= {201, 409}, f"unexpected statuses {statuses}"
        ok = [r for r in results if r.status == 201]
        assert ok, "no client got 201"
        assert len([r for r in ok if not is_replay(r)]) == 1, "more than one non-replayed 201"
        assert len({r.body for r in ok}) == 1, "201 answers differ"
        for r in results:
            if r.status == 409:
                assert problem(r).get("code") == "conflict", r
        assert env.upstream.count(key) == 1
        assert env.upstream.count() == 1


def test_duplicate_while_in_flight_gets_409_then_replay():
    with Env() as env:
        key = new_key()
        body = b'{"slow":true}'
        job = background(env.post, "/orders", key=key, body=body,
                         headers={"X-Test-Delay": "1500"})
        wait_until(lambda: env.upstream.count(key) == 1, 3, what="first request at the upstream")
        dup = env.post("/orders", key=key, body=body)
        doc = assert_problem(dup, 409, "conflict")
        ra = retry_after(dup)
        assert 1 <= ra <= 60, f"Retry-After {ra} not within the lease"
        assert doc.get("idempotency_key") == key, doc
        first = job.result(10)
        assert first.status == 201 and not is_replay(first), first
        again = env.post("/orders", key=key, body=body)
        assert again.status == 201 and is_replay(again), again
        assert again.body == first.body
        assert env.upstream.count(key) == 1


def test_client_disconnect_still_stores_the_outcome():
    with Env(expect_errors=True) as env:
        key = new_key()
        body = b'{"gone":1}'
        req = (b"POST /orders HTTP/1.1\r\nHost: x\r\nIdempotency-Key: " + key.encode() +
               b"\r\nX-Test-Delay: 1000\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        s = socket.create_connection(("127.0.0.1", env.proxy.port), timeout=5)
        s.sendall(req)
        wait_until(lambda: env.upstream.count(key) == 1, 3, what="request at the upstream")
        s.close()

        def replayed():
            r = env.post("/orders", key=key, body=body)
            assert r.status in (201, 409), r
            return r if r.status == 201 else None

        r = wait_until(replayed, 5, interval=0.2, what="the replay after the client left")
        assert is_replay(r), f"retry was not a replay: {r!r}"
        assert r.json()["n"] == 1
        assert env.upstream.count(key) == 1
        # the access log tells the answer nobody received from the ones delivered
        lines = [e for e in env.proxy.access_log() if e.get("key") == key]
        (first,) = [e for e in lines if e["idem"] == "miss"]
        assert first.get("client_gone") is True and first["status"] == 201, lines
        assert not any("client_gone" in e for e in lines if e is not first), lines


def test_changed_body_gets_422_and_original_still_replays():
    with Env() as env:
        key = new_key()
        r1 = env.post("/orders", key=key, body=b'{"amount":10}')
        assert r1.status == 201, r1
        r2 = env.post("/orders", key=key, body=b'{"amount":99}')
        doc = assert_problem(r2, 422, "fingerprint-mismatch")
        assert doc.get("idempotency_key") == key, doc
        r3 = env.post("/orders", key=key, body=b'{"amount":10}')
        assert r3.status == 201 and is_replay(r3), r3
        assert r3.body == r1.body
        # another path is another fingerprint too
        r4 = env.post("/payments", key=key, body=b'{"amount":10}')
        assert_problem(r4, 422, "fingerprint-mismatch")
        assert env.upstream.count() == 1


# ---------------------------------------------------------------- bad requests


def test_invalid_keys_get_400():
    with Env() as env:
        cases = [
            ("empty", [("Idempotency-Key", "")]),
            ("empty sf-string", [("Idempotency-Key", '""')]),
            ("256 bytes", [("Idempotency-Key", "a" * 256)]),
            ("tab inside", [("Idempotency-Key", "ab\tcd")]),
            ("space inside", [("Idempotency-Key", "ab cd")]),
            ("non-ascii byte", [("Idempotency-Key", "caf\xe9")]),
            ("repeated header", [("Idempotency-Key", "a1"), ("Idempotency-Key", "a2")]),
            ("repeated same value", [("Idempotency-Key", "a1"), ("Idempotency-Key", "a1")]),
        ]
        for label, headers in cases:
            r = request(env.proxy.port, "POST", "/orders", headers, b"{}")
            assert r.status == 400, f"{label}: {r!r}"
            code = problem(r).get("code")
            assert code == "invalid-key", f"{label}: code {code!r}"
        # control bytes: the HTTP parser may refuse them first (bad-request)
        for label, value in (("control byte", b"ab\x01cd"), ("DEL", b"ab\x7fcd")):
            r = request(env.proxy.port, "POST", "/orders", [(b"Idempotency-Key", value)], b"{}")
            assert r.status == 400, f"{label}: {r!r}"
            if r.body:
                code = problem(r).get("code")
                assert code in ("invalid-key", "bad-request"), f"{label}: code {code!r}"
        assert env.upstream.count() == 0, "a bad key reached the upstream"
        # 255 bytes is still a key
        r = env.post("/orders", key="b" * 255, body=b"{}")
        assert r.status == 201, r
        assert env.upstream.count() == 1


def test_require_key_on_without_key_is_400():
    with Env(extra_config="require_key on") as env:
        r = env.post("/orders", body=b"{}")
        assert_problem(r, 400, "missing-key")
        assert env.upstream.count() == 0
        # a key still works, and uncovered methods need none
        assert env.post("/orders", key=new_key(), body=b"{}").status == 201
        assert env.request("GET", "/orders").status == 200


def test_no_key_is_proxied_and_logged_nokey():
    with Env() as env:
        r1 = env.post("/orders", body=b"{}")
        r2 = env.post("/orders", body=b"{}")
        assert r1.status == 201 and r2.status == 201, (r1, r2)
        assert not is_replay(r2)
        assert env.upstream.count() == 2
        log = env.proxy.wait_access_log(2)
        assert [e.get("idem") for e in log[-2:]] == ["nokey", "nokey"], log


def test_uncovered_get_is_proxied_and_never_touches_redis():
    with Env() as env:
        key = new_key()
        r1 = env.request("GET", "/orders/1", {"Idempotency-Key": key})
        r2 = env.request("GET", "/orders/1", {"Idempotency-Key": key})
        assert r1.status == 200 and r2.status == 200, (r1, r2)
        assert not is_replay(r2), r2
        assert env.upstream.count(key) == 2
        assert env.redis.cmd("DBSIZE") == 0, env.redis.keys()
        log = env.proxy.wait_access_log(2)
        assert [e.get("idem") for e in log[-2:]] == ["bypass", "bypass"], log


def test_body_over_max_request_body_is_413():
    with Env(extra_config="max_request_body 1k") as env:
        r = env.post("/orders", key=new_key(), body=b"x" * 2000)
        assert_problem(r, 413, "payload-too-large")
        assert env.upstream.count() == 0
        r = env.post("/orders", key=new_key(), body=b"y" * 1024)
        assert r.status == 201, r
        assert r.json()["body_len"] == 1024
        assert r.json()["body_fnv"] == fnv1a64(b"y" * 1024), "body changed on the way"


# ---------------------------------------------------------------- failures


def test_redis_down_is_503_then_recovers():
    with Env(extra_config="redis_timeout 500ms", expect_errors=True) as env:
        assert env.post("/orders", key=new_key(), body=b"{}").status == 201
        env.redis.stop()
        r = env.post("/orders", key=new_key(), body=b"{}")
        assert_problem(r, 503, "store-unavailable")
        assert r.header("Retry-After") == "1", r
        assert env.upstream.count() == 1, "forwarded while the store was down"
        env.redis.start()
        key = new_key()

        def works():
            resp = env.post("/orders", key=key, body=b"{}")
            return resp if resp.status == 201 else None

        r = wait_until(works, 6, interval=0.2, what="requests to succeed after redis came back")
        again = env.post("/orders", key=key, body=b"{}")
        assert is_replay(again) and again.body == r.body, again
        assert env.upstream.count(key) == 1


def test_on_store_error_pass_forwards_degraded():
    with Env(extra_config="on_store_error pass\nredis_timeout 500ms", expect_errors=True) as env:
        env.redis.stop()
        key = new_key()
        r = env.post("/orders", key=key, body=b"{}")
        assert r.status == 201, r
        assert (r.header("Idempotency-Degraded") or "").lower() == "true", r
        assert env.upstream.count(key) == 1


def test_upstream_down_is_502_and_key_released():
    with Env(extra_config="upstream_fail_timeout 1s\nupstream_connect_timeout 1s",
             expect_errors=True) as env:
        key = new_key()
        env.upstream.stop()
        r = env.post("/orders", key=key, body=b"{}")
        doc = assert_problem(r, 502, "upstream-unavailable")
        assert doc.get("idempotency_key") == key, doc
        env.upstream.start()  # same port, counters from zero
        seen = []

        def works():
            resp = env.post("/orders", key=key, body=b"{}")
            seen.append(resp.status)
            assert resp.status in (201, 502), f"key not released: {resp!r}"
            return resp if resp.status == 201 else None

        r = wait_until(works, 5, interval=0.2, what="the key to execute on the new upstream")
        assert not is_replay(r), r
        assert env.upstream.count(key) == 1


def test_upstream_timeout_is_504_then_outcome_unknown_until_unknown_ttl():
    with Env(extra_config="upstream_timeout 1s\nlock_ttl 3s\nunknown_ttl 3s",
             expect_errors=True) as env:
        key = new_key()
        r = env.post("/orders", key=key, body=b"{}", headers={"X-Test-Delay": "2500"})
        assert_problem(r, 504, "upstream-timeout")
        failed_at = time.monotonic()
        dup = env.post("/orders", key=key, body=b"{}")
        assert_problem(dup, 409, "outcome-unknown")
        ra = retry_after(dup)
        assert 1 <= ra <= 3, f"Retry-After {ra} beyond unknown_ttl"

        def free():
            resp = env.post("/orders", key=key, body=b"{}")
            if resp.status == 409:
                assert problem(resp).get("code") == "outcome-unknown", resp
                return None
            return resp

        r = wait_until(free, 5, interval=0.2, what="the key to be free after unknown_ttl")
        assert r.status == 201 and not is_replay(r), r
        assert time.monotonic() - failed_at >= 1.5, "unknown state ended long before unknown_ttl"
        assert env.upstream.count(key) == 2


def test_upstream_reset_after_send_is_outcome_unknown():
    # X-Test-Close: the upstream received the request (and executed it), then
    # dropped the connection without an answer.
    with Env(extra_config="upstream_timeout 1s\nlock_ttl 2s\nunknown_ttl 2s",
             expect_errors=True) as env:
        key = new_key()
        r = env.post("/orders", key=key, body=b"{}", headers={"X-Test-Close": "1"})
        assert r.status in (502, 504), r
        assert problem(r).get("code") in ("upstream-unavailable", "upstream-timeout"), r
        assert env.upstream.count(key) == 1, "the request was sent to the upstream again"
        dup = env.post("/orders", key=key, body=b"{}")
        assert_problem(dup, 409, "outcome-unknown")
        assert 1 <= retry_after(dup) <= 2, dup

        def free():
            resp = env.post("/orders", key=key, body=b"{}")
            return resp if resp.status != 409 else None

        r = wait_until(free, 4, interval=0.2, what="the key to be free after unknown_ttl")
        assert r.status == 201 and not is_replay(r), r
        assert env.upstream.count(key) == 2


def test_on_inflight_wait_replays_when_the_first_finishes():
    with Env(extra_config="on_inflight wait 5s") as env:
        key = new_key()
        first = background(env.post, "/orders", key=key, body=b"{}",
                           headers={"X-Test-Delay": "1000"})
        wait_until(lambda: env.upstream.count(key) == 1, 3, what="first request at the upstream")
        t0 = time.monotonic()
        dup = env.post("/orders", key=key, body=b"{}")
        waited = time.monotonic() - t0
        r1 = first.result(10)
        assert r1.status == 201 and not is_replay(r1), r1
        assert dup.status == 201 and is_replay(dup), f"parked duplicate was not replayed: {dup!r}"
        assert dup.body == r1.body
        assert waited < 4, f"duplicate waited {waited:.1f}s, past the first's completion"
        assert env.upstream.count(key) == 1


def test_on_inflight_wait_gives_up_after_its_duration():
    with Env(extra_config="on_inflight wait 300ms") as env:
        key = new_key()
        first = background(env.post, "/orders", key=key, body=b"{}",
                           headers={"X-Test-Delay": "1500"})
        wait_until(lambda: env.upstream.count(key) == 1, 3, what="first request at the upstream")
        t0 = time.monotonic()
        dup = env.post("/orders", key=key, body=b"{}")
        waited = time.monotonic() - t0
        assert_problem(dup, 409, "conflict")
        assert 0.2 <= waited < 1.4, f"409 after {waited:.2f}s, not after the 300ms wait"
        assert first.result(10).status == 201
        assert env.upstream.count(key) == 1


def test_release_on_status_lets_the_client_retry():
    with Env() as env:
        key = new_key()
        fail = {"X-Test-Status": "500"}
        r1 = env.post("/orders", key=key, body=b"{}", headers=fail)
        r2 = env.post("/orders", key=key, body=b"{}", headers=fail)
        assert r1.status == 500 and r2.status == 500, (r1, r2)
        assert not is_replay(r2)
        assert env.upstream.count(key) == 2
        r3 = env.post("/orders", key=key, body=b"{}")
        assert r3.status == 201 and not is_replay(r3), r3
        r4 = env.post("/orders", key=key, body=b"{}")
        assert r4.status == 201 and is_replay(r4) and r4.body == r3.body, r4
        assert env.upstream.count(key) == 3


def test_on_duplicate_reject():
    with Env(extra_config="on_duplicate reject") as env:
        key = new_key()
        assert env.post("/orders", key=key, body=b"{}").status == 201
        r = env.post("/orders", key=key, body=b"{}")
        assert_problem(r, 409, "already-completed")
        assert r.header("Idempotency-Original-Status") == "201", r
        assert env.upstream.count(key) == 1


def test_response_over_max_cached_body_replays_without_body():
    with Env(extra_config="max_cached_body 1k") as env:
        key = new_key()
        big = {"X-Test-Body-Size": "5000"}
        r1 = env.post("/orders", key=key, body=b"{}", headers=big)
        assert r1.status == 201 and len(r1.body) == 5000, (r1.status, len(r1.body))
        r2 = env.post("/orders", key=key, body=b"{}", headers=big)
        assert r2.status == 201, r2
        assert r2.body == b"", f"replay carried {len(r2.body)} bytes"
        assert is_replay(r2), r2
        assert (r2.header("Idempotency-Replay") or "").lower() == "omitted", r2
        assert env.upstream.count(key) == 1


def test_scope_separates_tenants():
    with Env() as env:
        key = new_key()
        a = {"Authorization": "Bearer A"}
        b = {"Authorization": "Bearer B"}
        ra = env.post("/orders", key=key, body=b"{}", headers=a)
        rb = env.post("/orders", key=key, body=b"{}", headers=b)
        assert ra.status == 201 and rb.status == 201, (ra, rb)
        assert not is_replay(rb), "tenant B got a replay of tenant A"
        assert ra.json()["n"] != rb.json()["n"], "tenant B got tenant A's body"
        anon = env.post("/orders", key=key, body=b"{}")
        assert anon.status == 201 and not is_replay(anon), anon
        assert env.upstream.count(key) == 3
        ra2 = env.post("/orders", key=key, body=b"{}", headers=a)
        rb2 = env.post("/orders", key=key, body=b"{}", headers=b)
        assert is_replay(ra2) and ra2.body == ra.body, ra2
        assert is_replay(rb2) and rb2.body == rb.body, rb2
        assert env.upstream.count(key) == 3


def test_redis_holds_one_key_with_ttl():
    with Env(extra_config="ttl 1h\nlock_ttl 6s\nupstream_timeout 3s") as env:
        key = new_key()
        assert env.post("/orders", key=key, body=b"{}").status == 201
        keys = env.redis.keys("idem:*")
        assert len(keys) == 1, f"expected one idem: key, found {keys}"
        pttl = env.redis.cmd("PTTL", keys[0])
        assert 3_500_000 <= pttl <= 3_600_000, f"PTTL {pttl} of a finished record is not ~1h"
        # in flight: the lease, about lock_ttl (renewed every lock_ttl/3), then
        # unknown_ttl (the ttl by default) should the lease run out
        slow = new_key()
        job = background(env.post, "/orders", key=slow, body=b"{}",
                         headers={"X-Test-Delay": "1500"})
        wait_until(lambda: env.upstream.count(slow) == 1, 3, what="slow request at the upstream")
        now = env.redis.keys("idem:*")
        new = [k for k in now if k not in keys]
        assert len(new) == 1, f"expected one new key while in flight, found {now}"
        k = env.redis.key_state(new[0])
        assert k["state"] == "inflight" and k["unknown_ms"] == 3_600_000, k
        lease = k["pttl"] - k["unknown_ms"]
        assert 3000 <= lease <= 6000, f"lease {lease} of an in-flight key is not ~lock_ttl 6s"
        assert job.result(10).status == 201
        pttl = env.redis.cmd("PTTL", new[0])
        assert 3_500_000 <= pttl <= 3_600_000, f"PTTL {pttl} after completion is not ~1h"
        assert len(env.redis.keys("idem:*")) == 2


def test_lease_is_renewed_while_the_upstream_works():
    # lock_ttl 6s, renewed every 2s: at 2.5s a renewed lease has ~5.5s left,
    # one never renewed 3.5s at most; the upstream answers at 4s.
    with Env(extra_config="lock_ttl 6s\nupstream_timeout 5s") as env:
        key = new_key()
        job = background(env.post, "/orders", key=key, body=b"{}",
                         headers={"X-Test-Delay": "4000"})
        wait_until(lambda: env.upstream.count(key) == 1, 3, what="slow request at the upstream")
        time.sleep(2.5)
        keys = env.redis.keys("idem:*")
        assert len(keys) == 1, keys
        k = env.redis.key_state(keys[0])
        assert k["state"] == "inflight", k
        assert len(k["owner"]) == 32, k
        # the expiry is the lease left plus unknown_ttl (ttl: 24h by default)
        lease_left = k["pttl"] - k["unknown_ms"]
        assert k["unknown_ms"] == 24 * 3600 * 1000, k
        assert lease_left > 4500, f"lease not renewed: {lease_left}ms left after 2.5s of a 6s lock"
        assert job.result(10).status == 201
        k = env.redis.key_state(keys[0])
        # Done, no owner token is left: no owner-checked script matches it again.
        assert k["state"] == "done" and "owner" not in k, k


def test_owner_tokens_are_fresh_for_every_claim():
    """Owner tokens come from a per-thread pool of random bytes: every claim
    still gets its own 128-bit token, across both workers."""
    with Env(extra_config="workers 2") as env:
        keys = [new_key() for _ in range(40)]
        jobs = [background(env.post, "/orders", key=k, body=b"{}",
                           headers={"X-Test-Delay": "5000"}) for k in keys]
        wait_until(lambda: all(env.upstream.count(k) == 1 for k in keys), 5,
                   what="every request at the upstream")
        owners = [env.redis.key_state(rk)["owner"] for rk in env.redis.keys("idem:*")]
        assert len(owners) == 40, owners
        for o in owners:
            assert o is not None and re.fullmatch(rb"[0-9a-f]{32}", o), o
        assert len(set(owners)) == 40, f"{40 - len(set(owners))} owner tokens repeated"
        assert all(j.result(15).status == 201 for j in jobs)


def test_error_doc_url_links_problems():
    url = "https://example.test/errors"
    with Env(extra_config=f"error_doc_url {url}") as env:
        key = new_key()
        want = f'<{url}>; rel="describedby"'
        bad = env.post("/orders", key="", body=b"{}")
        assert_problem(bad, 400, "invalid-key")
        assert bad.header("Link") == want, bad
        assert env.post("/orders", key=key, body=b"1").status == 201
        mism = env.post("/orders", key=key, body=b"2")
        assert_problem(mism, 422, "fingerprint-mismatch")
        assert mism.header("Link") == want, mism


TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d)$")
ACCESS_KEYS = ("ts", "client", "method", "path", "status", "idem", "key", "scope", "upstream",
               "upstream_ms", "ms", "bytes")


def test_access_log_lines():
    with Env() as env:
        key = new_key()
        marker = "BODY-MARKER-" + uuid.uuid4().hex
        body = ('{"secret":"%s"}' % marker).encode()
        r1 = env.post("/orders", key=key, body=body, headers={"Authorization": "Bearer T"})
        r2 = env.post("/orders", key=key, body=body, headers={"Authorization": "Bearer T"})
        assert r1.status == 201 and is_replay(r2), (r1, r2)
        log = env.proxy.wait_access_log(2)
        assert len(log) == 2, f"expected 2 lines, got {log}"
        for e in log:
            missing = [k for k in ACCESS_KEYS if k not in e]
            assert not missing, f"access log line lacks {missing}: {e}"
            assert TS_RE.match(e["ts"]), f"ts not RFC 3339 with ms: {e['ts']!r}"
            assert e["client"].startswith("127.0.0.1"), e
            assert e["method"] == "POST" and e["path"] == "/orders", e
            assert e["status"] == 201, e
            assert e["key"] == key, e
            assert isinstance(e["ms"], (int, float)) and isinstance(e["bytes"], int), e
            assert e["bytes"] > 0, e
            assert e["scope"] not in ("Bearer T", "T"), "scope is not hashed"
        assert [e["idem"] for e in log] == ["miss", "replay"], log
        assert log[0]["upstream"], "miss has no upstream"
        assert log[0]["scope"] == log[1]["scope"]
        text = open(env.proxy.access_log_path).read()
        assert marker not in text, "request body in the access log"
        assert r1.json()["body_fnv"] not in text, "response body in the access log"
        assert "Bearer T" not in text, "Authorization value in the access log"


def test_two_accounts_under_one_platform_key_are_two_scopes():
    with Env(extra_config="scope header:Authorization header:Stripe-Account") as env:
        platform = "Bearer sk_platform"
        a = env.post("/orders", key="k1", headers={"Authorization": platform,
                                                    "Stripe-Account": "acct_A"})
        b = env.post("/orders", key="k1", headers={"Authorization": platform,
                                                    "Stripe-Account": "acct_B"})
        assert a.status == 201 and b.status == 201, (a, b)
        assert b.header("Idempotent-Replayed") is None, "account B got account A's answer"
        again = env.post("/orders", key="k1", headers={"Authorization": platform,
                                                        "Stripe-Account": "acct_A"})
        assert again.header("Idempotent-Replayed") == "true"
        assert again.body == a.body
        assert env.upstream.count("k1") == 2


STRIPE_TEMPLATE = ('{"error": {"type": "idempotency_error", "code": "{code}", '
                   '"message": "{detail}", "status": {status}, "title": "{title}", '
                   '"idempotency_key": "{key}"}}\n')


def _stripe_error(resp, status, code):
    assert resp.status == status, resp
    assert resp.header("Content-Type") == "application/json", resp
    doc = resp.json()["error"]
    assert doc["type"] == "idempotency_error" and doc["code"] == code, doc
    assert doc["status"] == status and doc["message"] and doc["title"], doc
    return doc


def test_error_body_speaks_the_apis_own_format_for_every_answer():
    import os
    with Env(proxy=False, expect_errors=True) as env:
        path = os.path.join(env.tmp, "stripe.json")
        with open(path, "w") as f:
            f.write(STRIPE_TEMPLATE)
        env.start_proxy(f"error_body {path}\nrequire_key on\nmax_request_body 64\n"
                        "route /slow { lock_ttl 60s }")
        _stripe_error(env.post("/orders"), 400, "missing-key")
        _stripe_error(env.post("/orders", key=""), 400, "invalid-key")
        _stripe_error(env.post("/orders", key="big", body=b"x" * 100), 413, "payload-too-large")
        first = background(env.post, "/slow", key="c1", headers={"X-Test-Delay": "2000"})
        wait_until(lambda: env.upstream.count("c1") == 1, 5 * SLOW, what="c1 at the upstream")
        doc = _stripe_error(env.post("/slow", key="c1"), 409, "conflict")
        assert doc["idempotency_key"] == "c1", doc
        assert first.result().status == 201
        _stripe_error(env.post("/slow", key="c1", body=b'{"other":1}'), 422,
                      "fingerprint-mismatch")
        # a key with a quote and a backslash is escaped into the JSON, not spliced
        assert env.post("/orders", key='a"b\\c', body=b"{}").status == 201
        doc = _stripe_error(env.post("/orders", key='a"b\\c', body=b"{1}"), 422,
                            "fingerprint-mismatch")
        assert doc["idempotency_key"] == 'a"b\\c', doc
        _stripe_error(env.post("/orders", key="u1", headers={"X-Test-Close": "1"}), 502,
                      "upstream-unavailable")
        # a malformed head is refused before any route: the global template
        got = raw(env.proxy.port, b"GET /a\tb HTTP/1.1\r\nHost: x\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 400") and b'"type": "idempotency_error"' in got, got
        env.redis.stop()
        _stripe_error(env.post("/orders", key="r1"), 503, "store-unavailable")


def test_error_body_with_an_unknown_placeholder_is_a_config_error():
    import os
    with Env(proxy=False) as env:
        path = os.path.join(env.tmp, "bad.json")
        with open(path, "w") as f:
            f.write('{"error": {"message": "{detial}", "x": {}}}')
        conf = os.path.join(env.tmp, "t.conf")
        with open(conf, "w") as f:
            f.write(f"upstream http://127.0.0.1:1\n\nerror_body {path}\n")
        rc, out, err = run_idemproxy(["-t", "-c", conf])
        assert rc == 1 and f"{conf}:3: error_body: {path}: unknown placeholder {{detial}}" in err, err


def test_retry_after_on_conflict_is_when_the_first_attempt_is_likely_done():
    """A route whose requests take ~300 ms, with lock_ttl 60s: the 409's
    Retry-After was the whole lease (59 s), which an SDK honouring it sleeps."""
    # one worker: each keeps its own latency (no lock on the request path)
    with Env(extra_config="workers 1\nlock_ttl 60s\nroute /fast { lock_ttl 60s }") as env:
        delay = {"X-Test-Delay": "300"}
        for i in range(5):  # the route's recent latency
            assert env.post("/fast", key=f"warm-{i}", headers=delay).status == 201
        first = background(env.post, "/fast", key="c1", headers={"X-Test-Delay": "2000"})
        wait_until(lambda: env.upstream.count("c1") == 1, 5 * SLOW, what="c1 at the upstream")
        r = env.post("/fast", key="c1", headers=delay)
        assert r.status == 409, r
        assert 1 <= retry_after(r) <= 2, r
        assert first.result().status == 201
        # a route with no history yet still answers with the lease left
        first = background(env.post, "/orders", key="c2", headers={"X-Test-Delay": "2000"})
        wait_until(lambda: env.upstream.count("c2") == 1, 5 * SLOW, what="c2 at the upstream")
        r = env.post("/orders", key="c2")
        assert r.status == 409 and 50 <= retry_after(r) <= 60, r
        first.result()


def test_fingerprint_json_takes_a_re_serialised_retry_for_the_same_request():
    with Env(extra_config="fingerprint method path json") as env:
        first = env.post("/orders", key="j1", body=b'{"amount": 1000, "meta": {"a": 1, "b": [1, 2]}}')
        assert first.status == 201
        retry = env.post("/orders", key="j1",
                         body=b'{"meta":{"b":[1,2],"a":1},"amount":1e3}')
        assert retry.status == 201 and retry.header("Idempotent-Replayed") == "true", retry
        assert retry.body == first.body
        other = env.post("/orders", key="j1", body=b'{"amount": 1001, "meta": {"a": 1, "b": [1, 2]}}')
        assert_problem(other, 422, "fingerprint-mismatch")
        # not JSON: its bytes
        assert env.post("/orders", key="j2", body=b"amount=1000").status == 201
        assert env.post("/orders", key="j2", body=b"amount=1000").header("Idempotent-Replayed")
        assert_problem(env.post("/orders", key="j2", body=b"amount=1001"), 422,
                       "fingerprint-mismatch")
        assert env.upstream.count("j1") == 1 and env.upstream.count("j2") == 1
