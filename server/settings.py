"""ServerSettings: what `d2f serve` adds around the engine. Each field's default and help are written here
once; the flags (and their D2F_<FLAG> environment variables) are generated from them."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from d2f.engine.config import EngineConfig


@dataclass
class ServerSettings:
    engine: EngineConfig
    host: str = field(default="127.0.0.1", metadata={"help": "address to bind (default loopback only)"})
    port: int = field(default=8000, metadata={"help": "port"})
    served_model_name: str | None = field(default=None, metadata={
        "help": "model name clients use (default: the directory name)"})
    api_keys: list[str] = field(default_factory=list, metadata={
        "flag": "api-key", "help": "require 'Authorization: Bearer KEY' on /v1 (comma-separated for several keys)"})
    max_queue: int = field(default=256, metadata={"help": "running plus waiting requests before new ones get 429"})
    max_body_bytes: int = field(default=4 << 20, metadata={"help": "largest request body; larger ones get 413"})
    default_max_tokens: int = field(default=1024, metadata={"help": "chat completions that name no max_tokens"})
    request_timeout: float = field(default=600.0, metadata={
        "help": "seconds before a non-streamed request is aborted"})
    drain_timeout: float = field(default=30.0, metadata={"help": "seconds in-flight requests may finish after SIGTERM"})
    allowed_origins: list[str] = field(default_factory=list, metadata={
        "help": "comma-separated CORS origins (default: CORS off)"})
    protect_metrics: bool = field(default=False, metadata={"help": "require the API key on /metrics too"})
    no_playground: bool = field(default=False, metadata={"help": "turn off the /playground page (it answers 404)"})
    log_requests: bool = field(default=False, metadata={"help": "log prompts and outputs (off by default)"})
    log_level: str = field(default="info", metadata={"help": "debug | info | warning | error"})

    @property
    def model_name(self) -> str:
        return self.served_model_name or Path(self.engine.model).name
