#!/usr/bin/env python3
"""The HTTP function server the hosting tests put behind `dispatcher serve
--function ID=http:URL`: Python's standard-library server, nobody's mock.

POST / answers by its payload:
  status:NNN   that status (body "status NNN")
  sleep:MS     the payload, MS milliseconds late
  headers      the request's X-Faas-* headers as JSON
  anything     "NAME:" + the payload
--status NNN answers every POST with that status; --sleep-ms MS delays
every POST. GET /stats: {"requests", "peak" (most POSTs at once),
"connections" (TCP connections accepted)}."""

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, default=8080)
parser.add_argument("--name", default="fn")
parser.add_argument("--status", type=int, default=0)
parser.add_argument("--sleep-ms", type=int, default=0)
args = parser.parse_args()

lock = threading.Lock()
stats = {"requests": 0, "peak": 0, "connections": 0}
now = [0]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without this, Nagle holds the
    # body until the client's delayed ACK (40 ms a request).
    disable_nagle_algorithm = True

    def setup(self):
        super().setup()
        with lock:
            stats["connections"] += 1

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with lock:
            stats["requests"] += 1
            now[0] += 1
            stats["peak"] = max(stats["peak"], now[0])
        try:
            text = body.decode("utf-8", "replace")
            if args.sleep_ms:
                time.sleep(args.sleep_ms / 1000)
            if args.status:
                return self.answer(args.status, f"status {args.status}".encode())
            if text.startswith("status:"):
                code = int(text[7:])
                return self.answer(code, f"status {code}\nsecond line".encode())
            if text.startswith("sleep:"):
                time.sleep(int(text[6:]) / 1000)
            if text == "headers":
                faas = {k: v for k, v in self.headers.items() if k.lower().startswith("x-faas-")}
                return self.answer(200, json.dumps(faas, sort_keys=True).encode())
            self.answer(200, f"{args.name}:".encode() + body)
        finally:
            with lock:
                now[0] -= 1

    def do_GET(self):
        with lock:
            self.answer(200, json.dumps(stats).encode())

    def answer(self, status, body):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()
