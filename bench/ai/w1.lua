-- W1: non-streaming chat completion, ~2 KB JSON request body.
local pad = string.rep("lorem ipsum dolor sit amet ", 68)  -- ~1.8 KB of message text
wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.headers["content-type"] = "application/json"
wrk.headers["x-mse-consumer"] = "bench"
wrk.body = '{"model":"bench-model","messages":[{"role":"system","content":"You are a helpful assistant."},' ..
           '{"role":"user","content":"' .. pad .. '"}],"temperature":0.2,"max_tokens":256}'
