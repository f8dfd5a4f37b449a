"""Package a built plugin as an OCI image layout Higress can pull: ``python build/oci.py [--tag 1.0.0]``.

The image follows Higress's Wasm plugin image format (which Higress's image fetcher, taken from Istio,
accepts): one file per layer, ``spec.yaml`` / ``README.md`` / ``README_ZH.md`` (the console's metadata
and docs, when present) first, and ``plugin.wasm`` in a gzip'd tar as the LAST layer
(``application/vnd.oci.image.layer.v1.tar+gzip``). A raw ``application/vnd.module.wasm.content.layer.v1+wasm``
layer is accepted by that fetcher only in a two-layer image, so it is not used. The config blob
(``application/vnd.module.wasm.config.v1+json``) names the runtime and ABI.

Output (default ``dist/oci/ai-gateway/``): ``oci-layout``, ``index.json`` (the manifest tagged via
``org.opencontainers.image.ref.name``) and ``blobs/sha256/``. Same inputs give the same bytes and
digests (fixed tar metadata, gzip mtime 0, sorted JSON). Push with
``oras cp --from-oci-layout dist/oci/ai-gateway:1.0.0 REGISTRY/plugins/ai-gateway:1.0.0``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import shutil
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG = "application/vnd.module.wasm.config.v1+json"
PLUGIN_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
SPEC_LAYER = "application/vnd.module.wasm.spec.v1+yaml"
TITLE = "org.opencontainers.image.title"
REF_NAME = "org.opencontainers.image.ref.name"
# Metadata layers, in Higress's order; README_<LANG>.md -> ...doc.v1.<LANG>+markdown
DOCS = (("spec.yaml", SPEC_LAYER), ("README.md", "application/vnd.module.wasm.doc.v1+markdown"),
        ("README_ZH.md", "application/vnd.module.wasm.doc.v1.ZH+markdown"))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical(doc: object) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def plugin_tar_gz(wasm: bytes) -> bytes:
    """``plugin.wasm`` in a tar.gz whose bytes depend on ``wasm`` only."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("plugin.wasm")
        info.size, info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = len(wasm), 0o644, 0, 0, 0, "", ""
        tar.addfile(info, io.BytesIO(wasm))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def build_layout(wasm_path: Path, out: Path, tag: str, docs_dir: Path | None, root_id: str = "ai_gateway") -> dict:
    """Write the layout to ``out`` (replacing it); returns the digests to print."""
    wasm = wasm_path.read_bytes()
    if wasm[:4] != b"\0asm":
        raise SystemExit(f"oci: {wasm_path} is not a WebAssembly module")
    blobs: dict[str, bytes] = {}

    def blob(data: bytes, media_type: str, title: str | None = None) -> dict:
        digest = sha256(data)
        blobs[digest] = data
        desc: dict = {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}
        if title:
            desc["annotations"] = {TITLE: title}
        return desc

    layers = [blob((docs_dir / name).read_bytes(), mt, name)
              for name, mt in DOCS if docs_dir and (docs_dir / name).is_file()]
    layers.append(blob(plugin_tar_gz(wasm), PLUGIN_LAYER, "plugin.tar.gz"))
    config = {"type": "envoy_proxy", "abiVersions": ["v0.2.1"], "config": {"root_ids": [root_id]}}
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST, "config": blob(canonical(config), CONFIG),
                "layers": layers}
    manifest_desc = blob(canonical(manifest), MANIFEST)
    index = {"schemaVersion": 2, "mediaType": INDEX,
             "manifests": [{**manifest_desc, "annotations": {REF_NAME: tag}}]}

    if out.exists():
        shutil.rmtree(out)
    (out / "blobs" / "sha256").mkdir(parents=True)
    for digest, data in sorted(blobs.items()):
        (out / "blobs" / "sha256" / digest).write_bytes(data)
    (out / "oci-layout").write_bytes(canonical({"imageLayoutVersion": "1.0.0"}))
    (out / "index.json").write_bytes(canonical(index))
    return {"manifest": manifest_desc["digest"], "wasm_sha256": sha256(wasm), "tag": tag}


def rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python build/oci.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--wasm", type=Path, default=REPO / "dist" / "ai-gateway.wasm")
    p.add_argument("--out", type=Path, default=REPO / "dist" / "oci" / "ai-gateway")
    p.add_argument("--tag", default="1.0.0")
    p.add_argument("--docs", type=Path, default=REPO / "wasm-config" / "console",
                   help="directory with spec.yaml, README.md, README_ZH.md (each optional)")
    p.add_argument("--root-id", default="ai_gateway")
    args = p.parse_args(argv)
    if not args.wasm.is_file():
        print(f"oci: {args.wasm} not found: build it first (./dev build ai_gateway)", file=sys.stderr)
        return 1
    got = build_layout(args.wasm, args.out, args.tag, args.docs, args.root_id)
    out = rel(args.out)
    hexdigest = got["manifest"].removeprefix("sha256:")
    print(f"OCI image layout: {out} (tag {args.tag})")
    print(f"manifest digest:  {got['manifest']}")
    print(f"wasm sha256:      {got['wasm_sha256']}")
    print(f"push:     oras cp --from-oci-layout {out}:{args.tag} REGISTRY/plugins/ai-gateway:{args.tag}")
    print(f"WasmPlugin, oci:  url: oci://REGISTRY/plugins/ai-gateway:{args.tag}  sha256: {hexdigest}")
    print(f"  (or pin the URL: oci://REGISTRY/plugins/ai-gateway@{got['manifest']})")
    print(f"WasmPlugin, http: url: https://HOST/ai-gateway.wasm  sha256: {got['wasm_sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
