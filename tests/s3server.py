"""A real S3-compatible server for the tests: moto's server mode on a loopback port.

Clients reach it through the usual AWS variables, in GDAL's form (AWS_S3_ENDPOINT host:port,
AWS_HTTPS=NO, AWS_VIRTUAL_HOSTING=FALSE), which engine.storage resolves for its writer too.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tests.loopback import free_port


@dataclass
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    env: dict[str, str]  # the AWS_* variables that reach it
    client: Any  # a boto3 S3 client on it


@contextmanager
def moto_s3(buckets: Sequence[str] = ()) -> Iterator[S3Server]:
    """Start a moto S3 server on loopback with ``buckets`` created; stop it after."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_S3_ENDPOINT": f"127.0.0.1:{port}",
        "AWS_HTTPS": "NO",
        "AWS_VIRTUAL_HOSTING": "FALSE",
    }
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    for bucket in buckets:
        client.create_bucket(Bucket=bucket)
    try:
        yield S3Server(endpoint, env, client)
    finally:
        server.stop()


@contextmanager
def moto_s3_everywhere(client: Any, buckets: Sequence[str] = ()) -> Iterator[S3Server]:
    """:func:`moto_s3` with its variables set in this process and on ``client``'s workers
    (a worker reads them when it writes the store), and taken away after."""
    import os

    import pytest

    with moto_s3(buckets) as server, pytest.MonkeyPatch.context() as mp:
        for k, v in server.env.items():
            mp.setenv(k, v)
        env = dict(server.env)
        client.run(lambda: os.environ.update(env))  # a lambda runs with the worker's os
        try:
            yield server
        finally:
            keys = list(server.env)
            client.run(lambda: [os.environ.pop(k, None) for k in keys])
