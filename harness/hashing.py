"""Short stable hashes of JSON-able mappings: study fingerprints and cache keys (no heavy imports)."""

from __future__ import annotations

import hashlib
import json


def fingerprint(payload: dict) -> str:
    """Short stable hash of a JSON-able mapping (used as a cache key)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
