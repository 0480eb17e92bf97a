"""Named models: the embedded default model as AR or as D2F; any other name is a checkpoint directory."""
from __future__ import annotations

import sys

AR_DEFAULT = "smollm2"
D2F_DEFAULT = "smollm2-d2f"
# The D2F default replaces the AR one only once it meets the quality bar (see README, "Models").
DEFAULT_IS_D2F = False
SERVED_NAMES = {AR_DEFAULT: "smollm2-135m-instruct", D2F_DEFAULT: "smollm2-135m-instruct-d2f"}


def default_name() -> str:
    from . import default_d2f

    return D2F_DEFAULT if DEFAULT_IS_D2F and default_d2f.available() else AR_DEFAULT


def served_name(path: str | None) -> str | None:
    """The name a default model is served under; None for a checkpoint directory (its folder name)."""
    return SERVED_NAMES.get(path or default_name())


def resolve_model(path: str | None) -> str:
    """A checkpoint directory for a model name, converting the embedded model on first use."""
    name = path or default_name()
    progress = lambda m: print(m, file=sys.stderr)  # noqa: E731
    if name == AR_DEFAULT:
        from .default_model import ensure_default_model

        return str(ensure_default_model(progress=progress))
    if name == D2F_DEFAULT:
        from .default_d2f import ensure_default_d2f_model

        return str(ensure_default_d2f_model(progress=progress))
    return name
