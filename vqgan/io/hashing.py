"""The project's hashes: sha256 of files (recorded next to every downloaded or converted weight) and short,
stable hashes of configs and weights (state-folder names, "are these weights bit-identical")."""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any

CHUNK = 1 << 20  # 1 MiB reads


def sha256_file(path: str | os.PathLike, chunk: int = CHUNK) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def config_hash(*parts: Any, length: int = 12) -> str:
    """A short stable hash of JSON-able parts (config section, data manifest): the name of a run's state folder."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def state_dict_hash(state: dict) -> str:
    """sha256 over a state dict's names and bytes: equal hashes mean bit-identical weights."""
    import torch  # here, not at the top: the data side hashes files without loading torch

    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().flatten().clone()  # flat copy: channels_last strides hash the same
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
