"""Every `d2f refurbish` flag either works in the chosen mode or is refused in one line (exit 2), never
silently ignored."""
import json

import pytest

from d2f.refurbish.cli import main
from tests.support import checkpoints as ck


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("flags")
    prompts = root / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt_ids": p}) + "\n" for p in ([5, 6, 7], [8, 9])))
    return {"llama": ck.write_llama(root / "llama", ck.hf_llama(seed=61)),
            "llada": ck.write_llada(root / "llada", ck.hf_llama(seed=62), block=4),
            "prompts": prompts, "root": root}


def _refused(capsys, args, *flags):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for flag in flags:
        assert flag in err[0], (flag, err[0])


@pytest.mark.parametrize("extra", [["--device", "cpu"], ["--chat"], ["--mask-ratio", "0.3,0.6"],
                                   ["--lora-alpha", "4"], ["--lora-dropout", "0"], ["--hard-weight", "0.5"],
                                   ["--save", "merged"], ["--student-init", "x"], ["--full"]])
def test_ar_preserving_refuses_what_it_does_not_use(files, tmp_path, capsys, extra):
    _refused(capsys, ["refurbish", "--ar-preserving", "--teacher", str(files["llama"]), "--data", "d.jsonl",
                      "--out", str(tmp_path / "o"), *extra], "--ar-preserving does not use", extra[0])
    assert not (tmp_path / "o").exists()


def test_ar_preserving_refuses_a_dtype_it_cannot_train_in(files, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt_ids": [5, 6, 7], "answer_ids": [8, 9, 10, 11, 2]}) + "\n")
    _refused(capsys, ["refurbish", "--ar-preserving", "--teacher", str(files["llama"]), "--data", str(data),
                      "--out", str(tmp_path / "o"), "--mask-token", "7", "--dtype", "fp16"], "fp32 or bf16")
    assert not (tmp_path / "o").exists()


def test_training_refuses_ar_preserving_only_and_misplaced_flags(files, tmp_path, capsys):
    base = ["refurbish", "--teacher", str(files["llada"]), "--data", "d.jsonl", "--out", str(tmp_path / "o")]
    _refused(capsys, base + ["--anchors", "8"], "--anchors")
    _refused(capsys, base + ["--fresh-optimizer"], "--fresh-optimizer goes with --init-from")
    _refused(capsys, base + ["--hard-weight", "0.5"], "--hard-weight", "AR (Llama/Qwen2) teacher only")
    _refused(capsys, base + ["--mask-token", "new"], "--mask-token", "AR (Llama/Qwen2) teacher only")


@pytest.mark.parametrize("extra", [["--lora-rank", "4"], ["--steps", "3"], ["--ar-preserving"], ["--data", "x"],
                                   ["--block-size", "4"]])
def test_data_refuses_training_flags(files, tmp_path, capsys, extra):
    _refused(capsys, ["refurbish", *extra, "data", "--teacher", str(files["llama"]), "--prompts",
                      str(files["prompts"]), "--out", str(tmp_path / "sd.jsonl")],
             "d2f refurbish data does not use", extra[0])
    assert not (tmp_path / "sd.jsonl").exists()


def test_data_flags_given_before_data_are_used(files, tmp_path):
    common = ["--prompts", str(files["prompts"]), "--max-tokens", "4", "--temperature", "1.0", "--keep-truncated",
              "--kv-cache-mb", "4"]
    before, after, other = tmp_path / "before.jsonl", tmp_path / "after.jsonl", tmp_path / "other.jsonl"
    assert main(["refurbish", "--teacher", str(files["llama"]), "--seed", "5", "--out", str(before), "data",
                 *common]) == 0
    assert main(["refurbish", "data", "--teacher", str(files["llama"]), "--seed", "5", "--out", str(after),
                 *common]) == 0
    assert main(["refurbish", "data", "--teacher", str(files["llama"]), "--seed", "6", "--out", str(other),
                 *common]) == 0
    assert before.read_text() == after.read_text() != other.read_text()


def test_data_needs_its_inputs(capsys):
    _refused(capsys, ["refurbish", "data", "--teacher", "t"], "--prompts, --out required")
