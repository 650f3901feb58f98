"""Generate the Python and mypy stubs of `protos/lamps/v1` into `services/common/lamps/v1`.

    python scripts/generate_protos.py          # regenerate in place
    python scripts/generate_protos.py --check  # exit 1 if the committed stubs are stale

The stubs are committed so that service images need neither protoc nor grpcio-tools. The exact
grpcio-tools and mypy-protobuf versions are pinned in the `[dev]` extra: other versions write other
bytes, which the check would report as drift.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE_DIR = Path("lamps") / "v1"
OUT_ROOT = ROOT / "services" / "common"
# Hand-written files that live beside the generated ones.
KEPT = {"__init__.py", "py.typed"}


def _plugin(name: str) -> str:
    """Path of a protoc plugin installed in the same environment as this interpreter."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: install the dev extra (pip install -e '.[dev]')")
    return found


def generate(out_root: Path) -> None:
    """Run protoc on every proto of the package, writing under `out_root/lamps/v1`."""
    protos = sorted(
        str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE_DIR).glob("*.proto")
    )
    (out_root / PACKAGE_DIR).mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out=quiet:{out_root}",
        f"--mypy_grpc_out=quiet:{out_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")


def generated_files(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir() if p.is_file() and p.name not in KEPT}


def check() -> int:
    """Compare freshly generated stubs with the committed ones; print what differs."""
    committed = OUT_ROOT / PACKAGE_DIR
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = Path(tmp) / PACKAGE_DIR
        names = generated_files(fresh) | generated_files(committed)
        stale = sorted(
            name
            for name in names
            if not (fresh / name).exists()
            or not (committed / name).exists()
            or not filecmp.cmp(fresh / name, committed / name, shallow=False)
        )
    if stale:
        print("stale generated stubs: " + ", ".join(stale))
        print("run: python scripts/generate_protos.py")
        return 1
    print(f"generated stubs are up to date ({len(names)} files)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--check", action="store_true", help="report stale stubs instead of writing"
    )
    args = parser.parse_args()
    if args.check:
        return check()
    committed = OUT_ROOT / PACKAGE_DIR
    for name in generated_files(committed) if committed.exists() else ():
        (committed / name).unlink()
    generate(OUT_ROOT)
    print(f"wrote {len(generated_files(committed))} files to {committed.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
