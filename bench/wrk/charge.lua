-- wrk script for the POST /v1/charges cases (A-post, C): every request has a
-- distinct form body (so content deduplication never replays one):
--   amount=<amount>&currency=usd&description=bench-<prefix>-<thread>-<n>
-- Arguments after `--`: prefix (unique per wrk run), amount in cents.
-- Headers (Authorization, Content-Type) come from -H.
local next_thread = 1

function setup(thread)
  thread:set("tid", next_thread)
  next_thread = next_thread + 1
end

function init(args)
  prefix = args[1] or "x"
  amount = args[2] or "100"
  n = 0
end

function request()
  n = n + 1
  return wrk.format("POST", nil, nil,
    "amount=" .. amount .. "&currency=usd&description=bench-" .. prefix .. "-" .. tid .. "-" .. n)
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"mean":%.1f,"max":%d,"stdev":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.mean, latency.max, latency.stdev))
end
