#!/usr/bin/env python3
"""A tiny OpenAI-compatible server for the image boot test (the real engines are far too
slow under TCG): GET /v1/models lists MODEL; POST /v1/chat/completions answers every request
with REPLY (streamed as SSE with a usage chunk when asked, else one JSON object).
Usage: fake-backend.py PORT MODEL REPLY  (listens on 127.0.0.1)."""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, MODEL, REPLY = int(sys.argv[1]), sys.argv[2], sys.argv[3]
USAGE = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send_json(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith("/v1/models"):
            self.send_json(200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})
        else:
            self.send_json(404, {"error": {"message": "not found"}})

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        req = json.loads(self.rfile.read(n) or b"{}")
        if not self.path.startswith("/v1/chat/completions"):
            self.send_json(404, {"error": {"message": "not found"}})
            return
        base = {"id": "chatcmpl-fake", "created": 0, "model": MODEL}
        if not req.get("stream"):
            msg = {"role": "assistant", "content": REPLY}
            self.send_json(200, dict(base, object="chat.completion", usage=USAGE,
                                     choices=[{"index": 0, "message": msg, "finish_reason": "stop"}]))
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        chunks = [
            dict(base, object="chat.completion.chunk",
                 choices=[{"index": 0, "delta": {"role": "assistant", "content": REPLY}, "finish_reason": None}]),
            dict(base, object="chat.completion.chunk",
                 choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}]),
            dict(base, object="chat.completion.chunk", choices=[], usage=USAGE),
        ]
        for c in chunks:
            self.wfile.write(b"data: " + json.dumps(c).encode() + b"\n\n")
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
