"""Stable hashes (no heavy imports): fingerprints of JSON-able mappings (study fingerprints, cache keys) and
the sha256 of files (data files, teacher weights, output caches)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def fingerprint(payload: dict) -> str:
    """Short stable hash of a JSON-able mapping (used as a cache key)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def sha256_file(path: Path | str) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
