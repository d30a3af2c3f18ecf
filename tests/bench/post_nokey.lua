-- POST without an idempotency key: proxied transparently (nokey).
wrk.method = "POST"
wrk.body = '{"amount":100}'
wrk.headers["Content-Type"] = "application/json"
