"""What the mock remembers: files, batches, fine-tuning jobs, stored responses, the request log.

In memory by default. With a state directory, every object is also written there as JSON
(file contents as raw bytes beside it), atomically, and read back at start, so files,
batches and jobs survive a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import deque
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from ferryman.files import private_dir, write_private

KINDS = ("files", "batches", "fine_tuning_jobs", "responses", "chat_completions")


_ALPHABET = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
# Maps each byte onto the alphabet; 256 is not a multiple of 62, so a few letters are a little
# likelier than others, which an id (unique, not secret) does not mind.
_ID_TABLE = bytes(_ALPHABET[i % len(_ALPHABET)] for i in range(256))


def new_id(prefix: str, length: int = 24) -> str:
    """``prefix`` + ``length`` random letters and digits, like OpenAI's object ids."""
    return prefix + os.urandom(length).translate(_ID_TABLE).decode()


def _write_atomic(path: Path, data: bytes) -> None:
    write_private(path, data, fsync=False)  # 0600, renamed into place (a crash leaves no torn file)


class ObjectStore:
    """Objects by kind and id, in insertion order, optionally mirrored to a directory."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        self.objects: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in KINDS}
        self.blobs: dict[str, bytes] = {}
        if directory is not None:
            self._load(directory)

    def _load(self, directory: Path) -> None:
        for kind in KINDS:
            folder = directory / kind
            private_dir(folder)
            entries = []
            for path in folder.glob("*.json"):
                try:
                    entries.append(json.loads(path.read_bytes()))
                except (OSError, ValueError):
                    continue  # a half-written file from a crash: the atomic rename never happened
            entries.sort(key=lambda o: (o.get("created_at", 0), o.get("id", "")))
            self.objects[kind] = {o["id"]: o for o in entries if isinstance(o, dict) and "id" in o}
        blob_dir = directory / "blobs"
        private_dir(blob_dir)
        for path in blob_dir.iterdir():
            if not path.name.startswith("."):
                self.blobs[path.name] = path.read_bytes()

    def put(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        self.objects[kind][obj["id"]] = obj
        if self.directory is not None:
            _write_atomic(self.directory / kind / f"{obj['id']}.json", json.dumps(obj).encode())
        return obj

    def get(self, kind: str, object_id: str) -> dict[str, Any] | None:
        return self.objects[kind].get(object_id)

    def delete(self, kind: str, object_id: str) -> dict[str, Any] | None:
        obj = self.objects[kind].pop(object_id, None)
        if obj is not None and self.directory is not None:
            (self.directory / kind / f"{object_id}.json").unlink(missing_ok=True)
        return obj

    def all(self, kind: str) -> list[dict[str, Any]]:
        return list(self.objects[kind].values())

    def put_blob(self, blob_id: str, data: bytes) -> None:
        self.blobs[blob_id] = data
        if self.directory is not None:
            _write_atomic(self.directory / "blobs" / blob_id, data)

    def get_blob(self, blob_id: str) -> bytes | None:
        return self.blobs.get(blob_id)

    def delete_blob(self, blob_id: str) -> None:
        self.blobs.pop(blob_id, None)
        if self.directory is not None:
            (self.directory / "blobs" / blob_id).unlink(missing_ok=True)

    def clear(self) -> None:
        for kind in KINDS:
            for object_id in list(self.objects[kind]):
                self.delete(kind, object_id)
        for blob_id in list(self.blobs):
            self.delete_blob(blob_id)


class RequestLog:
    """The requests the mock received, newest last, for tests and the control API."""

    def __init__(self, size: int) -> None:
        self.entries: deque[dict[str, Any]] = deque(maxlen=size)
        self.counter = 0

    def add(self, entry: dict[str, Any]) -> None:
        self.counter += 1
        entry["seq"] = self.counter
        self.entries.append(entry)

    def since(self, seq: int = 0) -> list[dict[str, Any]]:
        return [e for e in self.entries if e["seq"] > seq]

    def clear(self) -> None:
        self.entries.clear()


class Tasks:
    """Background work (batch and fine-tuning lifecycles) owned by the app."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def cancel_nowait(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def now() -> int:
    return int(time.time())
