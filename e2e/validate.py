"""Validate every Envoy config in the repository with ``envoy --mode validate``: ``python -m e2e.validate [--build]``.

A config is a *.yaml/*.yml/*.json file under plugin/, wasm-config/, e2e/ or bench/ that mentions
``static_resources``. Wasm files are resolved from the repo root, so the plugins must be built
(``--build`` builds every plugin the configs load; validation also runs each plugin's config parsing).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

from e2e.envoy import REPO, validate

ROOTS = ("plugin", "wasm-config", "e2e", "bench")
SUFFIXES = {".yaml", ".yml", ".json"}
SKIP = {".venv", ".cache", "dist", "__pycache__", "node_modules"}
LOG_PREFIX = re.compile(r"^(\[[^]]*\])+ \[[^]]*\] ")  # "[time][tid][level][logger] [file:line] "
WASM_FILE = re.compile(r"filename:\s*[\"']?([^\s\"'}]+\.wasm)")


def discover(repo: Path = REPO) -> list[Path]:
    """Envoy configs, as sorted paths relative to ``repo``."""
    found = []
    for root in ROOTS:
        for path in (repo / root).rglob("*"):
            rel = path.relative_to(repo)
            if path.suffix in SUFFIXES and path.is_file() and not SKIP & set(rel.parts):
                if "static_resources" in path.read_text(errors="replace"):
                    found.append(rel)
    return sorted(found)


def wasm_files(rel: Path) -> list[str]:
    """Repo-relative wasm files a config loads."""
    return WASM_FILE.findall((REPO / rel).read_text())


def plugin_entry(wasm: str) -> str | None:
    """pwbuild entry writing ``dist/NAME.wasm`` (pwbuild names outputs after the entry's last part, _ as -)."""
    name = Path(wasm).stem.replace("-", "_")
    for entry in (name, f"examples.{name}"):
        if (REPO / "plugin" / entry.replace(".", "/")).is_dir():
            return entry
    return None


def build_plugins(configs: list[Path]) -> list[str]:
    """Build every plugin the configs load (a no-op when up to date); returns the failures."""
    entries = sorted({e for rel in configs for w in wasm_files(rel) if (e := plugin_entry(w))})
    failed = []
    for entry in entries:
        r = subprocess.run([sys.executable, str(REPO / "build/pwbuild"), entry], cwd=REPO, capture_output=True,
                           text=True, timeout=600)
        if r.returncode != 0:
            failed.append(f"{entry}: {(r.stderr or r.stdout).strip()}")
    return failed


def check(rel: Path) -> str | None:
    """None if Envoy accepts the config, else why not (missing wasm files are named, not left to Envoy)."""
    missing = [w for w in wasm_files(rel) if not (REPO / w).exists()]
    if missing:
        return f"missing {', '.join(missing)} (build the plugin first: ./dev build ENTRY)"
    r = validate(REPO / rel)
    if r.returncode == 0:
        return None
    lines = [LOG_PREFIX.sub("", line) for line in (r.stderr + r.stdout).splitlines() if line.strip()]
    # the plugin's own complaint names the field; Envoy's last line says which config and filter failed
    why = [line for line in lines if "invalid plugin configuration" in line] + lines[-1:]
    return " / ".join(why) or f"envoy exited with {r.returncode}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m e2e.validate", description="Validate the repo's Envoy configs.")
    p.add_argument("--build", action="store_true", help="build the plugins the configs load first")
    args = p.parse_args(argv)
    configs = discover()
    if not configs:
        print("no Envoy configs found", file=sys.stderr)
        return 1
    if args.build and (failed_builds := build_plugins(configs)):
        print("build failed:\n" + "\n".join(failed_builds), file=sys.stderr)
        return 1
    failed = 0
    for rel in configs:
        problem = check(rel)
        failed += problem is not None
        print(f"{'OK  ' if problem is None else 'FAIL'} {rel}{'' if problem is None else ': ' + problem}", flush=True)
    print(f"{len(configs) - failed}/{len(configs)} configs valid")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
