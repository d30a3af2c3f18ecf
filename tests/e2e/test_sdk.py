"""A real client library through idemproxy (SPEC §4.6): the official Stripe
Node SDK (tests/e2e/sdk, installed by `make test`), which sends an
Idempotency-Key on every POST and retries timeouts, 409 and 5xx itself,
against a Stripe-shaped API (sdk/stripe_sdk.js upstream). With idemproxy's
errors in Stripe's format (error_body), the application never takes an
idemproxy answer for a created object, and nothing executes twice.
"""
import json
import os
import subprocess
import urllib.request

from harness import ROOT, SLOW, Env, TestFailure, _spawn

SDK = os.path.join(ROOT, "tests", "e2e", "sdk")

STRIPE_ERRORS = ('{"error": {"type": "idempotency_error", "code": "{code}", '
                 '"message": "{detail}"}}')


def _count(port, key):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/__count?key={key}", timeout=5) as r:
        return json.load(r)["count"]


def test_the_stripe_sdk_never_reads_an_idemproxy_error_as_success():
    if not os.path.isdir(os.path.join(SDK, "node_modules", "stripe")):
        raise TestFailure("the Stripe SDK is not installed: make test installs it "
                          "(npm install in tests/e2e/sdk)")
    api = _spawn(["node", os.path.join(SDK, "stripe_sdk.js"), "upstream"],
                 stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        port = json.loads(api.stdout.readline())["port"]
        with Env(proxy=False, upstream=False, expect_errors=True) as env:
            errors = os.path.join(env.tmp, "stripe-errors.json")
            with open(errors, "w") as f:
                f.write(STRIPE_ERRORS)
            env.upstream_port = port
            env.start_proxy(f"error_body {errors}\nupstream_timeout 5s\n"
                            "scope header:Authorization header:Stripe-Account")
            run = subprocess.run(["node", os.path.join(SDK, "stripe_sdk.js"), "client",
                                  str(env.proxy.port)], capture_output=True,
                                 timeout=60 * SLOW, cwd=SDK)
            assert run.returncode == 0, run.stderr.decode()[-2000:]
            out = json.loads(run.stdout.decode().splitlines()[-1])

            assert out["plain"] == {"ok": True, "id": "cus_1", "object": "customer"}, out
            # the duplicate waited (409, retried) and got the first answer
            assert out["race"][0]["id"] == out["race"][1]["id"], out
            assert out["timeout"]["ok"] and out["timeout"]["id"].startswith("cus_"), out
            # an unknown outcome is an error to the application, never an object
            assert not out["reset"]["ok"], out
            assert out["reset"]["type"] in ("StripeIdempotencyError", "StripeAPIError",
                                            "StripeConnectionError"), out
            assert out["reset"]["code"] in ("outcome-unknown", "upstream-unavailable", None), out
            assert not out["mismatch"]["ok"] and out["mismatch"]["status"] == 422, out
            assert out["mismatch"]["code"] == "fingerprint-mismatch", out
            for key in ("plain", "race", "slow", "reset"):
                assert _count(port, key) == 1, (key, _count(port, key))
            log = env.proxy.access_log()
            assert any(e["idem"] == "inflight" and e.get("key") == "race" for e in log), log
            assert any(e["idem"] == "unknown" and e.get("key") == "reset" for e in log), log
    finally:
        api.kill()
        api.wait(5)
