-- wrk script for `make bench`: POST the files in BENCH_FILES (colon-separated) in turn, with the
-- inference token; print one machine-readable summary line.
local files = {}
for path in string.gmatch(os.getenv("BENCH_FILES"), "[^:]+") do
  local f = assert(io.open(path, "rb"))
  files[#files + 1] = f:read("*a")
  f:close()
end
-- BENCH_JSON_SIZES (colon-separated, one per file): the binary tensor extension's
-- Inference-Header-Content-Length of each body.
local sizes = {}
for size in string.gmatch(os.getenv("BENCH_JSON_SIZES") or "", "[^:]+") do
  sizes[#sizes + 1] = size
end
local headers = {["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN"),
                 ["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE") or "application/octet-stream"}
local i = 0

request = function()
  i = i % #files + 1
  if #sizes > 0 then
    headers["Inference-Header-Content-Length"] = sizes[i]
  end
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
