"""Regenerate the committed gRPC stubs from thinwire.proto.

    python protos/generate.py            # rewrite protos/thinwire_pb2*.py in place
    python protos/generate.py --out DIR  # write them elsewhere (the staleness test does this)

grpcio-tools writes `import thinwire_pb2`, which only works with protos/ on sys.path; the import
is rewritten to a package-relative one so the stubs work as `thinwire.protos`.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = "thinwire.proto"
STUBS = ("thinwire_pb2.py", "thinwire_pb2_grpc.py", "thinwire_pb2.pyi")


def generate(out: Path) -> list[Path]:
    from grpc_tools import protoc
    import grpc_tools

    out.mkdir(parents=True, exist_ok=True)
    include = str(Path(grpc_tools.__file__).parent / "_proto")
    rc = protoc.main(["grpc_tools.protoc", f"-I{HERE}", f"-I{include}", f"--python_out={out}",
                      f"--pyi_out={out}", f"--grpc_python_out={out}", str(HERE / PROTO)])
    if rc != 0:
        raise RuntimeError(f"protoc failed with status {rc}")
    grpc_stub = out / "thinwire_pb2_grpc.py"
    text = grpc_stub.read_text()
    text = re.sub(r"^import thinwire_pb2 as thinwire__pb2$", "from . import thinwire_pb2 as thinwire__pb2",
                  text, flags=re.M)
    grpc_stub.write_text(text)
    return [out / name for name in STUBS]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=HERE, help="output directory (default: protos/)")
    args = p.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
