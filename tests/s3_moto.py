"""A real S3 API on loopback for the object-store tests: moto's standalone server on a free port, with the AWS
environment pointing at it and nothing else (a developer's own ~/.aws must not leak in)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import fsspec
import pytest


def forget_s3_clients() -> None:
    """Drop s3fs's cached instances: one made under another environment would keep its endpoint."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@contextmanager
def moto_s3(scratch: Path, access_key: str, secret_key: str, bucket: str | None = None) -> Iterator[str]:
    """Start the server, point the AWS environment at it (credentials `access_key` / `secret_key`, config files
    under `scratch` that do not exist), create `bucket` if given, and yield the endpoint URL."""
    from moto.server import ThreadedMotoServer

    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level
    werkzeug.setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        none = str(scratch / "absent")
        with pytest.MonkeyPatch.context() as mp:
            for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
                mp.delenv(name, raising=False)
            mp.setenv("AWS_ENDPOINT_URL", endpoint)
            mp.setenv("AWS_ACCESS_KEY_ID", access_key)
            mp.setenv("AWS_SECRET_ACCESS_KEY", secret_key)
            mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
            mp.setenv("AWS_CONFIG_FILE", none)
            mp.setenv("AWS_SHARED_CREDENTIALS_FILE", none)
            forget_s3_clients()
            if bucket:
                fsspec.filesystem("s3").mkdir(bucket)
            try:
                yield endpoint
            finally:
                forget_s3_clients()
    finally:
        server.stop()
        werkzeug.setLevel(level)
