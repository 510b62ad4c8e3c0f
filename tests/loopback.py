"""Real servers on loopback for the tests: the app in a uvicorn thread, or the real
``mosaicflow serve`` command in a process."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def serve(app: Any) -> Iterator[httpx.Client]:
    """Run ``app`` on a free loopback port; yield an httpx client bound to it."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            yield http
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def serve_command(
    args: list[str], base_url: str, verify: Any = True, ready_path: str = "/arcgis/rest/info"
) -> Iterator[httpx.Client]:
    """Start a server command, wait until ``base_url + ready_path`` answers, stop it after.

    The client's ``server_process`` attribute is the command's process (tests kill it).
    """
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with httpx.Client(base_url=base_url, verify=verify, timeout=30) as http:
            http.server_process = proc  # type: ignore[attr-defined]
            for _ in range(200):
                try:
                    http.get(ready_path, params={"f": "json"})
                    break
                except httpx.TransportError:
                    if proc.poll() is not None:
                        out = proc.stdout.read() if proc.stdout else ""
                        raise RuntimeError(f"server exited: {out}") from None
                    time.sleep(0.1)
            yield http
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate and key for https on 127.0.0.1 (skips without the openssl command)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a self-signed certificate")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key
