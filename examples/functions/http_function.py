#!/usr/bin/env python3
"""An HTTP function server, the shape of an OpenFaaS or Knative function
image: it answers POST / with its function's output (here: the body
reversed) on port 8080. Put it behind the dispatcher with
`dispatcher serve --function 13=http:http://127.0.0.1:8080/`; the request's
ids arrive as X-Faas-* headers. Python's standard library only.

Usage: http_function.py [--port 8080] [--limit N]
  --limit N: answer 503 beyond N requests at once (the worker re-steers
  those through the dispatcher as BUSY)."""

import argparse
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--limit", type=int, default=0)
    args = parser.parse_args()
    busy = threading.Semaphore(args.limit) if args.limit else None

    class Function(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive
        # Headers and body go out in two writes: without this, Nagle holds
        # the body until the client's delayed ACK (40 ms a request).
        disable_nagle_algorithm = True

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if busy is not None and not busy.acquire(blocking=False):
                return self.answer(503, b"at capacity")
            try:
                self.answer(200, body[::-1])
            finally:
                if busy is not None:
                    busy.release()

        def do_GET(self):
            self.answer(200, b"ok")

        def answer(self, status, body):
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    ThreadingHTTPServer((args.host, args.port), Function).serve_forever()


if __name__ == "__main__":
    main()
