"""What was actually loaded, for each sample's metadata and the card: never a pin that was not honoured.

A hub id: the revision asked for and the commit it resolved to (read from the local Hugging Face
cache, no network). A local directory (the tiny stand-ins included): no revision (a pin cannot apply
to files on disk; a configured one is reported and dropped) and a sha256 over its JSON files (the
configs, scheduler and tokenizer settings), which says which architecture and settings ran.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def loaded_from(key: str, model_id: str, path: str, revision: str | None, filename: str) -> dict[str, Any]:
    """{revision, commit} for a hub id; {revision: None, local_config_sha256} for a local directory.
    `key` is the config key (for the warning), `filename` a file the repository always has."""
    if Path(path).is_dir():
        if revision:
            log.warning("%s.revision=%s was not applied: %s is a local directory (recorded: its files' hash)",
                        key, revision, model_id)
        return {"revision": None, "local_config_sha256": config_sha256(Path(path))}
    return {"revision": revision, "commit": hub_commit(path, filename, revision)}


def config_sha256(root: Path) -> str:
    """sha256 over the relative paths and bytes of every .json file under `root` (not the weights)."""
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*.json") if p.is_file()):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def hub_commit(repo_id: str, filename: str, revision: str | None) -> str | None:
    """The commit a hub id resolved to, from the local HF cache; None when it cannot be told."""
    try:
        from huggingface_hub import try_to_load_from_cache

        p = try_to_load_from_cache(repo_id, filename, revision=revision)
        if isinstance(p, str):
            return hub_commit_from_path(Path(p))
    except Exception:  # noqa: BLE001 - provenance is best effort; the revision asked for is recorded anyway
        pass
    return None


def hub_commit_from_path(path: Path) -> str | None:
    parts = Path(path).parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else None
