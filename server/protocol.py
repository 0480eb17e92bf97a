"""Request models mirroring OpenAI's (field order as in OpenAI's docs), our extensions below a marker.

Unknown fields are ignored; fields we accept but do not implement are refused with a clear 400.
"""
from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from d2f.engine.logprobs import MAX_LOGPROBS
from d2f.engine.params import MAX_DRAFT_WIDTH, DecodeParams, speed_fields

MAX_N = 16
MAX_STOP = 16
MAX_PROMPTS = 64
MAX_COMPLETION_LOGPROBS = 5  # OpenAI's limit for /v1/completions; chat's top_logprobs goes to MAX_LOGPROBS
# pydantic's lax mode reads true as 1; for these a boolean is always a client bug, so it is a 400.
NUMERIC = ("max_tokens", "max_completion_tokens", "n", "best_of", "seed", "temperature", "top_p",
           "frequency_penalty", "presence_penalty", "speed", "block_size", "tau_add", "tau_act", "tau_conf", "top_k",
           "draft_width", "top_logprobs")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False
    # ---- our extension: a step event per forward (README, "The step stream")
    include_steps: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    def _check_unsupported(self) -> None:
        if self.logit_bias:
            raise ValueError("logit_bias is not supported")
        if self.frequency_penalty or self.presence_penalty:
            raise ValueError("frequency_penalty and presence_penalty are not supported (use 0)")

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def logprob_knobs(self) -> tuple[int | None, int | None]:
        """(alternatives per answer token, per prompt token): None where not asked for."""
        return None, None

    def decode_params(self, max_tokens: int | None) -> DecodeParams:
        """The engine's knobs; explicit tau fields win over the speed preset (exact mode refuses them)."""
        knobs = speed_fields(self.speed) if self.speed is not None else {}
        conf, act = knobs.get("tau_conf"), knobs.get("tau_act")
        logprobs, prompt_logprobs = self.logprob_knobs()
        return DecodeParams(
            max_tokens=max_tokens if max_tokens is not None else 16,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k or 0, seed=self.seed, ignore_eos=self.ignore_eos,
            block_size=self.block_size, tau_add=self.tau_add, draft_width=self.draft_width,
            tau_act=self.tau_act if self.tau_act is not None else act,
            tau_conf=self.tau_conf if self.tau_conf is not None else conf, exact=knobs.get("exact", False),
            logprobs=logprobs, prompt_logprobs=prompt_logprobs,
            record_steps=self.wants_steps())

    def wants_steps(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_steps)

    @field_validator(*NUMERIC, mode="before", check_fields=False)
    @classmethod
    def _not_bool(cls, v):
        if isinstance(v, bool):
            raise ValueError("must be a number, not a boolean")
        return v

    @field_validator("stop", check_fields=False)
    @classmethod
    def _stop(cls, v):
        items = [v] if isinstance(v, str) else (v or [])
        if len(items) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings")
        if any(s == "" for s in items):
            raise ValueError("stop strings must be non-empty")
        return v


class D2FExtensions(_Common):
    """Our fields, below OpenAI's in every request (pydantic orders base-class fields by reversed MRO)."""
    speed: Union[Literal["quality", "balanced", "fast", "exact"], float, None] = None
    block_size: int | None = Field(None, ge=1, le=4096)
    tau_add: float | None = Field(None, ge=0, le=1)
    tau_act: float | None = Field(None, ge=0, le=1)
    tau_conf: float | None = Field(None, ge=0, le=1)
    draft_width: int | None = Field(None, ge=1, le=MAX_DRAFT_WIDTH)  # exact mode: first-draft candidates
    top_k: int | None = Field(None, ge=0, le=1_000_000)
    ignore_eos: bool = False

    @field_validator("speed")
    @classmethod
    def _speed(cls, v):
        if isinstance(v, float) and not 0.0 <= v <= 1.0:
            raise ValueError("speed must be quality, balanced, fast, exact or a number in [0, 1]")
        return v


class _CompletionFields(_Common):
    model: str | None = None
    prompt: Union[str, list[str], list[int], list[list[int]]]
    best_of: int | None = Field(None, ge=1, le=MAX_N)
    echo: bool = False
    frequency_penalty: float | None = Field(0.0, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    logprobs: int | None = Field(None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    max_tokens: int | None = Field(16, ge=0, le=1_000_000)
    n: int = Field(1, ge=1, le=MAX_N)
    presence_penalty: float | None = Field(0.0, ge=-2, le=2)
    seed: int | None = Field(None, ge=0, lt=2**63)
    stop: Union[str, list[str], None] = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    suffix: str | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    user: str | None = None

    @field_validator("logprobs", mode="before")
    @classmethod
    def _logprobs_not_bool(cls, v):
        if isinstance(v, bool):  # chat's logprobs is a boolean; here it counts alternatives
            raise ValueError(f"must be an integer in [0, {MAX_COMPLETION_LOGPROBS}] (alternatives per token), "
                             "not a boolean")
        return v

    @model_validator(mode="after")
    def _supported(self):
        self._check_unsupported()
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens 0 is only valid with echo (it returns, or with logprobs scores, "
                             "the prompt alone)")
        if self.suffix:
            raise ValueError("suffix is not supported")
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of other than n is not supported")
        p = self.prompt
        if isinstance(p, list):
            if not p:
                raise ValueError("prompt must not be empty")
            if len(p) > MAX_PROMPTS and isinstance(p[0], (str, list)):
                raise ValueError(f"at most {MAX_PROMPTS} prompts per request")
            if isinstance(p[0], list) and any(not x for x in p):
                raise ValueError("token-id prompts must not be empty")
        return self

    def logprob_knobs(self) -> tuple[int | None, int | None]:
        return self.logprobs, (self.logprobs if self.echo else None)

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and isinstance(p[0], int):
            return [list(p)]
        return list(p)


class CompletionRequest(D2FExtensions, _CompletionFields):
    pass


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


def _text_parts_only(v):
    """Name the real problem (a non-text part) instead of pydantic's union-branch errors."""
    if isinstance(v, list):
        for part in v:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text":
                raise ValueError(f"only text content parts are supported, got {kind!r}")
    return v


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[ContentPart], None] = None
    name: str | None = None

    _content = field_validator("content", mode="before")(_text_parts_only)

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class _ChatFields(_Common):
    messages: list[ChatMessage] = Field(min_length=1, max_length=1024)
    model: str | None = None
    frequency_penalty: float | None = Field(0.0, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = False
    max_completion_tokens: int | None = Field(None, ge=1, le=1_000_000)
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    n: int = Field(1, ge=1, le=MAX_N)
    presence_penalty: float | None = Field(0.0, ge=-2, le=2)
    response_format: dict | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    stop: Union[str, list[str], None] = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    tools: list | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    top_p: float | None = Field(None, gt=0, le=1)
    user: str | None = None

    @model_validator(mode="after")
    def _supported(self):
        self._check_unsupported()
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if self.tools:
            raise ValueError("tools are not supported")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise ValueError("only response_format type 'text' is supported")
        return self

    def logprob_knobs(self) -> tuple[int | None, int | None]:
        return ((self.top_logprobs or 0) if self.logprobs else None), None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class ChatCompletionRequest(D2FExtensions, _ChatFields):
    pass
