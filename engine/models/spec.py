"""ModelSpec: the one architecture description every family's config is read into."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class ModelSpec:
    family: str  # "llada" | "dream" | "llama" | "qwen2"
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_eps: float
    rope_theta: float
    max_positions: int
    qkv_bias: bool = False
    tie_embeddings: bool = False
    # Dream and AR models predict token i from the hidden state at i-1.
    shift_logits: bool = True
    # AR models read their prompt causally; LLaDA/Dream see the prompt as one bidirectional block.
    prompt_causal: bool = False
    mask_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    # Block size the D2F model was trained with; inference block sizes are multiples of it.
    train_block_size: int = 1
    # Recommended knobs (a D2F checkpoint may carry its own in config.json under "d2f").
    block_size: int = 1
    tau_add: float = 0.1
    tau_act: float = 0.95
    tau_conf: float = 0.9
    # AR-preserving D2F (a refurbished AR model): a clean position attends only to earlier clean
    # positions, so its state, and the logit predicting the leftmost mask, are exactly the AR model's;
    # that leftmost mask is committed every forward; an adapter acts only at mask positions.
    ar_preserving: bool = False
    # Exact mode's default draft width (greedy): the drafter's top tokens run for a forward's first draft.
    draft_width: int = 1

    @property
    def is_d2f(self) -> bool:
        return self.mask_token_id is not None

    def valid_block_size(self, block_size: int) -> bool:
        if block_size == 1 and self.shift_logits:
            return True  # exact AR decoding
        if not self.is_d2f:
            return False
        return block_size % self.train_block_size == 0

    def projection_shapes(self) -> dict[str, tuple[int, int]]:
        """[out, in] of each layer's projection weights, in checkpoint order: q k v o gate up down."""
        h, d, i = self.hidden_size, self.head_dim, self.intermediate_size
        return {"q": (self.num_heads * d, h), "k": (self.num_kv_heads * d, h), "v": (self.num_kv_heads * d, h),
                "o": (h, self.num_heads * d), "gate": (i, h), "up": (i, h), "down": (h, i)}

    def projection_shape(self, name: str) -> tuple[int, int]:
        return self.projection_shapes()[name]
