"""A Range-capable HTTP file server for the remote-input tests, with failure modes.

``python -m tests.range_server DIR PORT`` serves DIR. Under ``/flaky/``, three reads in
four past the first 16 KiB (the pixels, not the header GDAL reads when probing) fail with
503;
under ``/broken/`` every request fails with 500. ``/_counts`` answers the failure counts as
JSON.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import sys
import threading
from typing import ClassVar

_PREFIX = re.compile(r"^/(flaky|broken)/")


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    counts: ClassVar[dict[str, int]] = {}
    lock = threading.Lock()

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _fail(self) -> bool:
        match = re.match(r"bytes=(\d+)-", self.headers.get("Range", ""))
        pixels = bool(match) and int(match.group(1)) >= 16384
        with self.lock:
            n = self.counts[self.path] = self.counts.get(self.path, 0) + pixels
        broken = self.path.startswith("/broken/")
        if broken or (self.path.startswith("/flaky/") and pixels and n % 4):
            with self.lock:
                self.counts["failed"] = self.counts.get("failed", 0) + 1
            self.send_error(500 if broken else 503)
            return True
        return False

    def translate_path(self, path: str) -> str:
        return super().translate_path(_PREFIX.sub("/", path))

    def do_HEAD(self) -> None:
        if not self._fail():
            super().do_HEAD()

    def do_GET(self) -> None:
        if self.path == "/_counts":
            body = json.dumps(self.counts).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self._fail():
            return
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self.send_error(404)
            return
        size = os.path.getsize(path)
        match = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        with open(path, "rb") as f:
            if match:
                start = int(match.group(1))
                end = min(int(match.group(2) or size - 1), size - 1)
                f.seek(start)
                body = f.read(end - start + 1)
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            else:
                body = f.read()
                self.send_response(200)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)


def main() -> None:
    folder, port = sys.argv[1], int(sys.argv[2])

    def handler(*args: object, **kwargs: object) -> RangeHandler:
        return RangeHandler(*args, directory=folder, **kwargs)  # type: ignore[arg-type]

    http.server.ThreadingHTTPServer(("127.0.0.1", port), handler).serve_forever()


if __name__ == "__main__":
    main()
