"""A local S3-compatible server for tests: moto's server mode on 127.0.0.1, no network beyond it.

The product reaches it the way users reach MinIO or Ceph: through the standard ``AWS_*``
environment variables (``AWS_ENDPOINT_URL`` above all), which pyarrow's S3 filesystem reads
itself. Nothing in ``cxr_tune`` knows it is talking to a test server.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

REGION = "us-east-1"
# Variables that would send the SDK somewhere else than the test server, or to another identity.
_CLEARED = ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    pid: int

    def environment(self, config_dir: str) -> dict[str, str]:
        """What a process needs in ``os.environ`` to send every ``s3://`` call here."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
            # Never read the developer's ~/.aws (a profile there could name another endpoint).
            "AWS_CONFIG_FILE": os.path.join(config_dir, "config"),
            "AWS_SHARED_CREDENTIALS_FILE": os.path.join(config_dir, "credentials"),
        }

    @contextmanager
    def denying(self) -> Iterator[None]:
        """Every S3 request refused as AWS refuses credentials it does not know (moto's own switch), for a ``with`` block."""
        def switch(count: str) -> None:
            request = urllib.request.Request(f"{self.endpoint}/moto-api/reset-auth", data=count.encode(), method="POST",
                                             headers={"Content-Type": "text/plain"})
            urllib.request.urlopen(request, timeout=10).read()

        switch("0")
        try:
            yield
        finally:
            switch("inf")

    def create_bucket(self, bucket: str) -> None:
        import pyarrow.fs as pafs

        admin = pafs.S3FileSystem(
            endpoint_override=self.endpoint, region=REGION, access_key="testing", secret_key="testing",
            allow_bucket_creation=True,
        )
        admin.create_dir(bucket)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(endpoint: str, process: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False  # exited: most likely the port was taken between choosing and binding it
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.05)
    return False


@contextmanager
def moto_server(log_path: str, timeout: float = 30.0) -> Iterator[S3Server]:
    """``python -m moto.server`` on a free 127.0.0.1 port for the duration of a ``with`` block.

    Its request log goes to ``log_path`` (a pipe nobody reads would fill and stall the server).
    """
    process = None
    with open(log_path, "ab") as log:
        for _ in range(3):
            port = _free_port()
            endpoint = f"http://127.0.0.1:{port}"
            process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=log, stderr=subprocess.STDOUT,
                env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
            )
            if _wait_ready(endpoint, process, timeout):
                break
            process.kill()
            process.wait()
        else:
            with open(log_path, "rb") as failed:
                tail = failed.read()[-2000:].decode(errors="replace")
            raise RuntimeError(f"moto server did not start on 127.0.0.1 (log {log_path}): {tail}")
    try:
        yield S3Server(endpoint=endpoint, pid=process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def clear_foreign_aws_settings() -> dict[str, str]:
    """Remove the variables in ``_CLEARED`` from ``os.environ``; returns what was there."""
    return {k: os.environ.pop(k) for k in _CLEARED if k in os.environ}
