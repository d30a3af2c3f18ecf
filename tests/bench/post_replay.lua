-- POST replay: the same key and the same body on every request. bench.py
-- sends one warm-up request with this key first, so every request of the
-- run is answered from Redis (Idempotent-Replayed: true).
local key = os.getenv("BENCH_REPLAY_KEY") or "bench-replay"
wrk.method = "POST"
wrk.body = '{"amount":100}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Idempotency-Key"] = key

-- BENCH_DELAY_MS paces each connection (a modest fixed rate, not saturation).
local pause = tonumber(os.getenv("BENCH_DELAY_MS") or "")
if pause then
    function delay()
        return pause
    end
end
