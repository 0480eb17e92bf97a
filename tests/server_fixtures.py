"""A tiny checkpoint with a real (tiny) tokenizer, so the HTTP layer runs end to end in seconds."""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tests import checkpoints as ck

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
SPECIALS = ["<unk>", "<s>", "<|end|>", "<|mask|>", "<|user|>", "<|assistant|>", "<|system|>"]


def build_tokenizer(out: Path) -> int:
    """Byte-level tokenizer: every UTF-8 string round-trips; returns the vocabulary size."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|end|>", bos_token="<s>", unk_token="<unk>",
                                   mask_token="<|mask|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out))
    return len(vocab)


def write_tiny_server_model(out: Path, d2f: bool = False, seed: int = 7) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    vocab = build_tokenizer(out)
    model = ck.hf_llama(seed=seed, tie=True, vocab=vocab)
    model.config.eos_token_id = SPECIALS.index("<|end|>")
    ck.write_llama(out, model, mask_id=SPECIALS.index("<|mask|>") if d2f else None,
                   d2f={"train_block_size": 2, "block_size": 4} if d2f else None)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["vocab_size"] == vocab
    return out
