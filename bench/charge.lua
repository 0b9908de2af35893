-- wrk script: durable single charges over HTTP, uniform over ACCOUNTS accounts
-- (or one hot account with ACCOUNTS=1). Usage:
--   ACCOUNTS=10000 KEY=sk_... wrk -t2 -c64 -d20s -s bench/charge.lua http://127.0.0.1:8787
local accounts = tonumber(os.getenv("ACCOUNTS") or "10000")
local key = os.getenv("KEY") or "sk_bench"
local body = '{"credits":"0.001"}'
local headers = { ["Authorization"] = "Bearer " .. key, ["Content-Type"] = "application/json" }
local statuses = {}

function setup(thread)
  thread:set("statuses", {})
end

request = function()
  local id = math.random(0, accounts - 1)
  return wrk.format("POST", "/v1/accounts/acct-" .. id .. "/usage", headers, body)
end

response = function(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

done = function(summary, latency, requests)
  io.write(string.format("p50 %.2f ms  p90 %.2f ms  p99 %.2f ms  max %.2f ms\n",
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000))
end
