"""The checkpoint's own tokenizer, when it ships one (LLaDA/Dream test checkpoints often do not)."""
from __future__ import annotations

from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def load_tokenizer(model_dir):
    if not any((Path(model_dir) / f).exists() for f in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer  # slow import; only when a tokenizer exists

    return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
