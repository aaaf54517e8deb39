"""Two deliberately naive HTTP clients for the scope-bypass tests.

Ordinary clients (httpx, requests, the Stripe SDK) normalise what these tests
need to control: they resolve dot segments, merge repeated headers, refuse
absolute-form targets or odd methods. These send exactly the bytes asked for:

* ``send_h1``: one HTTP/1.1 request on a fresh TCP connection; the request line
  is ``METHOD TARGET VERSION`` verbatim and headers go out in the given order,
  repeated names included;
* ``send_h2``: one HTTP/2 stream over cleartext with prior knowledge (the
  ``h2`` package with outbound validation and normalisation switched off), so
  pseudo-headers, header case and repeated headers are sent as given.

Both return a ``Reply``: the status (None when the peer closed or reset
without answering), headers and body, plus what happened at the transport
level (``"reset"``, ``"goaway"``, ``"closed"``, ``"timeout"``) when there was
no response.
"""
from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

Headers = list[tuple[str, str]]


@dataclass
class Reply:
    status: int | None
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    transport: str = "ok"  # "ok", or why there is no status: reset, goaway, closed, timeout
    detail: str = ""

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def error_code(self) -> str | None:
        """Stripe-shaped ``error.code`` of the body, if it has one."""
        try:
            return json.loads(self.body)["error"].get("code")
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    def summary(self) -> str:
        if self.status is None:
            return f"no response ({self.transport}{': ' + self.detail if self.detail else ''})"
        return f"{self.status} {self.error_code() or ''} {self.body[:200]!r}"


# --------------------------------------------------------------------------
# HTTP/1.1


def send_h1(host: str, port: int, method: str, target: str, headers: Headers, body: bytes = b"",
            version: str = "HTTP/1.1", timeout: float = 10.0) -> Reply:
    """Sends one request, byte for byte as given (no header is added), and reads one response."""
    head = f"{method} {target} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    with socket.create_connection((host, port), timeout=timeout) as sock:
        try:
            sock.sendall(head.encode("latin-1") + body)
        except OSError as e:  # the peer may answer and close before reading everything
            detail = str(e)
        else:
            detail = ""
        reader = _Reader(sock, deadline=time.monotonic() + timeout)
        try:
            return _read_h1_response(reader, head_only=method.upper() == "HEAD")
        except TimeoutError:
            return Reply(None, transport="timeout", detail=detail)
        except (ConnectionResetError, BrokenPipeError) as e:
            return Reply(None, transport="reset", detail=str(e))
        except EOFError:
            return Reply(None, transport="closed", detail=detail)


class _Reader:
    def __init__(self, sock: socket.socket, deadline: float):
        self.sock, self.deadline, self.buf = sock, deadline, b""

    def _fill(self) -> bool:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError from None
        if not chunk:
            return False
        self.buf += chunk
        return True

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if not self._fill():
                raise EOFError
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise EOFError
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def rest(self) -> bytes:
        while self._fill():
            pass
        out, self.buf = self.buf, b""
        return out


def _read_h1_response(r: _Reader, head_only: bool) -> Reply:
    status_line = r.line().decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        return Reply(None, transport="garbage", detail=status_line[:200])
    status = int(parts[1])
    headers: Headers = []
    while True:
        line = r.line().decode("latin-1")
        if not line:
            break
        name, _, value = line.partition(":")
        headers.append((name.strip().lower(), value.strip()))
    reply = Reply(status, headers)
    if head_only or status in (204, 304) or 100 <= status < 200:
        return reply
    if "chunked" in (reply.header("transfer-encoding") or "").lower():
        chunks = []
        while True:
            size = int(r.line().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while r.line():
                    pass
                break
            chunks.append(r.exactly(size))
            r.line()
        reply.body = b"".join(chunks)
    elif reply.header("content-length") is not None:
        reply.body = r.exactly(int(reply.header("content-length")))
    else:
        reply.body = r.rest()
    return reply


# --------------------------------------------------------------------------
# HTTP/2 cleartext, prior knowledge


def send_h2(host: str, port: int, headers: Headers, body: bytes = b"", timeout: float = 10.0) -> Reply:
    """Sends one stream whose header block is exactly ``headers`` (pseudo-headers
    included, in order) and reads its response."""
    config = h2.config.H2Configuration(
        client_side=True,
        header_encoding="utf-8",
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        split_outbound_cookies=False,
        validate_inbound_headers=False,
        normalize_inbound_headers=False,
    )
    conn = h2.connection.H2Connection(config=config)
    conn.initiate_connection()
    conn.update_settings({h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 1 << 20})
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(conn.data_to_send())
        stream = conn.get_next_available_stream_id()
        encoded = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        conn.send_headers(stream, encoded, end_stream=not body)
        if body:
            _send_h2_body(conn, sock, stream, body, deadline)
        sock.sendall(conn.data_to_send())
        reply = Reply(None, transport="closed")
        data = bytearray()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                reply.transport = "timeout"
                return reply
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                reply.transport = "timeout"
                return reply
            except ConnectionResetError as e:
                return _finish(reply, data, "reset", str(e))
            if not chunk:
                return _finish(reply, data, "closed", "")
            try:
                events = conn.receive_data(chunk)
            except h2.exceptions.ProtocolError as e:
                return _finish(reply, data, "protocol_error", str(e))
            for event in events:
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream:
                    pairs = [(k.decode() if isinstance(k, bytes) else k, v.decode() if isinstance(v, bytes) else v)
                             for k, v in event.headers]
                    reply.status = int(dict(pairs)[":status"])
                    reply.headers = [(k, v) for k, v in pairs if not k.startswith(":")]
                    reply.transport = "ok"
                elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream:
                    data += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, stream)
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream:
                    return _finish(reply, data, "ok", "")
                elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream:
                    return _finish(reply, data, "reset", f"RST_STREAM {event.error_code!r}")
                elif isinstance(event, h2.events.ConnectionTerminated):
                    return _finish(reply, data, "goaway", f"GOAWAY {event.error_code!r} {event.additional_data!r}")
            out = conn.data_to_send()
            if out:
                sock.sendall(out)


def _send_h2_body(conn: h2.connection.H2Connection, sock: socket.socket, stream: int, body: bytes,
                  deadline: float) -> None:
    """Sends the body within flow-control windows, reading window updates as needed."""
    view = memoryview(body)
    while view:
        window = min(conn.local_flow_control_window(stream), conn.max_outbound_frame_size)
        if window <= 0:
            sock.sendall(conn.data_to_send())
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                return
            conn.receive_data(chunk)
            continue
        piece, view = view[:window], view[window:]
        try:
            conn.send_data(stream, bytes(piece), end_stream=not view)
        except h2.exceptions.StreamClosedError:  # refused before the body was read
            return
    sock.sendall(conn.data_to_send())


def _finish(reply: Reply, data: bytearray, transport: str, detail: str) -> Reply:
    reply.body = bytes(data)
    if reply.status is None:
        reply.transport, reply.detail = transport, detail
    return reply
