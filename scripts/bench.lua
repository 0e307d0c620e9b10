-- wrk script for `make bench`: POST the files in BENCH_FILES (colon-separated) in turn, with the
-- inference token; print one machine-readable summary line.
local files = {}
for path in string.gmatch(os.getenv("BENCH_FILES"), "[^:]+") do
  local f = assert(io.open(path, "rb"))
  files[#files + 1] = f:read("*a")
  f:close()
end
local headers = {["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN"),
                 ["Content-Type"] = "application/octet-stream"}
local i = 0

request = function()
  i = i % #files + 1
  return wrk.format("POST", nil, headers, files[i])
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"non2xx": %d, "socket_errors": %d, "timeouts": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), e.status, e.connect + e.read + e.write, e.timeout))
end
