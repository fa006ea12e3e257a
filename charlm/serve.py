"""charlm-serve: a small local web page for a class or a demo.

    charlm-serve --ckpt checkpoints            # then open http://127.0.0.1:8000

The server is the standard library's ThreadingHTTPServer, grown to hold a classroom: one
thread per request (JAX releases the GIL while it computes, so generations run side by side), a
listen queue of 128 (the default 5 reset connections when 32 clients pressed Generate at once),
at most --max-streams generations or inspections at a time (more get 503 "busy, try again"), a
socket timeout that drops a request still unsent after REQUEST_TIMEOUT seconds, one log line per
request and never a traceback, and only requests meant for it: the Host must be an IP address,
localhost or a name given with --allow-host (a name that merely resolves to this machine, as in
DNS rebinding, is refused), and a request a browser sends from another site (its Origin is not
this server) is refused. Why not uvicorn and starlette: their concurrency limit counts open
connections, keep-alive ones included, not running generations; uvicorn has no deadline for a
request's headers; and the generation is blocking JAX work that would run in a thread pool
anyway. A generation streams as NDJSON lines, {"text": ...} per jitted chunk, then
{"done": ...}; the page reads them with fetch and a stream reader, and its Stop button aborts
the fetch, which ends the generation at the next chunk. Every request parameter has a limit,
and a bad request gets a 4xx with {"error": message}, never a traceback.

Routes: GET / (the page), GET /inspect (the Inspect view), GET /api/model (the model card),
GET /api/metrics (metrics.jsonl), POST /api/generate (a JSON object of the parameters in
LIMITS), POST /api/inspect ({"text", "span": [start, end] or null, "units": [names]}: the report
of charlm.inspect.inspection).
"""

from __future__ import annotations

import argparse
import json
import math
import secrets
import sys
import time
from collections.abc import Iterator, Sequence
from http import HTTPStatus
import ipaddress
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from charlm.cli import Parser, guarded, prepare_process, web_page
from charlm.errors import CharlmError

MAX_BODY = 16_384
# name: (kind, low, high, default). The default fills a missing parameter; null or "" means off
# for the ones that can be off (OPTIONAL) and the default for the others.
LIMITS = {
    "length": (int, 1, 5000, 500),
    "temperature": (float, 0.0, 5.0, 0.8),
    "top_k": (int, 1, 1000, None),
    "top_p": (float, 0.01, 1.0, 0.95),
    "repetition_penalty": (float, 1.0, 10.0, 1.0),
    "no_repeat_ngram": (int, 2, 100, None),
    "seed": (int, 0, 2**31 - 1, None),
}
CHUNK = 32  # chars per streamed line: smaller than the CLI's, so the page fills smoothly on slow models
OPTIONAL = {"top_k", "top_p", "no_repeat_ngram", "seed"}
MAX_PRIME = 2000
MAX_INSPECT = 2000  # chars per Inspect request: a 2,000-char text is inspected within a second on a 2-core CPU
MAX_UNITS = 16      # units whose activations one Inspect request may ask for
MAX_STREAMS = 32    # generations and inspections at once (a class of 30); more are answered "busy"
REQUEST_TIMEOUT = 10.0  # seconds a client may take to send its request (and to take each chunk)
LOCAL_NAMES = ("localhost",)


class BadRequest(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


def _number(name: str, request: dict):
    kind, low, high, default = LIMITS[name]
    value = request.get(name, default)
    if value is None or value == "":
        return None if name in OPTIONAL else default
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"{name} must be a number, got {value!r}") from None
    if kind is int and not number.is_integer():
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"{name} must be a whole number, got {value!r}")
    if not (math.isfinite(number) and low <= number <= high):
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"{name} must be between {low} and {high}, got {value!r}")
    return kind(number)


class App:
    """The loaded model and what the routes do with it."""

    def __init__(self, ckpt: str):
        from charlm.checkpoint import restore

        self.state, self.cfg, self.vocab, self.meta = restore(ckpt)
        from charlm.checkpoint import resolve

        self.run_dir = resolve(ckpt)  # "base" names the packaged model
        self.context = "stateful"

    def card(self) -> dict:
        return {**model_card(self.cfg, self.vocab, self.meta, self.run_dir),
                "limits": {**{k: [lo, hi] for k, (_, lo, hi, _) in LIMITS.items()}, "prime": [1, MAX_PRIME],
                           "inspect": [2, MAX_INSPECT]},
                "defaults": {k: d for k, (_, _, _, d) in LIMITS.items()}, "seed_prime": self.meta["seeds"][0],
                "seeds": self.meta["seeds"]}

    def metrics(self) -> list[dict]:
        return run_metrics(self.run_dir)

    def parse(self, body: bytes) -> dict:
        """The request's generation parameters, checked, or BadRequest."""
        request = _json_object(body, set(LIMITS) | {"prime"})
        prime = request.get("prime")
        if not isinstance(prime, str) or not prime:
            raise BadRequest(HTTPStatus.BAD_REQUEST, "prime must be some text")
        if len(prime) > MAX_PRIME:
            raise BadRequest(HTTPStatus.BAD_REQUEST, f"prime is {len(prime)} chars; the limit is {MAX_PRIME}")
        params = {name: _number(name, request) for name in LIMITS}
        if params["top_k"] is not None and params["top_k"] > self.vocab.size:
            params["top_k"] = None  # all chars: the same draw
        return {"prime": prime, **params}

    def inspect(self, body: bytes) -> dict:
        """The Inspect report for the request's text (BadRequest, or CharlmError for text the model cannot read)."""
        from charlm.inspect import encode_text, inspection

        request = _json_object(body, {"text", "span", "units"})
        text, span, units = request.get("text"), request.get("span"), request.get("units") or []
        if not isinstance(text, str) or not text:
            raise BadRequest(HTTPStatus.BAD_REQUEST, "text must be some text")
        if len(text) > MAX_INSPECT:
            raise BadRequest(HTTPStatus.BAD_REQUEST, f"the text is {len(text)} chars; the limit is {MAX_INSPECT}")
        if span is not None and not (isinstance(span, list) and len(span) == 2
                                     and all(isinstance(v, int) and not isinstance(v, bool) for v in span)):
            raise BadRequest(HTTPStatus.BAD_REQUEST, "span must be [start, end], two whole numbers, or null")
        if not (isinstance(units, list) and all(isinstance(u, str) for u in units)) or len(units) > MAX_UNITS:
            raise BadRequest(HTTPStatus.BAD_REQUEST, f"units must be a list of at most {MAX_UNITS} unit names")
        ids = encode_text(text, self.vocab, self.cfg, MAX_INSPECT)
        return inspection(self.state.params, self.cfg, self.vocab, ids, span=None if span is None else tuple(span),
                          units=units, bucket=MAX_INSPECT)  # one compile serves every text

    def generate(self, p: dict) -> Iterator[str]:
        """Checks the prime against the vocabulary (CharlmError) and returns the text's chunks."""
        from charlm.config import SamplingSettings
        from charlm.sampling import stream

        settings = SamplingSettings(p["temperature"], p["top_k"], p["top_p"], p["repetition_penalty"],
                                    no_repeat_ngram=p["no_repeat_ngram"])
        seed = p["seed"] if p["seed"] is not None else secrets.randbelow(2**31)
        pieces = stream(self.state.params, self.cfg, self.vocab, p["prime"], settings, length=p["length"], seed=seed,
                        context=self.context, chunk=CHUNK)
        return (chunk[0] for chunk in pieces)

    def warm_up(self) -> None:
        """Compiles the page's default settings (and argmax) for primes of up to 128 chars, so
        Generate answers at once, and the Inspect view's trace."""
        self.inspect(json.dumps({"text": self.meta["seeds"][0]}).encode())
        defaults = {k: d for k, (_, _, _, d) in LIMITS.items()}
        seed_text = self.meta["seeds"][0]
        for size in (16, 32, 64, 128):
            for temperature in ((defaults["temperature"], 0.0) if size == 128 else (defaults["temperature"],)):
                prime = (seed_text * (1 + size // max(1, len(seed_text))))[:size]
                for _ in self.generate({**defaults, "prime": prime, "temperature": temperature, "length": 40,
                                        "seed": 0}):
                    pass


def run_metrics(run_dir: Path) -> list[dict]:
    """The run's metrics.jsonl records, or none (the packaged base model, a copied checkpoint)."""
    from charlm.plot import read_metrics

    try:
        return read_metrics(run_dir)
    except CharlmError:
        return []


def model_card(cfg, vocab, meta: dict, run_dir: Path) -> dict:
    """What the page and the exported file show about a model: its text, net, epochs and best val."""
    corpus = meta.get("corpus") or {}
    metrics = run_metrics(run_dir)
    vals = [r["val_loss"] for r in metrics if "val_loss" in r]
    return {"corpus": Path(corpus.get("source") or "?").name, "chars": corpus.get("chars"),
            "vocab_size": vocab.size, "config": cfg.to_dict(), "epochs": len(metrics),
            "best_epoch": meta.get("epoch"), "val_bits_per_char": min(vals) / math.log(2) if vals else None}


def _json_object(body: bytes, allowed: set[str]) -> dict:
    try:
        request = json.loads(body.decode("utf-8")) if body.strip() else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadRequest(HTTPStatus.BAD_REQUEST, "the request body must be a JSON object") from None
    if not isinstance(request, dict):
        raise BadRequest(HTTPStatus.BAD_REQUEST, "the request body must be a JSON object")
    unknown = sorted(set(request) - allowed)
    if unknown:
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"unknown parameter(s): {', '.join(unknown)}")
    return request


def host_allowed(host_header: str | None, allowed_names: Sequence[str]) -> bool:
    """Whether a request's Host names this server: an IP address (what a class types), localhost,
    or a name given with --allow-host. Any other name may be a DNS-rebinding page's."""
    if not host_header:
        return False
    host = host_header.rsplit(":", 1)[0] if not host_header.endswith("]") else host_header
    host = host.strip("[]").lower()
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return host in LOCAL_NAMES or host in {n.lower() for n in allowed_names}


def make_handler(app: App, allowed_names: Sequence[str] = (), max_streams: int = MAX_STREAMS
                 ) -> type[BaseHTTPRequestHandler]:
    slots = threading.BoundedSemaphore(max_streams)

    class Handler(BaseHTTPRequestHandler):
        server_version = "charlm-serve"
        timeout = REQUEST_TIMEOUT  # a request still unsent after this is dropped, its thread freed

        def log_message(self, format, *args):  # one quiet line per request on stderr
            sys.stderr.write(f"{self.address_string()} {format % args}\n")

        def _refused(self) -> bool:
            """Answers 403 to a request not meant for this server (foreign Host, or a page on another site)."""
            host, origin = self.headers.get("Host"), self.headers.get("Origin")
            if not host_allowed(host, allowed_names):
                self._json(HTTPStatus.FORBIDDEN, {"error": f"this server does not answer for the name {host!r}; "
                                                  f"start charlm-serve with --allow-host NAME to allow it"})
                return True
            if origin is not None and origin not in (f"http://{host}", f"https://{host}"):
                self._json(HTTPStatus.FORBIDDEN, {"error": f"requests from pages on other sites ({origin}) are refused"})
                return True
            return False

        def _busy(self) -> None:
            self._json(HTTPStatus.SERVICE_UNAVAILABLE,
                       {"error": f"busy: {max_streams} generations are running; try again in a moment"},
                       {"Retry-After": "2"})

        def _send(self, status: HTTPStatus, body: bytes, kind: str, headers: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: HTTPStatus, obj, headers: dict | None = None) -> None:
            self._send(status, json.dumps(obj).encode(), "application/json", headers)

        def do_GET(self):
            if self._refused():
                return
            if self.path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, web_page("index.html").encode(), "text/html; charset=utf-8")
            elif self.path == "/inspect":
                from charlm.inspect import page

                self._send(HTTPStatus.OK, page().encode(), "text/html; charset=utf-8")
            elif self.path == "/api/model":
                self._json(HTTPStatus.OK, app.card())
            elif self.path == "/api/metrics":
                self._json(HTTPStatus.OK, app.metrics())
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no page {self.path}"})

        def do_POST(self):
            if self._refused():
                return
            if self.path not in ("/api/generate", "/api/inspect"):
                return self._json(HTTPStatus.NOT_FOUND, {"error": f"no page {self.path}"})
            try:
                size = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                size = -1
            if not 0 <= size <= MAX_BODY:
                self.close_connection = True
                return self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"the request is over {MAX_BODY} bytes"})
            body = self.rfile.read(size)  # the socket timeout drops a body that never comes
            if len(body) < size:
                self.close_connection = True
                return
            if not slots.acquire(blocking=False):
                return self._busy()
            try:
                if self.path == "/api/inspect":
                    return self._json(HTTPStatus.OK, app.inspect(body))
                self._stream(app.generate(app.parse(body)))
            except BadRequest as e:
                return self._json(e.status, {"error": str(e)})
            except CharlmError as e:
                return self._json(HTTPStatus.BAD_REQUEST, {"error": str(e)})
            finally:
                slots.release()

        def _stream(self, pieces: Iterator[str]) -> None:
            # No Content-Length: the body ends when the connection closes (HTTP/1.0 style).
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/x-ndjson; charset=utf-8")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            started, chars = time.monotonic(), 0
            try:
                for piece in pieces:
                    chars += len(piece)
                    self.wfile.write((json.dumps({"text": piece}) + "\n").encode())
                    self.wfile.flush()
                self.wfile.write((json.dumps({"done": True, "chars": chars,
                                              "seconds": round(time.monotonic() - started, 3)}) + "\n").encode())
            except OSError:  # the page pressed Stop or went away (or stopped reading): stop generating
                pass
            finally:
                if hasattr(pieces, "close"):
                    pieces.close()
            self.close_connection = True

    return Handler


class ClassroomServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the listen backlog: a class pressing Generate at once waits, not resets

    def handle_error(self, request, client_address) -> None:
        """One line, not a traceback, for whatever a client did (hung up, timed out, sent junk)."""
        e = sys.exc_info()[1]
        sys.stderr.write(f"{client_address[0]} dropped: {type(e).__name__}: {e}\n")


def make_server(app: App, host: str = "127.0.0.1", port: int = 8000, *, allowed_names: Sequence[str] = (),
                max_streams: int = MAX_STREAMS) -> ThreadingHTTPServer:
    return ClassroomServer((host, port), make_handler(app, allowed_names, max_streams))


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="charlm-serve", description="Serve a web page to generate text from a charlm checkpoint.")
    p.add_argument("--ckpt", required=True, metavar="DIR", help="checkpoint directory written by train.py")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; 0.0.0.0 opens it to your network (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one (default: %(default)s)")
    p.add_argument("--context", choices=("stateful", "window"), default="stateful", help="as sample.py's")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="a host name the page may be reached by (repeatable); IP addresses and localhost always "
                        "work, other names are refused so that a web page cannot drive the server through DNS")
    p.add_argument("--max-streams", type=int, default=MAX_STREAMS,
                   help="generations and inspections at once; more get a 'busy, try again' answer "
                        "(default: %(default)s)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    prepare_process()
    args = parser().parse_args(argv)

    def run() -> int:
        app = App(args.ckpt)
        app.context = args.context
        try:
            server = make_server(app, args.host, args.port, allowed_names=args.allow_host,
                                 max_streams=args.max_streams)
        except OSError as e:
            raise CharlmError(f"cannot listen on {args.host}:{args.port}: {e.strerror}") from None
        app.warm_up()
        host, port = server.server_address[:2]
        print(f"Serving {args.ckpt} at http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
        return 0

    return guarded("charlm-serve", run)


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
