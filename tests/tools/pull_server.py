#!/usr/bin/env python3
"""pull_server.py — the HTTP server test_pull.c downloads from.

    pull_server.py DIR TOKEN

Serves the files of DIR on a free loopback port, which it prints on the
first line of stdout.  The first path segment picks the behaviour:

  /normal/FILE   Range (and If-Range against the ETag) honoured: 206
  /drop/FILE     the first request for FILE sends the headers and half of
                 the body, then closes the connection; later ones: normal
  /norange/FILE  like drop for the first request; after that Range is
                 ignored: always 200 with the whole file
  /slow/FILE     honours Range; 16 KiB every 20 ms
  /stall/FILE    sends 64 KiB, then nothing until the client goes away
  /hf/ORG/REPO/resolve/main/FILE   needs "Authorization: Bearer TOKEN",
                 else 401; then normal
  /status/CODE/FILE  answers CODE
  /__log         JSON: every request so far {path, range, if_range,
                 authorization, status}
"""
import json
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = sys.argv[1]
TOKEN = sys.argv[2]
LOG = []
SEEN = {}
LOCK = threading.RLock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *args):
        pass

    def record(self, status):
        with LOCK:
            LOG.append({
                "path": self.path,
                "range": self.headers.get("Range"),
                "if_range": self.headers.get("If-Range"),
                "authorization": self.headers.get("Authorization"),
                "status": status,
            })

    def plain(self, status, text):
        self.record(status)
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        parts = self.path.split("?")[0].lstrip("/").split("/")
        mode = parts[0]
        if mode == "__log":
            with LOCK:
                return self.plain(200, json.dumps(LOG))
        if mode == "status" and len(parts) >= 3:
            return self.plain(int(parts[1]), "status %s\n" % parts[1])
        if mode == "hf":
            if self.headers.get("Authorization") != "Bearer " + TOKEN:
                return self.plain(401, "unauthorized\n")
            if len(parts) < 6 or parts[3:5] != ["resolve", "main"]:
                return self.plain(404, "not a resolve URL\n")
            name = parts[-1]
        else:
            name = parts[-1]
        path = os.path.join(ROOT, os.path.basename(name))
        if not os.path.isfile(path):
            return self.plain(404, "no such file\n")
        data = open(path, "rb").read()
        st = os.stat(path)
        etag = '"%d-%d"' % (st.st_size, int(st.st_mtime))
        with LOCK:
            first = SEEN.get(self.path, 0) == 0
            SEEN[self.path] = SEEN.get(self.path, 0) + 1

        start = 0
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        honour = mode != "norange" and (if_range is None or if_range == etag)
        if rng and honour and rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[6:-1])
            if start >= len(data):
                self.record(416)
                self.send_response(416)
                self.send_header("Content-Range", "bytes */%d" % len(data))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        if mode == "nolength":
            # No Content-Length: the body ends when the connection does.
            self.record(200)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            if self.command != "HEAD":
                self.wfile.write(data)
            return
        status = 206 if start > 0 else 200
        self.record(status)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("ETag", etag)
        self.send_header("Accept-Ranges", "none" if mode == "norange" else "bytes")
        if status == 206:
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, len(data) - 1, len(data)))
        self.end_headers()
        if self.command == "HEAD":
            return
        body = data[start:]
        try:
            if mode in ("drop", "norange") and first:
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
            elif mode == "slow":
                for i in range(0, len(body), 16384):
                    self.wfile.write(body[i:i + 16384])
                    self.wfile.flush()
                    time.sleep(0.02)
            elif mode == "stall":
                self.wfile.write(body[:65536])
                self.wfile.flush()
                while True:
                    time.sleep(0.1)
                    self.wfile.write(b"")
                    # A peer that went away shows up as a failed peek.
                    self.connection.setblocking(False)
                    try:
                        if self.connection.recv(1, socket.MSG_PEEK) == b"":
                            return
                    except BlockingIOError:
                        pass
                    finally:
                        self.connection.setblocking(True)
            else:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
