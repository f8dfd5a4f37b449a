# Recipes run inside .venv (./dev installs it). `./dev --list` shows them.
set positional-arguments

export PATH := justfile_directory() + "/.venv/bin:" + env_var('PATH')
export PYTHONPATH := justfile_directory() + "/plugin:" + justfile_directory() + "/build:" + justfile_directory()

default:
    @just --list

# Build a plugin into dist/ (default: the example plugin)
build entry="examples.showcase":
    python build/pwbuild {{entry}}

# Build the AI gateway and run it in Envoy in front of two mock vLLM servers (Ctrl-C stops)
demo: (build "ai_gateway")
    python -m e2e.demo

# Build the example plugin and run it in Envoy with an echo upstream (Ctrl-C stops)
demo-showcase: build
    python -m e2e.demo --showcase

# Run the whole test suite (unit, wasm, e2e with a real Envoy)
test *args: build
    python -m pytest "$@"

# Lint
lint:
    ruff check plugin build e2e tests bench

# AI gateway benchmark: Envoy (a), Envoy + ai-gateway (b), LiteLLM (c) on W1-W3 + VM start/memory (bench/results/ai-gateway.md); subsets: --only a,b W1
bench *args: (build "ai_gateway")
    python bench/ai/run.py "$@"

# What a plugin costs in Envoy: no-op, pause-only and minimal Python plugins, the minimal work in C, ai-gateway, vs Envoy alone (bench/results/ai-floor.md)
bench-floor *args: (build "ai_gateway")
    python bench/ai/floor.py "$@"

# Streaming one chunk per token (mock vLLM): Envoy CPU per stream and per chunk, a vs ai-gateway (bench/results/ai-tokens.md)
bench-tokens *args: (build "ai_gateway")
    python bench/ai/tokens.py "$@"

# Time to the first token through a fallback (Envoy retry vs HTTP callout) vs direct (bench/results/ai-fallback.md)
bench-fallback *args: (build "ai_gateway")
    python bench/ai/fallback.py "$@"

# Benchmark of the showcase plugin (bench/results/latest.md)
bench-showcase *args: build
    python bench/run.py "$@"

# Validate every Envoy config in the repository
validate:
    python -m e2e.validate

# Package the AI gateway as an OCI image layout for Higress (dist/oci/ai-gateway; push with oras cp)
oci tag="1.0.0": (build "ai_gateway")
    python build/oci.py --tag {{tag}}

# What consumers cost: auth + limits with shared-data and Redis (webdis) stores vs the gateway without (bench/results/ai-consumers.md)
bench-consumers *args: (build "ai_gateway")
    python bench/ai/consumers.py "$@"

# Response cache benchmark: a hit's latency vs the upstream, a miss's cost vs the gateway without a cache, RSS bound (bench/results/ai-cache.md)
bench-cache: (build "ai_gateway")
    python bench/ai/cache.py

# Anthropic Messages API clients against OpenAI clients on the same model (bench/results/ai-anthropic-clients.md)
bench-anthropic: (build "ai_gateway")
    python bench/ai/anthropic_clients.py

# Endpoint picker benchmark: round robin vs load-aware picking over mock vLLM servers (bench/results/endpoint-picker.md)
bench-epp *args: (build "ai_gateway")
    python bench/epp/run.py "$@"

# Upstream providers: VM instructions and Envoy CPU of translating to Anthropic/Gemini/Azure vs the OpenAI pass-through, fallback TTFT vLLM -> Anthropic (bench/results/ai-providers.md); ~2 min
bench-providers *args: (build "ai_gateway")
    python bench/ai/providers.py "$@"
