"""Records sealed at rest (SPEC §10) and webhook signatures checked before the
claim (SPEC §11), end to end: what Redis holds, what a tampered or foreign
record gets, key rotation by reload, and each provider's scheme with real
signatures computed here (valid, wrong secret, tampered body, stale
timestamp, missing field, rotated secret)."""

import base64
import hashlib
import hmac
import json
import os
import signal
import time
import uuid

from harness import Env, assert_problem, run_idemproxy, wait_until

REPLAY = "Idempotent-Replayed"
MARKER = "pan-4242424242424242-7d3f"


def new_key():
    return "k-" + uuid.uuid4().hex


def private_file(env, name, content, mode=0o600):
    path = os.path.join(env.tmp, name)
    with open(path, "wb") as f:
        f.write(content if isinstance(content, bytes) else content.encode())
    os.chmod(path, mode)
    return path


def record_key_file(env, name):
    """A fresh 32-byte key as 64 hex digits; returns (path, key id bytes)."""
    key = os.urandom(32)
    path = private_file(env, name, key.hex() + "\n")
    return path, hashlib.sha256(b"idemproxy record key id" + key).digest()[:4]


def redis_name(env, key):
    names = env.redis.keys("idem:*" + key)
    assert len(names) == 1, names
    return names[0]


def stored_record(env, key):
    state = env.redis.key_state(redis_name(env, key))
    assert state and state["state"] == "done", state
    return state["record"]


def set_record(env, key, record):
    """Replaces the record part of a done key in Redis, keeping its expiry."""
    name = redis_name(env, key)
    value = env.redis.cmd("GET", name)
    head = value[:2 + value[2:].index(b":") + 1]
    env.redis.cmd("SET", name, head + record, "KEEPTTL")


def keys_config(*paths):
    return "\n".join(f"record_encryption_key_file {p}" for p in paths)


def reload(env, extra):
    before = len(env.proxy.error_log())
    env.proxy.write_config(extra)
    env.proxy.signal(signal.SIGHUP)
    wait_until(lambda: "reload complete" in env.proxy.error_log()[before:], 5,
               what="the reload in the error log")


# ---------------------------------------------------------------- records at rest


def test_sealed_records_hold_no_plaintext_and_replay():
    with Env(proxy=False) as env:
        path, key_id = record_key_file(env, "record-key")
        env.start_proxy(keys_config(path))
        key = new_key()
        headers = {"X-Echo-Card": MARKER}
        first = env.post(f"/orders/{MARKER}", key=key, headers=headers)
        assert first.status == 201 and MARKER.encode() in first.body, first
        again = env.post(f"/orders/{MARKER}", key=key, headers=headers)
        assert again.status == 201 and again.header(REPLAY) == "true", again
        assert again.body == first.body and again.header("X-Echo-Card") == MARKER
        assert env.upstream.count(key) == 1
        record = stored_record(env, key)
        assert record[:4] == b"IDS1" and record[4:8] == key_id, record[:8]
        # the marker is nowhere in Redis: not in a name, a value or a dump
        names = [n.encode() for n in env.redis.keys("*")]
        assert names, "nothing stored"
        for name in names:
            assert MARKER.encode() not in name
            assert MARKER.encode() not in (env.redis.cmd("DUMP", name) or b"")
            if env.redis.cmd("TYPE", name) == b"string":
                assert MARKER.encode() not in env.redis.cmd("GET", name)


def test_a_tampered_or_moved_record_is_503_and_never_replayed():
    with Env(proxy=False, expect_errors=True) as env:
        path, _ = record_key_file(env, "record-key")
        env.start_proxy(keys_config(path))
        key, other = new_key(), new_key()
        assert env.post(key=key).status == 201
        assert env.post(key=other).status == 201
        record = bytearray(stored_record(env, key))
        record[len(record) // 2] ^= 0x01
        set_record(env, key, bytes(record))
        r = env.post(key=key)
        assert_problem(r, 503, "store-unavailable")
        assert r.header(REPLAY) is None
        # another key's record copied under this one does not open either
        set_record(env, key, stored_record(env, other))
        assert_problem(env.post(key=key), 503, "store-unavailable")
        assert env.upstream.count(key) == 1, "a record that did not open was run again"
        log = env.proxy.error_log()
        assert "fails authentication" in log and redis_name(env, key) in log, log[-600:]
        assert env.post(key=other).header(REPLAY) == "true"


def test_records_stored_in_clear_are_not_replayed_once_keys_are_set():
    with Env(expect_errors=True) as env:
        key = new_key()
        assert env.post(key=key).status == 201
        assert env.post(key=key).header(REPLAY) == "true"
        path, _ = record_key_file(env, "record-key")
        reload(env, keys_config(path))
        assert_problem(env.post(key=key), 503, "store-unavailable")
        assert "is not sealed although record_encryption_key_file is set" in env.proxy.error_log()
        assert env.upstream.count(key) == 1


def test_key_rotation_by_reload():
    with Env(proxy=False, expect_errors=True) as env:
        old_path, old_id = record_key_file(env, "key-old")
        new_path, new_id = record_key_file(env, "key-new")
        env.start_proxy(keys_config(old_path))
        before = new_key()
        assert env.post(key=before).status == 201
        reload(env, keys_config(new_path, old_path))
        assert env.post(key=before).header(REPLAY) == "true", "old record no longer opens"
        after = new_key()
        assert env.post(key=after).status == 201
        assert stored_record(env, after)[4:8] == new_id, "the first key must seal"
        assert stored_record(env, before)[4:8] == old_id
        reload(env, keys_config(new_path))
        assert env.post(key=after).header(REPLAY) == "true"
        assert_problem(env.post(key=before), 503, "store-unavailable")
        assert "sealed with a key no record_encryption_key_file holds" in env.proxy.error_log()
        assert env.upstream.count(before) == 1 and env.upstream.count(after) == 1


def test_bad_key_and_secret_files_are_config_errors():
    with Env(proxy=False) as env:
        def check(extra):
            path = os.path.join(env.tmp, "check.conf")
            with open(path, "w") as f:
                f.write(f"listen 127.0.0.1:1\nupstream http://127.0.0.1:2\n{extra}\n")
            code, out, err = run_idemproxy(["-t", "-c", path])
            assert code == 1, (extra, out, err)
            return err

        good = private_file(env, "good", os.urandom(32).hex())
        shared = private_file(env, "shared", os.urandom(32).hex(), mode=0o644)
        short = private_file(env, "short", os.urandom(31))
        err = check(f"record_encryption_key_file {shared}")
        assert "check.conf:3:" in err and "chmod 600" in err, err
        assert "32-byte key" in check(f"record_encryption_key_file {short}")
        assert "given already" in check(f"record_encryption_key_file {good}\n"
                                        f"record_encryption_key_file {good}")
        secret = private_file(env, "secret", "s3cret\n")
        open_secret = private_file(env, "open-secret", "s3cret\n", mode=0o640)
        assert "chmod 600" in check(f"route /h {{ verify github {open_secret} }}")
        assert "no tolerance" in check(f"route /h {{ verify github {secret} tolerance 1m }}")
        assert "expected stripe" in check(f"route /h {{ verify paypal {secret} }}")
        assert "whsec_" in check(f"route /h {{ verify standard {secret} }}")
        assert "only allowed inside a route" in check(f"verify github {secret}")
        ok = os.path.join(env.tmp, "ok.conf")
        with open(ok, "w") as f:
            f.write(f"listen 127.0.0.1:1\nupstream http://127.0.0.1:2\n"
                    f"record_encryption_key_file {good}\n"
                    f"route /h {{ verify stripe {secret} tolerance 10m }}\n")
        code, out, err = run_idemproxy(["-t", "-c", ok])
        assert code == 0, (out, err)


# ---------------------------------------------------------------- webhook signatures


def hmac256(secret, data):
    return hmac.new(secret, data, hashlib.sha256).digest()


def sign_stripe(secret, body, ts):
    return {"Stripe-Signature": f"t={ts},v1={hmac256(secret, f'{ts}.'.encode() + body).hex()}"}


def sign_github(secret, body, ts):
    return {"X-Hub-Signature-256": "sha256=" + hmac256(secret, body).hex()}


def sign_shopify(secret, body, ts):
    return {"X-Shopify-Hmac-Sha256": base64.b64encode(hmac256(secret, body)).decode()}


def sign_standard(secret, body, ts):
    key = base64.b64decode(secret[len(b"whsec_"):])
    msg_id = "msg_" + uuid.uuid4().hex
    sig = base64.b64encode(hmac256(key, f"{msg_id}.{ts}.".encode() + body)).decode()
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": f"v1,{sig}"}


SCHEMES = {
    "stripe": (sign_stripe, True),
    "github": (sign_github, False),
    "standard": (sign_standard, True),
    "shopify": (sign_shopify, False),
}


def new_secret(scheme):
    if scheme == "standard":
        return b"whsec_" + base64.b64encode(os.urandom(24))
    return b"whsec_" + uuid.uuid4().hex.encode() if scheme == "stripe" else uuid.uuid4().hex.encode()


def webhook_env(env, scheme, *secrets):
    path = private_file(env, f"{scheme}-secret", b"\n".join(secrets) + b"\n")
    env.start_proxy(f"route /hooks {{ methods POST; key json:/id; scope none; "
                    f"verify {scheme} {path} }}")


def test_each_scheme_accepts_real_signatures_and_refuses_the_rest():
    with Env(proxy=False) as env:
        for scheme, (sign, timed) in SCHEMES.items():
            old, current = new_secret(scheme), new_secret(scheme)
            webhook_env(env, scheme, current, old)
            now = int(time.time())

            def deliver(body, headers):
                return env.request("POST", "/hooks", list(headers.items()) +
                                   [("Content-Type", "application/json")], body)

            event = "evt_" + uuid.uuid4().hex
            body = json.dumps({"id": event, "type": "charge.succeeded"}).encode()
            # refused: wrong secret, tampered body, stale, missing
            refused = [deliver(body, sign(new_secret(scheme), body, now)),
                       deliver(body.replace(b"succeeded", b"refunded"), sign(current, body, now)),
                       deliver(body, {})]
            if timed:
                refused.append(deliver(body, sign(current, body, now - 400)))
                refused.append(deliver(body, sign(current, body, now + 400)))
            for r in refused:
                assert_problem(r, 401, "signature-invalid")
            assert env.upstream.count() == 0, f"{scheme}: a bad signature reached the upstream"
            assert env.redis.keys("idem:*") == [], f"{scheme}: a bad signature claimed a key"
            # accepted: the current secret, and the old one during a rotation
            r = deliver(body, sign(current, body, now))
            assert r.status == 201, (scheme, r)
            r = deliver(body, sign(old, body, now))
            assert r.status == 201 and r.header(REPLAY) == "true", (scheme, r)
            other = json.dumps({"id": "evt_" + uuid.uuid4().hex}).encode()
            assert deliver(other, sign(old, other, now - 100 if timed else now)).status == 201
            assert env.upstream.count() == 2, scheme
            log = env.proxy.error_log()
            assert f"route /hooks: {scheme} webhook signature does not match" in log, log[-500:]
            assert f"{scheme} webhook signature missing" in log
            env.upstream.reset()
            env.redis.cmd("FLUSHALL")


def test_a_forged_delivery_does_not_occupy_the_real_events_key():
    with Env(proxy=False) as env:
        secret = new_secret("stripe")
        webhook_env(env, "stripe", secret)
        event = "evt_" + uuid.uuid4().hex
        now = int(time.time())
        forged = json.dumps({"id": event, "amount": 1}).encode()
        real = json.dumps({"id": event, "amount": 100}).encode()
        r = env.request("POST", "/hooks", list(sign_stripe(b"whsec_guess", forged, now).items()),
                        forged)
        assert_problem(r, 401, "signature-invalid")
        r = env.request("POST", "/hooks", list(sign_stripe(secret, real, now).items()), real)
        assert r.status == 201, r
        r = env.request("POST", "/hooks", list(sign_stripe(secret, real, now).items()), real)
        assert r.status == 201 and r.header(REPLAY) == "true", r
        assert env.upstream.count() == 1
        assert json.loads(r.body)["body_len"] == len(real), "the forged body was executed"
        outcomes = [line.get("idem") for line in env.proxy.access_log()]
        assert outcomes[0] == "signature_invalid", outcomes


def test_the_keys_admin_api_reads_sealed_records_and_states_without_the_key():
    from test_keys_admin import keys_env, show
    with keys_env(expect_errors=True) as env:
        path, _ = record_key_file(env, "record-key")
        admin = f"admin_listen 127.0.0.1:{env.admin_port}\nadmin_token_file {env.token_path}\n"
        reload(env, admin + keys_config(path))
        key = new_key()
        assert env.post(key=key).status == 201
        shown = show(env, key).json()
        assert shown["state"] == "done" and shown["sealed"] is True, shown
        assert shown["status"] == 201 and shown["body_size"] > 0, shown
        reload(env, admin)  # the key file gone: state and fingerprint still read
        shown = show(env, key).json()
        assert shown["state"] == "done" and shown["record"] == "sealed", shown
        assert shown["fingerprint"] and "status" not in shown, shown


def test_a_record_beside_another_requests_fingerprint_does_not_open():
    """Whoever writes to Redis cannot make key A answer request B with A's
    response by copying B's fingerprint next to it: the fingerprint is bound
    into the seal."""
    with Env(proxy=False, expect_errors=True) as env:
        path, _ = record_key_file(env, "record-key")
        env.start_proxy(keys_config(path))
        a, b = new_key(), new_key()
        assert env.post(key=a, body=b'{"amount":1}').status == 201
        assert env.post(key=b, body=b'{"amount":999}').status == 201
        fp_b = env.redis.key_state(redis_name(env, b))["fingerprint"]
        name_a = redis_name(env, a)
        value_a = env.redis.cmd("GET", name_a)
        env.redis.cmd("SET", name_a, b"d:" + fp_b + b":" + env.redis.key_state(name_a)["record"],
                      "KEEPTTL")
        assert value_a != env.redis.cmd("GET", name_a)
        r = env.post(key=a, body=b'{"amount":999}')
        assert_problem(r, 503, "store-unavailable")
        assert env.upstream.count(a) == 1


def test_verify_checks_every_method_of_its_route():
    with Env(proxy=False) as env:
        secret = new_secret("github")
        path = private_file(env, "gh-secret", secret + b"\n")
        env.start_proxy(f"route /hooks {{ methods POST; key header:X-GitHub-Delivery; "
                        f"scope none; verify github {path} }}")
        for method in ("GET", "PUT", "OPTIONS", "DELETE"):
            assert_problem(env.request(method, "/hooks"), 401, "signature-invalid")
        assert env.upstream.count() == 0
        body = b'{"zen":"ok"}'
        r = env.request("PUT", "/hooks", list(sign_github(secret, body, 0).items()), body)
        assert r.status == 200 and r.header(REPLAY) is None, r  # not covered: forwarded as is
        assert env.upstream.count() == 1
        code, _, err = run_idemproxy(["-t", "-c", write_conf(env, f"route /h {{ bypass on; verify github {path} }}")])
        assert code == 1 and "bypass on" in err, err


def write_conf(env, extra):
    conf = os.path.join(env.tmp, "t.conf")
    with open(conf, "w") as f:
        f.write(f"listen 127.0.0.1:1\nupstream http://127.0.0.1:2\n{extra}\n")
    return conf
