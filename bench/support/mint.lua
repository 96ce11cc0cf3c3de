-- wrk: POST /v1/credentials, a new task per request. JIT_TOKEN (env) is the identity token.
local tok = os.getenv("JIT_TOKEN")
if tok == nil or tok == "" then error("JIT_TOKEN is required") end
local counter, tid = 0, 0
function setup(thread) tid = tid + 1; thread:set("tid", tid) end
function request()
  counter = counter + 1
  local body = string.format('{"task":{"id":"bench-%d-%d-%d","purpose":"bench"},"issuer":"jwt",' ..
    '"resource":"https://demo.local","actions":["read"],"ttl":600}', tid or 0, counter, math.random(1, 1e9))
  return wrk.format("POST", "/v1/credentials",
    {["Authorization"] = "Bearer " .. tok, ["Content-Type"] = "application/json"}, body)
end
function done(summary, latency, requests)
  local secs = summary.duration / 1e6
  io.write(string.format("WRKRESULT rps=%.1f p50_ms=%.2f p99_ms=%.2f non2xx=%d errors=%d\n",
    summary.requests / secs, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
