"""A local GCS server for gs:// tests: `gcp-storage-emulator` (PyPI), with the preconditions the
output lease relies on (ifGenerationMatch on uploads, generation on deletes), which the emulator
does not check by itself.

    with running() as env:   # env: the variables a subprocess needs to use it
        subprocess.run([...], env={**os.environ, **env})

Clients find it through STORAGE_EMULATOR_HOST (gcsfs) and TENSORSTORE_GCS_HTTP_URL (Orbax's
tensorstore). GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false stops gcsfs from probing each bucket's type
over gRPC (which the emulator does not serve: 60 s timeouts).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator

BUCKET = "recap-test"


def client_env(port: int) -> dict[str, str]:
    url = f"http://localhost:{port}"
    return {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "GOOGLE_CLOUD_PROJECT": "test",
            # tensorstore looks for credentials on a GCE metadata server first: none here.
            "GCE_METADATA_ROOT": "localhost:1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running() -> Iterator[dict[str, str]]:
    """Start the emulator (in-memory, bucket BUCKET) in a subprocess; yield the client env."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, __file__, str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://localhost:{port}/", timeout=1)
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("the GCS emulator did not start") from None
                time.sleep(0.2)
        yield client_env(port)
    finally:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def serving_this_process() -> Iterator[dict[str, str]]:
    """`running()`, with its client env also set in os.environ for this process (restored after)."""
    with running() as env:
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield env
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k)
                else:
                    os.environ[k] = v


class _PreconditionFailed(Exception):
    pass


def _serve(port: int) -> None:
    from http import HTTPStatus

    from gcp_storage_emulator import server
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects
    from gcp_storage_emulator.storage import Storage

    state = threading.local()
    insert, delete, create_file = objects.insert, objects.delete, Storage.create_file

    def current_generation(storage, bucket: str, name: str) -> str:
        try:
            return str(storage.get_file_obj(bucket, name)["generation"])
        except NotFound:
            return "0"

    def checked_create_file(self, bucket_name, file_name, *args, **kwargs):
        wanted = getattr(state, "match", None)
        if wanted is not None and current_generation(self, bucket_name, file_name) != wanted:
            raise _PreconditionFailed()
        return create_file(self, bucket_name, file_name, *args, **kwargs)

    def checked_insert(request, response, storage, *args, **kwargs):
        state.match = (request.query.get("ifGenerationMatch") or [None])[0]
        try:
            return insert(request, response, storage, *args, **kwargs)
        except _PreconditionFailed:
            response.status = HTTPStatus.PRECONDITION_FAILED
        finally:
            state.match = None

    def checked_delete(request, response, storage, *args, **kwargs):
        generation = (request.query.get("generation") or [None])[0]
        bucket, name = request.params["bucket_name"], request.params["object_id"]
        if generation is not None and current_generation(storage, bucket, name) != generation:
            response.status = HTTPStatus.NOT_FOUND
            return
        return delete(request, response, storage, *args, **kwargs)

    Storage.create_file = checked_create_file
    objects.insert = checked_insert
    for _, handlers in server.HANDLERS:
        for method, handler in list(handlers.items()):
            if handler is insert:
                handlers[method] = checked_insert
            elif handler is delete:
                handlers[method] = checked_delete
    server.create_server("localhost", port, in_memory=True, default_bucket=BUCKET).run()


if __name__ == "__main__":
    os.environ.setdefault("PROJECT_NUMBER", "1234")
    _serve(int(sys.argv[1]))
