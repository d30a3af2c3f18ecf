-- POST with a fresh Idempotency-Key on every request: claim + forward + store.
-- Keys are "bench-RUN-THREAD-COUNTER"; RUN comes from BENCH_RUN_ID (set by
-- bench.py, unique per run and per scenario) so that reruns against the same
-- Redis never collide with keys already stored.
local run_id = os.getenv("BENCH_RUN_ID") or tostring(os.time())
local next_thread = 0

function setup(thread)
    next_thread = next_thread + 1
    thread:set("tid", next_thread)
end

local counter = 0
local head, tail

function init(args)
    -- The request around the key is built once: wrk.format() per request
    -- costs wrk more CPU than the proxy spends on the claim, and wrk shares
    -- the machine's cores with the proxy it measures.
    local prefix = "bench-" .. run_id .. "-" .. tostring(tid) .. "-"
    head = "POST " .. wrk.path .. " HTTP/1.1\r\n" ..
           "Host: " .. wrk.headers["Host"] .. "\r\n" ..
           "Content-Type: application/json\r\n" ..
           "Content-Length: 14\r\n" ..
           "Idempotency-Key: " .. prefix
    tail = "\r\n\r\n{\"amount\":100}"
end

function request()
    counter = counter + 1
    return head .. counter .. tail
end

-- BENCH_DELAY_MS paces each connection (a modest fixed rate, not saturation).
local pause = tonumber(os.getenv("BENCH_DELAY_MS") or "")
if pause then
    function delay()
        return pause
    end
end
