-- W2: streaming chat completion (stream: true, stream_options.include_usage: true).
-- x-bench-stream makes the direct_response upstream answer with the canned SSE body.
local pad = string.rep("lorem ipsum dolor sit amet ", 68)
wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.headers["content-type"] = "application/json"
wrk.headers["x-mse-consumer"] = "bench"
wrk.headers["x-bench-stream"] = "1"
wrk.body = '{"model":"bench-model","stream":true,"stream_options":{"include_usage":true},' ..
           '"messages":[{"role":"user","content":"' .. pad .. '"}],"max_tokens":256}'
