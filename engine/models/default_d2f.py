"""The default model as a D2F model: the AR SmolLM2 checkpoint plus the mask adapter shipped in this package.

The adapter (engine/models/smollm2_d2f/) was trained by scripts/refurbish_smollm2.sh; the base weights are
never changed by it, so the D2F directory in the cache links the converted AR checkpoint and adds a config
with the "d2f" section and the adapter. Rebuilt whenever the shipped adapter changes.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from .checkpoint import link_or_copy
from .default_model import FORMAT_VERSION, build_once, ensure_default_model

SHIPPED = Path(__file__).parent / "smollm2_d2f"
DIR_NAME = "smollm2-135m-instruct-d2f"
MARKER = ".d2f-adapter.json"
ADAPTER = "mask_adapter.safetensors"


def available() -> bool:
    return (SHIPPED / ADAPTER).is_file() and (SHIPPED / "d2f.json").is_file()


def _fingerprint() -> str:
    h = hashlib.sha256()
    for name in (ADAPTER, "d2f.json"):
        h.update((SHIPPED / name).read_bytes())
    return h.hexdigest()


def ensure_default_d2f_model(progress=print) -> Path:
    if not available():
        raise FileNotFoundError(f"{SHIPPED}: the D2F adapter of the default model is not in this installation")
    base = ensure_default_model(progress)
    # The base's format is part of the stamp: its files are linked here, so a rebuilt base needs new links.
    want = f"{_fingerprint()}-base{FORMAT_VERSION}"

    def build(tmp: Path) -> None:
        for f in base.iterdir():
            if f.is_file() and f.name != "config.json" and not f.name.startswith("."):
                link_or_copy(f, tmp / f.name)
        config = json.loads((base / "config.json").read_text())
        config["d2f"] = json.loads((SHIPPED / "d2f.json").read_text())
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        shutil.copy2(SHIPPED / ADAPTER, tmp / ADAPTER)
        (tmp / MARKER).write_text(json.dumps({"adapter": want}))
        progress("default D2F model assembled")

    return build_once(DIR_NAME, lambda target: _stamp(target) == want, build, progress)


def _stamp(target: Path) -> str | None:
    try:
        return json.loads((target / MARKER).read_text())["adapter"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
