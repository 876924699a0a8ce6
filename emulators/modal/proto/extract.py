"""Regenerates modal.fds.bin: the FileDescriptorSet of the pinned `modal` wheel's protos.

The wheel ships no .proto files, only the generated *_pb2 modules; their descriptors are the
exact 1.6.4 protos. Run with the venv that has `modal==1.6.4`:
    /work/main/.venv/bin/python emulators/modal/proto/extract.py
"""
import pathlib

from google.protobuf import any_pb2, descriptor_pb2, empty_pb2, struct_pb2, timestamp_pb2, wrappers_pb2
from modal_proto import api_pb2, task_command_router_pb2

fds = descriptor_pb2.FileDescriptorSet()
# Dependencies first.
for module in [any_pb2, empty_pb2, struct_pb2, timestamp_pb2, wrappers_pb2, api_pb2, task_command_router_pb2]:
    fdp = descriptor_pb2.FileDescriptorProto()
    module.DESCRIPTOR.CopyToProto(fdp)
    fds.file.append(fdp)
out = pathlib.Path(__file__).with_name("modal.fds.bin")
out.write_bytes(fds.SerializeToString())
print(f"wrote {out} ({out.stat().st_size} bytes)")
