"""End-to-end tests of route blocks, key sources and one-time tokens
(SPEC §3 route, §4.1, §4.3), against a real Redis and the test upstream."""

import json
import uuid

from harness import Env, assert_problem

REPLAY = "Idempotent-Replayed"


def new_key():
    return "k-" + uuid.uuid4().hex


def replayed(r):
    return (r.header(REPLAY) or "") == "true"


def post(env, path, body=b"{}", headers=None, method="POST"):
    return env.request(method, path, headers or {}, body)


# ---------------------------------------------------------------- routes

def test_longest_prefix_wins_and_falls_back_to_global():
    conf = ("route /pay { on_duplicate reject }\n"
            "route /pay/refunds { ttl 1h }\n")
    with Env(extra_config=conf) as env:
        k1, k2, k3 = new_key(), new_key(), new_key()
        h = lambda k: {"Idempotency-Key": k}  # noqa: E731
        assert post(env, "/pay/charge", headers=h(k1)).status == 201
        assert_problem(post(env, "/pay/charge", headers=h(k1)), 409, "already-completed")
        # /pay/refunds sets only ttl: on_duplicate falls back to the global replay
        assert post(env, "/pay/refunds/1", headers=h(k2)).status == 201
        assert replayed(post(env, "/pay/refunds/1", headers=h(k2)))
        pttl = [env.redis.cmd("PTTL", k) for k in env.redis.keys("idem:*") if k.endswith(k2)]
        assert pttl and 3_000_000 < pttl[0] <= 3_600_000, pttl
        # outside any route: global policy
        assert post(env, "/orders", headers=h(k3)).status == 201
        assert replayed(post(env, "/orders", headers=h(k3)))
        assert [e["route"] for e in env.proxy.access_log()][:2] == ["/pay", "/pay"]


def test_bypass_route_never_touches_redis():
    with Env(extra_config="route /health { bypass on }") as env:
        k = new_key()
        for _ in range(3):
            assert post(env, "/health/x", headers={"Idempotency-Key": k}).status == 201
        assert env.upstream.count(k) == 3
        assert env.redis.cmd("DBSIZE") == 0


def test_side_effect_get_route():
    with Env(extra_config="route /coupons/claim { methods GET POST; require_key on }") as env:
        k = new_key()
        r1 = env.request("GET", "/coupons/claim?c=1", {"Idempotency-Key": k})
        r2 = env.request("GET", "/coupons/claim?c=1", {"Idempotency-Key": k})
        assert r1.status == 200 and replayed(r2) and r2.body == r1.body
        assert env.upstream.count(k) == 1
        assert_problem(env.request("GET", "/coupons/claim?c=1"), 400, "missing-key")
        # GET elsewhere is still not covered
        assert env.request("GET", "/other", {"Idempotency-Key": k}).status == 200


def test_route_release_on_and_fingerprint():
    conf = "route /r { release_on 409; fingerprint method path query }"
    with Env(extra_config=conf) as env:
        k = new_key()
        h = {"Idempotency-Key": k, "X-Test-Status": "409"}
        assert post(env, "/r?a=1", headers=h).status == 409
        assert post(env, "/r?a=1", headers=h).status == 409
        assert env.upstream.count(k) == 2  # released each time
        k2 = new_key()
        assert post(env, "/r?a=1", body=b"one", headers={"Idempotency-Key": k2}).status == 201
        # body is not in this route's fingerprint, the query is
        assert replayed(post(env, "/r?a=1", body=b"two", headers={"Idempotency-Key": k2}))
        assert_problem(post(env, "/r?a=2", headers={"Idempotency-Key": k2}), 422,
                       "fingerprint-mismatch")


# ---------------------------------------------------------------- key sources

def test_query_key_source():
    with Env(extra_config="route /q { key query:op_id }") as env:
        k = new_key()
        assert post(env, f"/q?x=1&op_id={k}").status == 201
        assert replayed(post(env, f"/q?op_id={k}&x=1"))
        assert env.upstream.count() == 1


def test_form_key_source_alipay_style():
    conf = "route /webhooks/alipay { key form:notify_id; scope none; on_duplicate reject }"
    with Env(extra_config=conf) as env:
        body = b"trade_no=2024&notify_id=ab%2Fcd1&total_amount=9.90"
        ct = {"Content-Type": "application/x-www-form-urlencoded"}
        assert post(env, "/webhooks/alipay", body=body, headers=ct).status == 201
        again = post(env, "/webhooks/alipay", body=body, headers=ct)
        assert_problem(again, 409, "already-completed")
        assert again.header("Idempotency-Original-Status") == "201"
        assert env.upstream.count() == 1
        # percent-decoded, in the shared scope "-"
        assert env.redis.keys("idem:*") == ["idem:-:ab/cd1"]
        # a decoded value that is not visible ASCII is an invalid key
        bad = post(env, "/webhooks/alipay", body=b"notify_id=a+b", headers=ct)
        assert_problem(bad, 400, "invalid-key")


def test_json_key_source_with_header_fallback():
    with Env(extra_config="route /orders { key header:Idempotency-Key json:/order/no }") as env:
        body = json.dumps({"order": {"no": "A-1001", "items": [1, 2]}}).encode()
        ct = {"Content-Type": "application/json"}
        assert post(env, "/orders", body=body, headers=ct).status == 201
        assert replayed(post(env, "/orders", body=body, headers=ct))
        assert env.upstream.count() == 1
        # the header comes first when present
        k = new_key()
        assert post(env, "/orders", body=body, headers={**ct, "Idempotency-Key": k}).status == 201
        assert env.upstream.count(k) == 1
        # a body that is not JSON has no key: passed through (require_key off)
        assert post(env, "/orders", body=b"not json", headers=ct).status == 201
        assert post(env, "/orders", body=b"not json", headers=ct).status == 201
        assert env.upstream.count() == 4


def test_json_number_key_and_require_key():
    with Env(extra_config="route /wx { key json:/id; require_key on; scope none }") as env:
        ct = {"Content-Type": "application/json"}
        assert post(env, "/wx", body=b'{"id": 12345, "x": true}', headers=ct).status == 201
        assert replayed(post(env, "/wx", body=b'{"id": 12345, "x": true}', headers=ct))
        assert_problem(post(env, "/wx", body=b'{"id": null}', headers=ct), 400, "missing-key")


def test_github_delivery_header_without_scope():
    with Env(extra_config="route /webhooks/github { key header:X-GitHub-Delivery; scope none }") as env:
        d = str(uuid.uuid4())
        a = post(env, "/webhooks/github", headers={"X-GitHub-Delivery": d, "Authorization": "A"})
        b = post(env, "/webhooks/github", headers={"X-GitHub-Delivery": d, "Authorization": "B"})
        assert a.status == 201 and replayed(b)  # scope none: tenants share the key space


# ---------------------------------------------------------------- one-time tokens

TOKENS = "token_endpoint /idem/token\ntoken_ttl 2s\nroute /checkout { require_token on }"


def new_token(env, auth="Bearer A"):
    r = env.request("POST", "/idem/token", {"Authorization": auth})
    assert r.status == 201, r
    doc = json.loads(r.body)
    assert doc["expires_in"] == 2 and len(doc["token"]) == 32
    assert r.header("Idempotency-Token") == doc["token"]
    assert r.header("Cache-Control") == "no-store"
    return doc["token"]


def test_token_is_consumed_once_and_repeats_replay():
    with Env(extra_config=TOKENS) as env:
        t = new_token(env)
        h = {"Authorization": "Bearer A", "Idempotency-Token": t}
        first = post(env, "/checkout", headers=h)
        again = post(env, "/checkout", headers=h)
        assert first.status == 201 and replayed(again) and again.body == first.body
        assert env.upstream.count() == 1
        assert env.redis.keys("idem:token:*") == []


def test_token_errors():
    with Env(extra_config=TOKENS) as env:
        assert_problem(post(env, "/checkout"), 400, "token-invalid")
        assert_problem(post(env, "/checkout", headers={"Idempotency-Token": "f" * 32}), 400,
                       "token-invalid")
        # bound to the scope that fetched it
        t = new_token(env, "Bearer A")
        assert_problem(post(env, "/checkout", headers={"Authorization": "Bearer B",
                                                        "Idempotency-Token": t}),
                       400, "token-invalid")
        # expired
        t2 = new_token(env, "Bearer A")
        import time
        time.sleep(2.3)
        assert_problem(post(env, "/checkout", headers={"Authorization": "Bearer A",
                                                        "Idempotency-Token": t2}),
                       400, "token-invalid")
        assert env.upstream.count() == 0
        assert env.request("GET", "/idem/token").status == 405


def test_key_token_source_in_a_list():
    conf = "token_endpoint /idem/token\nroute /forms { key header:Idempotency-Key token }"
    with Env(extra_config=conf) as env:
        t = env.request("POST", "/idem/token").header("Idempotency-Token")
        assert post(env, "/forms", headers={"Idempotency-Token": t}).status == 201
        assert replayed(post(env, "/forms", headers={"Idempotency-Token": t}))
        k = new_key()
        assert post(env, "/forms", headers={"Idempotency-Key": k}).status == 201
        assert env.upstream.count() == 2
