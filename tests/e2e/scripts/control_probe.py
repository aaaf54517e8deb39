"""Calls every method of the control service's gRPC port the way a job that
stole a vault key would, with a real gRPC client (grpcio), and reports what
each answered. Run by tests/e2e/test_control_channel.py, sometimes as another
user (setpriv), so it needs nothing but the venv and its arguments.

argv: TARGET [--vault-key-hash HEX] [--ca PEM --server-name NAME [--cert PEM --key PEM]]
      [--http-socket PATH]
  TARGET  unix:/path/grpc.sock, or 127.0.0.1:PORT (plaintext unless --ca)

Prints one JSON object: for each method its gRPC status code name and the
hex of the answer's bytes (absent when refused); with --http-socket, what a
plain `GET /healthz` on the admin socket got.
"""
from __future__ import annotations

import argparse
import json
import socket
import sys

import grpc

SERVICE = "/keybrake.v1.Gateway/"


def field(number: int, wire: int, payload: bytes) -> bytes:
    """One protobuf field: tag, then a length prefix for length-delimited fields."""
    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            b, n = n & 0x7F, n >> 7
            out.append(b | (0x80 if n else 0))
            if not n:
                return bytes(out)
    tag = varint(number << 3 | wire)
    return tag + (varint(len(payload)) + payload if wire == 2 else payload)


def authorize_request(key_hash: bytes) -> bytes:
    """A read the key allows (GET /v1/charges/ch_probe, priced free): the
    answer to an authenticated caller is an Allow carrying the real key."""
    price = field(1, 0, b"\x01")  # Kind FREE
    return (field(1, 2, key_hash) + field(2, 2, b"stripe") + field(3, 2, b"GET")
            + field(4, 2, b"/v1/charges/ch_probe") + field(7, 2, price) + field(11, 2, b"call_probe_0001"))


def channel(args) -> grpc.Channel:
    if args.ca is None:
        # For a socket, grpcio would send the path as :authority, which is no authority.
        options = [("grpc.default_authority", "localhost")] if args.target.startswith("unix:") else []
        return grpc.insecure_channel(args.target, options=options)
    read = lambda p: open(p, "rb").read() if p else None  # noqa: E731
    creds = grpc.ssl_channel_credentials(root_certificates=read(args.ca), private_key=read(args.key),
                                         certificate_chain=read(args.cert))
    return grpc.secure_channel(args.target, creds, options=[("grpc.ssl_target_name_override", args.server_name)])


def call(fn) -> dict:
    try:
        answer = fn()
        return {"code": "OK", "answer": answer.hex()}
    except grpc.RpcError as e:
        return {"code": e.code().name, "details": e.details()}


def http_on_socket(path: str) -> str:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect(path)
    except OSError as e:
        return f"connect refused: {e.strerror}"
    try:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: control\r\nConnection: close\r\n\r\n")
        data = s.recv(4096)
    except OSError as e:
        return f"dropped: {e.strerror}"
    finally:
        s.close()
    return data.split(b"\r\n", 1)[0].decode(errors="replace") if data else "dropped: closed without an answer"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("target")
    p.add_argument("--vault-key-hash", default="00" * 32)
    p.add_argument("--ca")
    p.add_argument("--server-name")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--http-socket")
    args = p.parse_args()
    out: dict = {}
    with channel(args) as ch:
        raw = lambda name: ch.unary_unary(SERVICE + name)  # noqa: E731 - bytes in, bytes out
        out["Authorize"] = call(lambda: raw("Authorize")(authorize_request(bytes.fromhex(args.vault_key_hash)),
                                                         timeout=15))
        out["Settle"] = call(lambda: raw("Settle")(field(1, 2, b"call_probe_0001"), timeout=15))
        out["RecordCalls"] = call(lambda: raw("RecordCalls")(b"", timeout=15))
        watch = ch.stream_stream(SERVICE + "WatchRevocations")
        # The stream's first message (the generation to start from) is the answer.
        out["WatchRevocations"] = call(lambda: next(watch(iter(()), timeout=15)))
    if args.http_socket:
        out["http"] = http_on_socket(args.http_socket)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
