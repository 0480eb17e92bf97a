"""Training data: JSONL pairs and self-distillation through our engine, reproducible from the seed."""
import json

import pytest

from d2f.refurbish.cli import main
from d2f.refurbish.data import DataError, Example, fit, load_examples, load_prompts
from d2f.refurbish.selfdistill import generate_answers
from tests.support import checkpoints as ck

PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14], [20, 21], [30, 31, 32]]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return ck.write_llama(tmp_path_factory.mktemp("sd") / "llama", ck.hf_llama(seed=51))


def _run(teacher, **kw):
    kw = {"max_tokens": 8, "temperature": 1.0, "seed": 7, "keep_truncated": True, "kv_cache_memory": 1 << 22, **kw}
    rows, dropped = generate_answers(str(teacher), PROMPTS, **kw)
    return [r["answer_ids"] for r in rows], dropped


def test_self_distillation_is_reproducible_from_its_seed(teacher):
    first, _ = _run(teacher)
    assert _run(teacher)[0] == first
    assert _run(teacher, chunk=2)[0] == first  # the same whatever the batching
    assert _run(teacher, seed=8)[0] != first
    assert all(a[-1] == ck.EOS_ID for a in first)  # every answer ends in EOS


def test_truncated_answers_are_dropped_unless_kept(teacher):
    kept, dropped = _run(teacher, temperature=0.0)
    rows, dropped_now = generate_answers(str(teacher), PROMPTS, max_tokens=8, seed=7, kv_cache_memory=1 << 22)
    assert len(rows) + dropped_now == len(PROMPTS) and dropped == 0
    for row in rows:
        assert row["finish_reason"] == "stop" and row["answer_ids"][-1] == ck.EOS_ID
        assert ck.EOS_ID not in row["answer_ids"][:-1]


def test_data_command_writes_training_jsonl(teacher, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt_ids": p}) + "\n" for p in PROMPTS))
    out = tmp_path / "sd.jsonl"
    args = ["refurbish", "data", "--teacher", str(teacher), "--prompts", str(prompts), "--out", str(out),
            "--max-tokens", "6", "--temperature", "0.8", "--seed", "3", "--keep-truncated", "--kv-cache-mb", "4"]
    assert main(args) == 0
    text = out.read_text()
    assert main(args) == 0 and out.read_text() == text
    examples = load_examples(str(out), None, ck.EOS_ID)
    assert [e.prompt for e in examples] == PROMPTS
    assert all(e.answer[-1] == ck.EOS_ID for e in examples)


def test_jsonl_pairs_and_errors(tmp_path):
    good = tmp_path / "pairs.jsonl"
    good.write_text('{"prompt_ids": [4, 5], "answer_ids": [6, 2]}\n\n{"prompt_ids": [7], "answer_ids": [8]}\n')
    assert load_examples(str(good), None, 2) == [Example([4, 5], [6, 2]), Example([7], [8])]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt_ids": [4]}\n')
    with pytest.raises(DataError, match="bad.jsonl:1"):
        load_examples(str(bad), None, 2)
    text = tmp_path / "t.jsonl"
    text.write_text('{"prompt": "hi", "answer": "there"}\n')
    with pytest.raises(DataError, match="tokenizer"):
        load_examples(str(text), None, 2)
    with pytest.raises(DataError, match="not found"):
        load_prompts(tmp_path / "missing.txt")


def test_fit_pads_eos_answers_to_whole_blocks_and_keeps_the_prompt_end():
    assert fit(Example([1, 2, 3], [4, 5, 2]), 64, 4, eos_id=2) == ([1, 2, 3, 4, 5, 2, 2], 3)
    assert fit(Example([1, 2, 3], [4, 5, 6]), 64, 4, eos_id=2) == ([1, 2, 3, 4, 5, 6], 3)  # text: no EOS added
    ids, plen = fit(Example(list(range(10, 30)), [4, 5, 2]), 8, 4, eos_id=2)
    assert plen == 4 and ids[:4] == [26, 27, 28, 29] and len(ids) == 8
