"""A gRPC greeter without generated code: one unary method, /greeter.Greeter/Hello, whose
request and answer are UTF-8 text. `server` serves it; `client` calls it through the mesh
(greeter:50051, the sidecar's listener) every 2 s and prints the answer."""

import os
import socket
import sys
import threading
import time
from concurrent import futures

import grpc

VERSION = os.environ.get("DEVMESH_VERSION", "dev")
GREETING = os.environ.get("GREETING", "hello")
METHOD = "/greeter.Greeter/Hello"


def text(data: bytes) -> str:
    return data.decode()


def utf8(value: str) -> bytes:
    return value.encode()


def hello(request: str, context: grpc.ServicerContext) -> str:
    return f"{GREETING}, {request} (greeter {VERSION})"


def serve(port: int) -> None:
    handler = grpc.method_handlers_generic_handler(
        "greeter.Greeter",
        {"Hello": grpc.unary_unary_rpc_method_handler(hello, text, utf8)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"0.0.0.0:{port}")
    server.start()
    print(f"greeter {VERSION} serving on :{port}")
    server.wait_for_termination()


def call_forever(port: int) -> None:
    # The client's own port answers TCP health checks.
    listener = socket.create_server(("0.0.0.0", port))
    threading.Thread(target=lambda: [listener.accept()[0].close() for _ in iter(int, 1)],
                     daemon=True).start()
    stub = grpc.insecure_channel("greeter:50051").unary_unary(METHOD, utf8, text)
    while True:
        try:
            print(stub("devmesh", timeout=3))
        except grpc.RpcError as exc:
            print(f"call failed: {exc.code().name}")
        time.sleep(2)


if __name__ == "__main__":
    port = int(os.environ.get("DEVMESH_PORT", "50051"))
    (call_forever if sys.argv[1:] == ["client"] else serve)(port)
