"""Generate Python code from protos/ into shared/gen (run by `make proto`).

The output (messages, aio-compatible gRPC stubs, .pyi type stubs) is the only copy of the
generated code in the repository: it is never committed, never edited and never copied per
service. The editable install puts shared/gen on sys.path, so it imports as `loyalty.<svc>.v1`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grpc_tools

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "protos"
OUTPUT_ROOT = REPO_ROOT / "shared" / "gen"
# The well-known types (google/protobuf/*.proto) ship inside grpcio-tools.
WELL_KNOWN_TYPES = Path(grpc_tools.__file__).resolve().parent / "_proto"
# mypy-protobuf's plugins are installed next to this interpreter, which may not be on PATH.
PLUGIN_DIR = Path(sys.executable).parent


def proto_files() -> list[str]:
    return sorted(str(path.relative_to(PROTO_ROOT)) for path in PROTO_ROOT.rglob("*.proto"))


def generate() -> None:
    shutil.rmtree(OUTPUT_ROOT, ignore_errors=True)
    OUTPUT_ROOT.mkdir(parents=True)
    files = proto_files()
    args = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{WELL_KNOWN_TYPES}",
        f"--python_out={OUTPUT_ROOT}",
        f"--grpc_python_out={OUTPUT_ROOT}",
        f"--plugin=protoc-gen-mypy={PLUGIN_DIR / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={PLUGIN_DIR / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={OUTPUT_ROOT}",
        f"--mypy_grpc_out={OUTPUT_ROOT}",
        *files,
    ]
    # A subprocess, so the plugins' per-file chatter can be dropped unless something fails.
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"protoc failed:\n{result.stdout}{result.stderr}")
    add_package_markers()
    print(f"generated {len(files)} proto files into {OUTPUT_ROOT.relative_to(REPO_ROOT)}")


def add_package_markers() -> None:
    """Make every generated folder a regular, typed package (mypy and importlib agree then)."""
    for folder in [OUTPUT_ROOT / "loyalty", *(OUTPUT_ROOT / "loyalty").rglob("*")]:
        if folder.is_dir():
            (folder / "__init__.py").touch()
    (OUTPUT_ROOT / "loyalty" / "py.typed").touch()


if __name__ == "__main__":
    generate()
