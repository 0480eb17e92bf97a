"""The exactness checks the engine is built on, shared by the CPU tests and the GPU tier (tests/gpu), which
run them on other devices and dtypes: cached == recomputed and batched == alone."""
from d2f.engine.params import DecodeParams
from tests.support.batching import random_requests, run_alone, run_staggered
from tests.support.checkpoints import EOS_ID, MASK_ID
from tests.support.engines import make_engine
from tests.support.reference_d2f import reference_decode

# Block sizes each tiny family decodes with in the batching checks (llama_d2f trains with block 2).
FAMILY_BLOCKS = {"llada": (4, 8), "dream": (1, 4, 8), "llama_d2f": (1, 2, 4)}


def assert_cached_equals_recompute(eng, prompt: list[int], *, block: int, tau_add: float, tau_act: float,
                                   tau_conf: float) -> None:
    """The engine's cached, packed, paged decode gives the plain recompute decoder's tokens, in no more
    forwards, with the right finish reason."""
    params = DecodeParams(max_tokens=3 * block + 1, block_size=block, tau_add=tau_add, tau_act=tau_act,
                          tau_conf=tau_conf, ignore_eos=True, stop_token_ids=[EOS_ID])
    out = eng.generate([prompt], params)[0]
    ref, ref_forwards = reference_decode(eng.model, prompt, block=block, tau_add=tau_add, tau_act=tau_act,
                                         tau_conf=tau_conf, max_tokens=params.max_tokens, mask_id=MASK_ID,
                                         stop_ids={EOS_ID})
    assert out.token_ids == ref
    assert out.num_forwards <= ref_forwards
    assert out.finish_reason == ("stop" if len(ref) < params.max_tokens else "length")


def assert_batched_equals_alone(path, family: str, *, seed: int, n: int, abort=(), join_every: int = 2,
                                **engine_kw) -> None:
    """n random requests staggered into one engine (those at the indices in abort aborted mid-flight) get
    exactly the tokens each gets alone, and every KV page comes back."""
    reqs = random_requests(seed=seed, n=n, blocks=FAMILY_BLOCKS[family])
    alone = run_alone(path, reqs, **engine_kw)
    eng = make_engine(path, **engine_kw)
    aborted = {reqs[i][0] for i in abort}
    done = run_staggered(eng, reqs, abort_ids=aborted, join_every=join_every)
    if aborted:
        assert sum(done[rid].finish_reason == "abort" for rid in aborted) >= 1
    for rid, _, _ in reqs:
        if rid not in aborted:
            assert done[rid].token_ids == alone[rid], rid
    assert eng.pool.num_free == eng.pool.num_pages
