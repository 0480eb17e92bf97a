"""Random mixed requests and a staggered run with aborts: the batching tests' shared harness."""
import random

from d2f.engine.params import DecodeParams
from tests.support.checkpoints import VOCAB
from tests.support.engines import make_engine


def random_requests(seed: int, n: int, blocks=(4, 8)):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        prompt = [rng.randrange(3, VOCAB - 1) for _ in range(rng.randrange(1, 14))]
        block = rng.choice(blocks)
        params = DecodeParams(max_tokens=rng.randrange(1, 20), block_size=block, ignore_eos=rng.random() < 0.5,
                              tau_add=rng.choice([0.0, 0.1, 0.5]), tau_act=rng.choice([0.5, 0.9, 0.95]),
                              tau_conf=rng.choice([0.1, 0.5, 0.9]))
        if rng.random() < 0.3:
            params.temperature, params.seed, params.top_k = 0.8, rng.randrange(1000), 30
        out.append((f"r{seed}-{i}", prompt, params))
    return out


def run_alone(path, reqs, **engine_kw):
    eng = make_engine(path, **engine_kw)
    return {rid: eng.generate([p], params)[0].token_ids for rid, p, params in reqs}


def run_staggered(eng, reqs, abort_ids=(), join_every=2):
    """Requests join a few steps apart; some are aborted mid-flight. Returns final tokens per request."""
    pending, done = list(reqs), {}
    step = 0
    while pending or eng.has_unfinished():
        if pending and step % join_every == 0:
            rid, prompt, params = pending.pop(0)
            eng.add_request(rid, prompt, params)
        for out in eng.step():
            if out.finished:
                done[out.request_id] = out
        step += 1
        for rid in abort_ids:  # abort mid-flight: after its first forward
            seq = eng.requests.get(rid)
            if seq is not None and seq.num_forwards >= 1:
                out = eng.abort(rid)
                assert out.finish_reason == "abort" and out.finished
                done[rid] = out
    return done
