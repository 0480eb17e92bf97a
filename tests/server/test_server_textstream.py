"""Incremental detokenization and stop strings, block by block, on the byte-level test tokenizer
(one token per UTF-8 byte, so a block boundary can fall inside any character)."""
import pytest
from transformers import AutoTokenizer

from d2f.server.textstream import TextStream
from tests.support.server_fixtures import build_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    build_tokenizer(out)
    return AutoTokenizer.from_pretrained(str(out))


def feed(tok, text: str, stop: list[str], block: int) -> tuple[list[str], bool]:
    """Stream text's token ids in blocks, as the engine commits them; the deltas and whether a stop hit."""
    ids = tok.encode(text)
    stream = TextStream(tok, stop)
    deltas = []
    for end in range(block, len(ids) + block, block):
        final = end >= len(ids)
        delta, stopped = stream.update(ids[:min(end, len(ids))], final)
        deltas.append(delta)
        if stopped:
            return deltas, True
    return deltas, False


TEXT = "naïve café → 東京 😀 done"


@pytest.mark.parametrize("block", [1, 2, 3, 5])
def test_multibyte_characters_are_never_split(tok, block):
    assert len(tok.encode("😀")) == 4  # really one token per byte
    deltas, stopped = feed(tok, TEXT, [], block)
    assert "".join(deltas) == TEXT and not stopped
    assert not any("\ufffd" in d for d in deltas)


@pytest.mark.parametrize("block", [1, 2, 4, 7])
def test_stop_string_across_blocks_is_cut_and_never_sent(tok, block):
    text = "alpha END beta END gamma"
    deltas, stopped = feed(tok, text, ["END"], block)
    assert stopped and "".join(deltas) == "alpha "
    assert not any("E" in d for d in deltas)  # not even its first letter went out before it resolved


def test_earliest_of_several_stops_wins(tok):
    deltas, stopped = feed(tok, "one two three", ["three", "two"], 4)
    assert stopped and "".join(deltas) == "one "


def test_held_back_prefix_is_released_when_it_does_not_become_a_stop(tok):
    deltas, stopped = feed(tok, "a STO STOMP x", ["STOP"], 1)
    assert not stopped and "".join(deltas) == "a STO STOMP x"
    deltas, stopped = feed(tok, "ends with ST", ["STOP"], 2)  # the answer ends mid-prefix: flushed at the end
    assert not stopped and "".join(deltas) == "ends with ST"


def test_multibyte_stop_string(tok):
    deltas, stopped = feed(tok, "prix: 5€ net", ["€"], 1)
    assert stopped and "".join(deltas) == "prix: 5"
