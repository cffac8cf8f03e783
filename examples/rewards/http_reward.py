#!/usr/bin/env python3
"""oxrl HTTP reward: POST {"samples": [...]} -> {"scores": [...]}, one score per sample.
Run: python3 http_reward.py [PORT]  (prints the port it listens on, on 127.0.0.1)."""
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

def score(sample):  # your reward: shorter completions score higher
    return 1.0 / (1.0 + len(sample["completion"].split()))

class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        samples = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["samples"]
        body = json.dumps({"scores": [score(s) for s in samples]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # keep stderr quiet
        pass

server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
