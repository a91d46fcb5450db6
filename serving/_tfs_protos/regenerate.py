"""Regenerate the light TF Serving message stubs in this package (developer tool).

The gRPC client (:mod:`serving.grpc_client`) must not import TensorFlow, but the ``_pb2``
modules of ``tensorflow-serving-api`` import ``tensorflow.core.framework.*_pb2``, which imports
the whole ``tensorflow`` package. So the client uses its own generated copies of the same
messages, built from the very descriptors the installed ``tensorflow-serving-api`` and
``tensorflow`` wheels register:

1. import the API modules (this imports TensorFlow, here only) and collect the
   ``FileDescriptorProto`` of every file they depend on;
2. move every file under ``serving/_tfs_protos/`` and every proto package under
   ``serving_light.``: the stubs register in the same default descriptor pool as TensorFlow's
   own copies when both are imported in one process, and the pool refuses a second file or
   symbol of the same name. Field numbers and types are untouched, so the bytes on the wire
   are TF Serving's; only gRPC method paths carry a proto package, and the client spells those
   as TF Serving's (``/tensorflow.serving.PredictionService/Predict``);
3. compile them with ``grpc_tools.protoc --descriptor_set_in`` (messages only).

Run from the repository root, in the project's virtualenv, with grpcio-tools importable (a
build-time tool only; use the version whose protoc matches the locked protobuf runtime)::

    pip install --target /tmp/grpctools grpcio-tools==1.62.3   # protoc 25.x for protobuf 4.25
    PYTHONPATH=.:/tmp/grpctools python -m serving._tfs_protos.regenerate
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parents[1]
FILE_PREFIX = "serving/_tfs_protos/"
PROTO_PACKAGE_PREFIX = "serving_light."
# Shipped with the protobuf runtime: referenced, never copied.
_WELL_KNOWN = "google/protobuf/"
_API_MODULES = (
    "predict_pb2",
    "classification_pb2",
    "regression_pb2",
    "get_model_metadata_pb2",
    "get_model_status_pb2",
)


def _collect() -> list[descriptor_pb2.FileDescriptorProto]:
    """Every file the API modules need, dependencies first."""
    import importlib

    ordered: list[descriptor_pb2.FileDescriptorProto] = []
    seen: set[str] = set()

    def visit(fd: object) -> None:
        if fd.name in seen:  # type: ignore[attr-defined]
            return
        seen.add(fd.name)  # type: ignore[attr-defined]
        for dep in fd.dependencies:  # type: ignore[attr-defined]
            visit(dep)
        proto = descriptor_pb2.FileDescriptorProto()
        fd.CopyToProto(proto)  # type: ignore[attr-defined]
        ordered.append(proto)

    for name in _API_MODULES:
        visit(importlib.import_module(f"tensorflow_serving.apis.{name}").DESCRIPTOR)
    return ordered


def _file(name: str) -> str:
    return name if name.startswith(_WELL_KNOWN) else FILE_PREFIX + name


def _type(name: str) -> str:
    if name.startswith(".google.protobuf."):
        return name
    return "." + PROTO_PACKAGE_PREFIX + name.removeprefix(".")


def _rename_fields(fields: object) -> None:
    for field in fields:  # type: ignore[attr-defined]
        # Assigning even an empty string marks a field set, which protoc then refuses.
        for attr in ("type_name", "extendee"):
            if field.HasField(attr):
                setattr(field, attr, _type(getattr(field, attr)))


def _rename_messages(messages: object) -> None:
    for message in messages:  # type: ignore[attr-defined]
        _rename_fields(message.field)
        _rename_fields(message.extension)
        _rename_messages(message.nested_type)


def _rename(proto: descriptor_pb2.FileDescriptorProto) -> None:
    if proto.name.startswith(_WELL_KNOWN):
        return
    proto.name = _file(proto.name)
    proto.package = PROTO_PACKAGE_PREFIX + proto.package
    proto.dependency[:] = [_file(d) for d in proto.dependency]
    _rename_messages(proto.message_type)
    _rename_fields(proto.extension)


def main() -> int:
    protos = _collect()
    for proto in protos:
        _rename(proto)
    generated = [p.name for p in protos if not p.name.startswith(_WELL_KNOWN)]
    with tempfile.TemporaryDirectory() as tmp:
        descriptor_set = Path(tmp) / "set.pb"
        descriptor_set.write_bytes(
            descriptor_pb2.FileDescriptorSet(file=protos).SerializeToString()
        )
        out = Path(tmp) / "out"
        out.mkdir()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"--descriptor_set_in={descriptor_set}",
                f"--python_out={out}",
                *generated,
            ],
            check=True,
        )
        for sub in PACKAGE_DIR.iterdir():
            if sub.is_dir() and sub.name != "__pycache__":
                shutil.rmtree(sub)
        shutil.copytree(out / FILE_PREFIX, PACKAGE_DIR, dirs_exist_ok=True)
    for directory in [p for p in PACKAGE_DIR.rglob("*") if p.is_dir()]:
        if directory.name != "__pycache__":
            (directory / "__init__.py").touch()
    print(f"generated {len(generated)} modules under {PACKAGE_DIR.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
