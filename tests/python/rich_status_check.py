"""A standard gRPC client reads Strata's rich error status.

Compiles proto/proto/strata.proto with grpcio-tools, calls RPCs of a
running broker that must fail, and checks that
`grpc_status.rpc_status.from_call` (grpcio-status) returns a
`google.rpc.Status` whose first detail is an `Any` of type
`type.googleapis.com/strata.v1.ErrorDetail` that decodes to the expected
stable code. Usage: rich_status_check.py GRPC_ADDR TOPIC OUT_DIR, where
TOPIC exists and is empty; OUT_DIR receives the generated modules.
"""

import importlib
import os
import sys

import grpc
from grpc_status import rpc_status
from grpc_tools import protoc

DETAIL_TYPE = "type.googleapis.com/strata.v1.ErrorDetail"
TIMEOUT_S = 10


def compile_proto(out_dir):
    """Generates strata_pb2 and strata_pb2_grpc into out_dir; imports them."""
    proto_dir = os.path.join(os.path.dirname(__file__), "..", "..", "proto", "proto")
    os.makedirs(out_dir, exist_ok=True)
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"-I{include}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            os.path.join(proto_dir, "strata.proto"),
        ]
    )
    if rc != 0:
        sys.exit(f"protoc failed on strata.proto (exit {rc})")
    sys.path.insert(0, out_dir)
    return importlib.import_module("strata_pb2"), importlib.import_module("strata_pb2_grpc")


def expect_error(pb, what, call, grpc_code, error_code):
    """Runs call(), which must fail; returns the decoded ErrorDetail."""
    try:
        result = call()
        # A server stream fails when it is read.
        if hasattr(result, "__iter__"):
            list(result)
    except grpc.RpcError as err:
        if err.code() != grpc_code:
            sys.exit(f"{what}: gRPC code {err.code()}, want {grpc_code}: {err.details()}")
        status = rpc_status.from_call(err)
        if status is None:
            sys.exit(f"{what}: no grpc-status-details-bin trailer")
        if status.code != grpc_code.value[0] or status.message != err.details():
            sys.exit(f"{what}: google.rpc.Status ({status.code}, {status.message!r}) disagrees with the call")
        if not status.details:
            sys.exit(f"{what}: google.rpc.Status has no details")
        any_detail = status.details[0]
        if any_detail.type_url != DETAIL_TYPE:
            sys.exit(f"{what}: details[0] is {any_detail.type_url!r}, want {DETAIL_TYPE!r}")
        detail = pb.ErrorDetail()
        if not any_detail.Unpack(detail):
            sys.exit(f"{what}: details[0] does not unpack into strata.v1.ErrorDetail")
        if detail.code != error_code:
            got = pb.ErrorCode.Name(detail.code)
            sys.exit(f"{what}: ErrorDetail code {got}, want {pb.ErrorCode.Name(error_code)}")
        print(f"ok: {what}: {grpc_code.name} / {pb.ErrorCode.Name(detail.code)}: {detail.message}")
        return detail
    sys.exit(f"{what}: the call succeeded; it must fail")


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    addr, topic, out_dir = sys.argv[1:]
    pb, pb_grpc = compile_proto(out_dir)
    with grpc.insecure_channel(addr) as channel:
        stub = pb_grpc.StrataStub(channel)
        expect_error(
            pb,
            "Produce to an unknown topic",
            lambda: stub.Produce(
                pb.ProduceRequest(topic="no-such-topic", partition=0, batch=b"x"),
                timeout=TIMEOUT_S,
            ),
            grpc.StatusCode.NOT_FOUND,
            pb.UNKNOWN_TOPIC,
        )
        expect_error(
            pb,
            "Produce of a corrupt batch",
            lambda: stub.Produce(
                pb.ProduceRequest(topic=topic, partition=0, batch=b"\x00" * 64),
                timeout=TIMEOUT_S,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            pb.CORRUPT_BATCH,
        )
        detail = expect_error(
            pb,
            "Fetch past the high watermark",
            lambda: stub.Fetch(
                pb.FetchRequest(topic=topic, partition=0, offset=1000),
                timeout=TIMEOUT_S,
            ),
            grpc.StatusCode.OUT_OF_RANGE,
            pb.OFFSET_OUT_OF_RANGE,
        )
        if not detail.HasField("high_watermark") or detail.high_watermark != 0:
            sys.exit(f"Fetch past the high watermark: the detail lacks the valid range: {detail}")


if __name__ == "__main__":
    main()
