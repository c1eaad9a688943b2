"""The HTTP plumbing of alignkit's two servers (`alignkit serve`, `alignkit sxs serve`), on http.server: a listen
backlog that holds a burst of clients, a socket timeout per connection, strict reading of bodies and JSON, and the
loopback-only Host rule against DNS rebinding. Every malformed request is a BadRequest (a 4xx), never a dead or
blocked handler thread.
"""

from __future__ import annotations

import ipaddress
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from alignkit import AlignkitError

LISTEN_BACKLOG = 128  # connections the kernel holds until they are accepted (http.server's default is 5)
REQUEST_TIMEOUT = 30.0  # seconds a connection may stall (a body shorter than its Content-Length, an idle
                        # keep-alive) before its thread gives up on it


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def loopback_host(header: str | None) -> bool:
    """Whether a request's Host header names the loopback interface (`127.0.0.1:8700`, `localhost`, `[::1]`).

    A server that answers only such requests cannot be reached by a web page elsewhere through DNS rebinding:
    the browser would send the attacker's host name. A missing or unparsable Host header is not loopback.
    """
    try:
        return is_loopback(urlsplit(f"//{header or ''}").hostname or "")
    except ValueError:  # e.g. "[abc": an unclosed IPv6 bracket
        return False


class Server(ThreadingHTTPServer):
    """A ThreadingHTTPServer for a burst of clients, quiet about clients that hang up."""

    request_queue_size = LISTEN_BACKLOG  # with the default of 5, a burst of 50 connections gets resets
    daemon_threads = True  # a handler still waiting on a slow client never holds up the process's exit

    def handle_error(self, request, client_address) -> None:
        # A client that disconnects or stalls mid-request is not the server's error; anything else is a bug,
        # and its traceback goes to stderr as http.server would print it.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


def listen(handler: type[BaseHTTPRequestHandler], host: str, port: int) -> Server:
    try:
        return Server((host, port), handler)
    except OSError as e:
        raise AlignkitError(f"cannot listen on {host}:{port}: {e.strerror}") from None


def read_body(handler: BaseHTTPRequestHandler, limit: int) -> bytes:
    """Exactly the Content-Length bytes of a request body, or BadRequest (4xx).

    After any error the connection is closed (`close_connection`): a body left unread must not be parsed as
    the next request. A body that stalls ends with the handler's socket timeout (408), not a blocked thread.
    """
    lengths = handler.headers.get_all("Content-Length") or []
    if handler.headers.get("Transfer-Encoding") or len(set(lengths)) > 1:
        handler.close_connection = True  # chunked or ambiguous framing: refuse rather than guess
        raise BadRequest(411 if not lengths else 400, "send the body with one Content-Length header "
                                                      "(no Transfer-Encoding)")
    if not lengths:
        handler.close_connection = True
        raise BadRequest(411, "a Content-Length header is required")
    value = lengths[0].strip()
    if not (value.isascii() and value.isdigit()):  # "abc", "-1", "+5", "1e3", "²" (isdigit alone accepts it)
        handler.close_connection = True
        raise BadRequest(400, f"Content-Length {value[:40]!r} is not a number of bytes")
    if len(value) > 15 or int(value) > limit:  # the length check first: int() refuses over 4,300 digits
        handler.close_connection = True
        raise BadRequest(413, f"give a Content-Length of at most {limit} bytes")
    length = int(value)
    try:
        body = handler.rfile.read(length)
    except TimeoutError:
        handler.close_connection = True
        raise BadRequest(408, f"the body did not arrive within {handler.timeout:g} s "
                              f"(Content-Length {length})") from None
    if len(body) < length:  # the client closed its side early
        handler.close_connection = True
        raise BadRequest(400, f"the body ended after {len(body)} of its {length} bytes (Content-Length)")
    return body


def ignore_body(handler: BaseHTTPRequestHandler) -> None:
    """A request that takes no body (GET) but announces one: its body is not read, so the connection closes
    after the answer instead of reading those bytes as the next request."""
    length = (handler.headers.get("Content-Length") or "0").strip()
    if length != "0" or handler.headers.get("Transfer-Encoding"):
        handler.close_connection = True


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def parse_json_object(body: bytes) -> dict:
    """A request body that must be one JSON object in UTF-8, or BadRequest (400).

    Stricter than json.loads(bytes): no UTF-16/32 guessing, no NaN or Infinity, no lone surrogate escapes
    ("\\ud800", which no UTF-8 text can hold, so SQLite and tokenizers would fail on it later), and a nesting
    too deep to parse is a bad request rather than a RecursionError.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest(400, f"body is not valid UTF-8 (byte {e.start})") from None
    try:
        req = json.loads(text, parse_constant=_no_constant)
        json.dumps(req, ensure_ascii=False).encode("utf-8")  # raises on a lone surrogate anywhere
    except json.JSONDecodeError as e:
        raise BadRequest(400, f"body is not valid JSON ({e})") from None
    except UnicodeEncodeError:
        raise BadRequest(400, "body is not valid JSON (a \\u escape of an unpaired surrogate)") from None
    except (ValueError, RecursionError) as e:  # NaN/Infinity, an integer of over 4,300 digits, deep nesting
        raise BadRequest(400, f"body is not valid JSON ({str(e) or 'nested too deeply'})") from None
    if not isinstance(req, dict):
        raise BadRequest(400, "body must be a JSON object")
    return req
