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
local body = '{"amount":100}'
local prefix

function init(args)
    prefix = "bench-" .. run_id .. "-" .. tostring(tid) .. "-"
end

function request()
    counter = counter + 1
    return wrk.format("POST", nil, {
        ["Content-Type"] = "application/json",
        ["Idempotency-Key"] = prefix .. counter,
    }, body)
end
