"""Where the trained toy model lives: `model.id=toy` loads this directory (trained by `jobs/toy.py train`)."""

from __future__ import annotations

from pathlib import Path

WEIGHTS = Path(__file__).resolve().parent / "trained"


def trained() -> Path:
    """The trained toy model's directory; an error saying how to make it when it is missing."""
    if not (WEIGHTS / "model_index.json").is_file():
        raise ValueError("model.id=toy: the trained toy model is missing (pipeline/toy/trained); train it with "
                         "`python jobs/toy.py train` (about 40 minutes on 2 CPU cores)")
    return WEIGHTS
