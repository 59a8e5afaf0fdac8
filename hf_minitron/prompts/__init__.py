"""The built-in prompt set: 2,533 varied prompts for teacher-generated training data, shipped as package data.

``builtin.jsonl`` holds one record ``{"id", "kind", "prompt"}`` per line in a fixed shuffled order (every kind in
every slice, so the last rows make a representative held-out split). It is built by :mod:`.build` from lists of
concepts, activities, subjects, comparisons, situations, words, programming tasks, word problems and short seed
passages and story openings, all written for this package (no copied text). ``generate-data`` uses it when
``prompts="builtin"``; at its defaults (temperature 0.7, top-p 0.9, at most 256 new tokens) SmolLM2-135M-Instruct
answered the first 32 prompts with 149 tokens on average, so the whole set gives about 380k tokens of answers.
"""

from __future__ import annotations

from pathlib import Path

BUILTIN_FILE = Path(__file__).with_name("builtin.jsonl")


def builtin_prompts() -> list[dict]:
    """The built-in prompt records, in their fixed order."""
    from ..data import load_records

    return load_records(BUILTIN_FILE)


__all__ = ["BUILTIN_FILE", "builtin_prompts"]
