"""`alignkit sxs serve`: a blind side-by-side labelling page for people, labels into SQLite.

    alignkit sxs serve --pairs sxs.jsonl --db labels.sqlite               # http://127.0.0.1:8700/
    ALIGNKIT_SXS_TOKEN=$(python -c 'import secrets; print(secrets.token_urlsafe(24))') \\
        alignkit sxs serve --pairs sxs.jsonl --host 0.0.0.0                # http://HOST:8700/?token=...

Routes: `GET /` (the page), `GET /api/next?annotator=ID` (the next unlabelled item for this annotator, answers
on seeded sides, model names hidden, plus progress), `POST /api/label` with a JSON body
`{"annotator", "pair_id", "choice": "left"|"right"|"tie"|"both_bad", "comment"}`. The server, not the page,
maps left/right back to the real models and records which model was shown on which side. Bad requests get a
4xx and a JSON `{"error": ...}`, and store nothing. Bound to a non-loopback address it refuses to start
without an access token; the token travels as the X-Sxs-Token header or the `token` query parameter.

The HTTP plumbing (a listen backlog that holds a burst of clients, a socket timeout per connection, strict
reading of bodies and JSON, the loopback-only Host rule) is alignkit.httpd, shared with `alignkit serve`.
"""

from __future__ import annotations

import hmac
import json
import sqlite3
import traceback
from functools import lru_cache
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from alignkit import AlignkitError
from alignkit.httpd import (REQUEST_TIMEOUT, BadRequest, Server, ignore_body, is_loopback, listen, loopback_host,
                            parse_json_object, read_body)
from alignkit.sxs import page
from alignkit.sxs.items import Item, a_on_left, annotator_order, load_items
from alignkit.sxs.store import LabelStore

MAX_COMMENT = 2000  # characters
MAX_BODY = 64 * 1024  # bytes
MIN_TOKEN = 16  # characters
CHOICES = ("left", "right", "tie", "both_bad")
STATIC = {"/": ("text/html", page.HTML), "/sxs.css": ("text/css", page.CSS),
          "/sxs.js": ("text/javascript", page.SCRIPT)}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
}


def _annotator(value) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 64 or not value.isprintable():
        raise BadRequest(400, "'annotator' must be a printable string of 1 to 64 characters")
    return value.strip()


def parse_label(body: bytes, items: dict[str, Item], seed: int) -> dict:
    """A label request body -> the row to store (choice mapped back to the real models), or BadRequest."""
    req = parse_json_object(body)
    unknown = set(req) - {"annotator", "pair_id", "choice", "comment"}
    if unknown:
        raise BadRequest(400, f"unknown field(s): {', '.join(sorted(unknown))}")
    annotator = _annotator(req.get("annotator"))
    item = items.get(req.get("pair_id")) if isinstance(req.get("pair_id"), str) else None
    if item is None:
        raise BadRequest(400, f"unknown pair_id {req.get('pair_id')!r}")
    choice = req.get("choice")
    if choice not in CHOICES:
        raise BadRequest(400, f"'choice' must be one of {', '.join(CHOICES)}")
    comment = req.get("comment") or ""
    if not isinstance(comment, str) or len(comment) > MAX_COMMENT:
        raise BadRequest(400, f"'comment' must be a string of at most {MAX_COMMENT} characters")
    left_is_a = a_on_left(seed, annotator, item.id)
    left, right = (item.model_a, item.model_b) if left_is_a else (item.model_b, item.model_a)
    if choice in ("left", "right"):
        stored = "a" if (choice == "left") == left_is_a else "b"
        winner = item.model_a if stored == "a" else item.model_b
    else:
        stored, winner = choice, None
    return {"annotator": annotator, "pair_id": item.id, "pair_digest": item.digest, "model_a": item.model_a,
            "model_b": item.model_b, "left_model": left, "right_model": right, "choice": stored, "winner": winner,
            "comment": comment.strip()}


def make_server(items: dict[str, Item], db: str | Path, host: str = "127.0.0.1", port: int = 8700,
                token: str | None = None, seed: int = 0, request_timeout: float = REQUEST_TIMEOUT) -> Server:
    if token is not None and len(token) < MIN_TOKEN:
        raise AlignkitError(f"the access token must be at least {MIN_TOKEN} characters "
                            "(python -c 'import secrets; print(secrets.token_urlsafe(24))')")
    if not token and not is_loopback(host):
        raise AlignkitError(f"--host {host}: serving beyond this machine needs an access token "
                            "(--token or ALIGNKIT_SXS_TOKEN); annotators then open http://HOST:PORT/?token=TOKEN")
    store = LabelStore(db)

    @lru_cache(maxsize=1024)
    def order(annotator: str) -> tuple[str, ...]:
        return tuple(annotator_order(seed, annotator, items))

    def next_item(annotator: str) -> dict:
        done = store.labelled(annotator) & items.keys()
        progress = {"labelled": len(done), "total": len(items)}
        pending = next((i for i in order(annotator) if i not in done), None)
        if pending is None:
            return {"done": True, **progress}
        item = items[pending]
        a, b = item.answer_a, item.answer_b
        left, right = (a, b) if a_on_left(seed, annotator, item.id) else (b, a)
        return {"done": False, "pair_id": item.id, "prompt": item.prompt, "left": left, "right": right, **progress}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = request_timeout  # a stalled client frees its thread after this many seconds

        def log_message(self, *args):  # quiet; errors go back to the client
            pass

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", f"{content_type}; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            for name, value in SECURITY_HEADERS.items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, payload: dict) -> None:
            self._send(status, json.dumps(payload, ensure_ascii=False).encode(), "application/json")

        def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
            """The errors http.server answers itself (a malformed request line, headers too long, an
            unsupported method) in this API's JSON, like every other error."""
            self.close_connection = True
            if self.request_version == "HTTP/0.9":  # a garbled request line: answer with a status line anyway
                self.request_version = "HTTP/1.0"
            self._json(code, {"error": message or self.responses.get(code, ("error",))[0]})

        def _check(self, url, static: bool) -> None:
            """The access token for the API when one is set (the page and its script hold no data); without
            one, only requests addressed to a loopback name or address (no DNS-rebinding pages)."""
            if not token:
                if not loopback_host(self.headers.get("Host")):
                    raise BadRequest(403, "this server only answers requests addressed to the loopback interface")
            elif not static:
                given = self.headers.get("X-Sxs-Token") or parse_qs(url.query).get("token", [""])[0]
                if not hmac.compare_digest(given.encode(), token.encode()):
                    raise BadRequest(401, "missing or wrong access token (open the link you were given, "
                                          "with its ?token=...)")

        def _handle(self, method: str) -> None:
            url = urlsplit(self.path)
            try:
                body = b""
                if method == "POST":
                    body = read_body(self, MAX_BODY)
                else:
                    ignore_body(self)
                static = method == "GET" and url.path in STATIC
                self._check(url, static)
                if static:
                    content_type, text = STATIC[url.path]
                    self._send(200, text.encode(), content_type)
                elif method == "GET" and url.path == "/api/next":
                    annotator = _annotator(parse_qs(url.query).get("annotator", [""])[0])
                    self._json(200, next_item(annotator))
                elif method == "POST" and url.path == "/api/label":
                    # JSON only, and a missing Content-Type is refused too: a page on another site can post
                    # text/plain, a form, or a body with no Content-Type at all without a CORS preflight,
                    # but not application/json.
                    if self.headers.get_content_type() != "application/json":
                        raise BadRequest(415, "Content-Type must be application/json")
                    row = parse_label(body, items, seed)
                    replaced = store.save(row)
                    done = store.labelled(row["annotator"]) & items.keys()
                    self._json(200, {"stored": True, "replaced": replaced, "labelled": len(done),
                                     "total": len(items)})
                else:
                    raise BadRequest(404, f"no route {method} {url.path}")
            except BadRequest as e:
                self._json(e.status, {"error": str(e)})
            except sqlite3.Error as e:  # a full disk, a locked file: the client learns the label was not stored
                self._json(500, {"error": f"labels database: {e}"})
            except (ConnectionError, TimeoutError):
                raise  # the client is gone or stuck: nothing to answer (Server.handle_error stays quiet)
            except Exception:  # a bug: the client still gets an answer, the traceback goes to stderr
                traceback.print_exc()
                self.close_connection = True
                self._json(500, {"error": "internal server error (see the server's log)"})

        def do_GET(self):
            self._handle("GET")

        def do_POST(self):
            self._handle("POST")

    return listen(Handler, host, port)


def serve(pairs: str, db: str, host: str, port: int, token: str | None, seed: int) -> None:
    items = load_items(pairs)
    server = make_server(items, db, host, port, token or None, seed)
    query = "?token=<token>" if token else ""
    print(f"serving {len(items)} items from {pairs} at http://{host}:{server.server_address[1]}/{query} "
          f"(labels: {db})", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
