"""Higress on kind: the AI gateway deployed as a WasmPlugin in front of mock vLLM servers (run.sh)."""
