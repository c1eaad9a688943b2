"""`alignkit sxs serve`: a blind side-by-side labelling page for people, labels into SQLite.

    alignkit sxs serve --pairs sxs.jsonl --db labels.sqlite               # http://127.0.0.1:8700/
    alignkit sxs serve --pairs sxs.jsonl --lang zh                         # the page in Chinese
    ALIGNKIT_SXS_TOKEN=$(python -c 'import secrets; print(secrets.token_urlsafe(24))') \\
        alignkit sxs serve --pairs sxs.jsonl --host 0.0.0.0                # http://HOST:8700/?token=...

Routes: `GET /` (the page), `GET /api/next?annotator=ID` (the next unlabelled item for this annotator, answers
on seeded sides, model names hidden, plus progress), `POST /api/label` with a JSON body
`{"annotator", "pair_id", "choice": "left"|"right"|"tie"|"both_bad", "comment"}`, `POST /api/undo` with
`{"annotator", "pair_id"}` (takes back that label if it is the annotator's latest, 409 if not, and answers
with the item again as /api/next would). The server, not the page, maps left/right back to the real models
and records which model was shown on which side. Bad requests get a 4xx and a JSON `{"error": ...}`, and
change nothing. Bound to a non-loopback address it refuses to start without an access token; the token
travels as the X-Sxs-Token header or the `token` query parameter. The page speaks Chinese when most prompts
are Chinese (`--lang auto`), or as `--lang` says.

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
from alignkit.sxs.items import Item, a_on_left, annotator_order, load_items, mostly_chinese
from alignkit.sxs.store import LabelStore

MAX_COMMENT = 2000  # characters
MAX_BODY = 64 * 1024  # bytes
MIN_TOKEN = 16  # characters
CHOICES = ("left", "right", "tie", "both_bad")
LANGS = ("auto", *page.STRINGS)
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
}


def _annotator(value) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 64 or not value.isprintable():
        raise BadRequest(400, "'annotator' must be a printable string of 1 to 64 characters")
    return value.strip()


def _fields(body: bytes, allowed: set[str]) -> dict:
    req = parse_json_object(body)
    unknown = set(req) - allowed
    if unknown:
        raise BadRequest(400, f"unknown field(s): {', '.join(sorted(unknown))}")
    return req


def _item(value, items: dict[str, Item]) -> Item:
    item = items.get(value) if isinstance(value, str) else None
    if item is None:
        raise BadRequest(400, f"unknown pair_id {value!r}")
    return item


def parse_label(body: bytes, items: dict[str, Item], seed: int) -> dict:
    """A label request body -> the row to store (choice mapped back to the real models), or BadRequest."""
    req = _fields(body, {"annotator", "pair_id", "choice", "comment"})
    annotator = _annotator(req.get("annotator"))
    item = _item(req.get("pair_id"), items)
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


def parse_undo(body: bytes, items: dict[str, Item]) -> tuple[str, str]:
    """An undo request body -> (annotator, pair_id), or BadRequest. Both are required: the page names the
    label it means, so it can never take back one its annotator is not looking at."""
    req = _fields(body, {"annotator", "pair_id"})
    return _annotator(req.get("annotator")), _item(req.get("pair_id"), items).id


def page_lang(lang: str, items: dict[str, Item]) -> str:
    """The page's language: as given, or for "auto" Chinese when most prompts are Chinese, else English."""
    if lang not in LANGS:
        raise AlignkitError(f"--lang {lang}: expected one of {', '.join(LANGS)}")
    if lang == "auto":
        return "zh" if mostly_chinese(items) else "en"
    return lang


def make_server(items: dict[str, Item], db: str | Path, host: str = "127.0.0.1", port: int = 8700,
                token: str | None = None, seed: int = 0, request_timeout: float = REQUEST_TIMEOUT,
                lang: str = "auto") -> Server:
    if token is not None and len(token) < MIN_TOKEN:
        raise AlignkitError(f"the access token must be at least {MIN_TOKEN} characters "
                            "(python -c 'import secrets; print(secrets.token_urlsafe(24))')")
    if not token and not is_loopback(host):
        raise AlignkitError(f"--host {host}: serving beyond this machine needs an access token "
                            "(--token or ALIGNKIT_SXS_TOKEN); annotators then open http://HOST:PORT/?token=TOKEN")
    lang = page_lang(lang, items)
    static = {"/": ("text/html", page.html(lang).encode()), "/sxs.css": ("text/css", page.CSS.encode()),
              "/sxs.js": ("text/javascript", page.script(lang).encode())}
    store = LabelStore(db)

    @lru_cache(maxsize=1024)
    def order(annotator: str) -> tuple[str, ...]:
        return tuple(annotator_order(seed, annotator, items))

    def next_item(annotator: str) -> dict:
        done = store.labelled(annotator) & items.keys()
        pending = next((i for i in order(annotator) if i not in done), None)
        if pending is None:
            return {"done": True, "labelled": len(done), "total": len(items)}
        return show(annotator, items[pending], len(done))

    def show(annotator: str, item: Item, labelled: int) -> dict:
        a, b = item.answer_a, item.answer_b
        left, right = (a, b) if a_on_left(seed, annotator, item.id) else (b, a)
        return {"done": False, "pair_id": item.id, "prompt": item.prompt, "left": left, "right": right,
                "labelled": labelled, "total": len(items)}

    def undo(body: bytes) -> dict:
        """Take back the annotator's latest label, and show its item again (it is unlabelled now)."""
        annotator, pair_id = parse_undo(body, items)
        row = store.undo(annotator, pair_id)
        if row is None:
            raise BadRequest(409, f"the latest label of {annotator!r} is not one of item {pair_id!r} (or there is "
                                  "none): only an annotator's latest label can be undone")
        labelled = len(store.labelled(annotator) & items.keys())
        return {**show(annotator, items[pair_id], labelled), "undone": True, "comment": row["comment"]}

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

        def _require_json(self) -> None:
            # JSON only, and a missing Content-Type is refused too: a page on another site can post text/plain,
            # a form, or a body with no Content-Type at all without a CORS preflight, but not application/json.
            if self.headers.get_content_type() != "application/json":
                raise BadRequest(415, "Content-Type must be application/json")

        def _handle(self, method: str) -> None:
            url = urlsplit(self.path)
            try:
                body = b""
                if method == "POST":
                    body = read_body(self, MAX_BODY)
                else:
                    ignore_body(self)
                is_static = method == "GET" and url.path in static
                self._check(url, is_static)
                if is_static:
                    content_type, data = static[url.path]
                    self._send(200, data, content_type)
                elif method == "GET" and url.path == "/api/next":
                    annotator = _annotator(parse_qs(url.query).get("annotator", [""])[0])
                    self._json(200, next_item(annotator))
                elif method == "POST" and url.path == "/api/label":
                    self._require_json()
                    row = parse_label(body, items, seed)
                    replaced = store.save(row)
                    done = store.labelled(row["annotator"]) & items.keys()
                    self._json(200, {"stored": True, "replaced": replaced, "labelled": len(done),
                                     "total": len(items)})
                elif method == "POST" and url.path == "/api/undo":
                    self._require_json()
                    self._json(200, undo(body))
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


def serve(pairs: str, db: str, host: str, port: int, token: str | None, seed: int, lang: str = "auto") -> None:
    items = load_items(pairs)
    server = make_server(items, db, host, port, token or None, seed, lang=lang)
    query = "?token=<token>" if token else ""
    print(f"serving {len(items)} items from {pairs} at http://{host}:{server.server_address[1]}/{query} "
          f"(labels: {db}; page language: {page_lang(lang, items)})", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
