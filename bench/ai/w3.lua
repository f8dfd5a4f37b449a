-- W3: non-streaming chat completion with a 64 KB request body.
local pad = string.rep("lorem ipsum dolor sit amet ", 2420)  -- 65,340 bytes of message text
wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.headers["content-type"] = "application/json"
wrk.headers["x-mse-consumer"] = "bench"
wrk.body = '{"model":"bench-model","messages":[{"role":"user","content":"' .. pad .. '"}],"max_tokens":256}'
