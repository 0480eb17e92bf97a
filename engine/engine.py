"""Engine.step(): schedule -> begin (add, activate) -> forward -> decode and commit -> outputs.
Synchronous; one thread owns it. The decoding rules are the model's algorithm's (engine/decoding/)."""
from __future__ import annotations

import itertools
import logging
import random
import time

import torch

from .config import EngineConfig
from .decoding import Verified, for_spec
from .errors import RequestError
from .kv_cache import PagePool, pages_for_budget
from .logprobs import token_logprobs
from .models.decoder import KVCache
from .models.loader import load_model
from .outputs import RequestOutput, StepRecord, StepStats
from .params import DecodeParams
from .runner import Runner
from .scheduler import Scheduler
from .sequence import DraftStats, Knobs, Sequence

log = logging.getLogger("d2f.engine")

# AR checkpoints have no mask token; the placeholder fed at the next position is never attended to.
AR_PLACEHOLDER_ID = 0


class Engine:
    def __init__(self, config: EngineConfig, model=None):
        self.config = config
        if model is None:
            self.spec, self.model = load_model(config.model, config.torch_dtype, config.device, config.lora,
                                               config.quantization)
        else:
            self.spec, self.model = model
        spec = self.spec
        self.max_model_len = min(config.max_model_len or spec.max_positions, spec.max_positions)
        num_pages = pages_for_budget(spec, config.torch_dtype, config.kv_budget_bytes(), config.page_size)
        self.pool = PagePool(num_pages, config.page_size)
        self.kv = KVCache(spec, num_pages * config.page_size, config.torch_dtype, config.device)
        self.algorithm = for_spec(spec)  # the rules of every request not in exact mode
        self.verified = Verified()  # exact mode's (AR-preserving models)
        self.runner = Runner(self.model, self.kv, self.pool)
        self.scheduler = Scheduler(config, self.pool, spec.prompt_causal, spec.shift_logits)
        self.requests: dict[str, Sequence] = {}
        self._order = itertools.count()
        self._seed_rng = random.Random(config.seed)
        self.stats = StepStats(pages_free=self.pool.num_free)

    # ---- requests -------------------------------------------------------------------------
    def resolve_knobs(self, params: DecodeParams) -> Knobs:
        """Fill model defaults in and check the request against this model; RequestError if it cannot run."""
        params.verify()
        spec = self.spec
        block = params.block_size or spec.block_size
        # A pure AR model decodes exactly already; its exact mode is its only mode.
        exact = params.exact and spec.is_d2f
        if exact and not spec.ar_preserving:
            raise RequestError("speed 'exact' needs an AR-preserving model (made by d2f refurbish --ar-preserving): "
                               "in this LLaDA/Dream-style model committed tokens attend to masks, so it has no AR "
                               "predictions to verify drafts against")
        if params.prompt_logprobs is not None and not spec.prompt_causal:
            raise RequestError("this model reads its prompt bidirectionally (as LLaDA and Dream do), so no prompt "
                               "token is predicted from the ones before it and the prompt cannot be scored "
                               "(echo with logprobs needs a model with a causal prompt)")
        if exact:  # any block size: it only sets how many drafts (block_size - 1) a forward proposes
            return Knobs(block_size=block, tau_add=1.0, tau_act=1.0, tau_conf=1.0, max_tokens=params.max_tokens,
                         temperature=_temperature(params.temperature), top_p=float(params.top_p),
                         top_k=params.top_k, stop_ids=_stop_ids(params, spec), exact=True,
                         draft_width=_pick(params.draft_width, spec.draft_width),
                         logprobs=params.logprobs, prompt_logprobs=params.prompt_logprobs)
        if not spec.valid_block_size(block):
            if not spec.is_d2f:
                raise RequestError(f"block_size must be 1 for this autoregressive model, got {block}")
            raise RequestError(f"block_size must be a multiple of the model's training block size "
                               f"{spec.train_block_size}" + (" or 1" if spec.shift_logits else "") + f", got {block}")
        if not spec.is_d2f:  # pure AR: one forced commit per forward, whatever the knobs say
            taus = (1.0, 1.0, 1.0)
        else:
            taus = (_pick(params.tau_add, spec.tau_add), _pick(params.tau_act, spec.tau_act),
                    _pick(params.tau_conf, spec.tau_conf))
        return Knobs(block_size=block, tau_add=taus[0], tau_act=taus[1], tau_conf=taus[2],
                     max_tokens=params.max_tokens, temperature=_temperature(params.temperature),
                     top_p=float(params.top_p), top_k=params.top_k, stop_ids=_stop_ids(params, spec),
                     logprobs=params.logprobs, prompt_logprobs=params.prompt_logprobs)

    def validate(self, prompt_ids: list[int], params: DecodeParams) -> Knobs:
        """Every check add_request makes, without side effects: callers may run it on any thread."""
        knobs = self.resolve_knobs(params)
        if not prompt_ids:
            raise RequestError("prompt must contain at least one token")
        bad = [t for t in prompt_ids if not isinstance(t, int) or not 0 <= t < self.spec.vocab_size]
        if bad:
            raise RequestError(f"prompt token id {bad[0]!r} is outside the vocabulary [0, {self.spec.vocab_size})")
        # Exact mode's windows never reach past max_tokens; block decoding's past its last whole block.
        answer = knobs.max_tokens if knobs.exact else -(-knobs.max_tokens // knobs.block_size) * knobs.block_size
        need = len(prompt_ids) + answer
        if need > self.max_model_len:
            rounded = "" if knobs.exact else ", rounded up to whole blocks"
            raise RequestError(f"prompt ({len(prompt_ids)} tokens) plus max_tokens ({knobs.max_tokens}{rounded}) "
                               f"needs {need} positions; the model's context is {self.max_model_len}")
        capacity = self.pool.num_pages * self.pool.page_size
        what = "prompt plus max_tokens"
        if knobs.exact:  # fallback masks and runner-up candidates take slots past the answer
            need += self.verified.overhang(knobs)
            what += " plus exact mode's extra draft rows"
        if need > capacity:
            raise RequestError(f"{what} needs {need} KV slots but the KV pool holds {capacity}")
        return knobs

    def add_request(self, request_id: str, prompt_ids: list[int], params: DecodeParams) -> None:
        if request_id in self.requests:
            raise RequestError(f"request id {request_id!r} is already running")
        knobs = self.validate(prompt_ids, params)
        gen = None
        if knobs.temperature > 0:
            seed = params.seed if params.seed is not None else self._seed_rng.getrandbits(63)
            gen = torch.Generator(device=self.model.device).manual_seed(seed)
        seq = Sequence(request_id, list(prompt_ids), knobs,
                       mask_id=self.spec.mask_token_id if self.spec.is_d2f else AR_PLACEHOLDER_ID,
                       generator=gen, order=next(self._order), steps=[] if params.record_steps else None,
                       algorithm=self.verified if knobs.exact else self.algorithm)
        if knobs.exact:
            seq.draft_stats = DraftStats()
        self.requests[request_id] = seq
        self.scheduler.add(seq)

    def abort(self, request_id: str) -> RequestOutput | None:
        seq = self.requests.pop(request_id, None)
        if seq is None:
            return None
        self.scheduler.remove(seq)
        return RequestOutput(request_id, [], seq.answer[:seq.emitted], True, "abort",
                             seq.num_forwards, seq.prompt_len)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_work()

    # ---- the loop -------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        t0 = time.perf_counter()
        works = self.scheduler.schedule()
        for work in works:  # the plan's blocks are added and activated now, before the forward
            work.seq.algorithm.begin(work)
        outputs: list[RequestOutput] = []
        committed = 0
        fwd = 0.0
        if works:
            t1 = time.perf_counter()
            logits = self._forward(works)
            if self.model.device.type == "cuda":  # CUDA only: make the timing honest
                torch.cuda.synchronize()
            fwd = time.perf_counter() - t1
            for work, rows in zip(works, logits):
                try:
                    if isinstance(rows, BaseException):
                        raise rows
                    committed += self._advance(work, rows)
                    out = self._output(work.seq)
                except Exception:  # one request's fault fails that request alone
                    log.exception("request %s failed", work.seq.request_id)
                    out = self._fail(work.seq, "internal error while decoding this request")
                if out is not None:
                    outputs.append(out)
        self._record(works, committed, fwd, time.perf_counter() - t0)
        return outputs

    def _forward(self, works) -> list:
        """One packed forward; if it fails, each window alone, so a bad one cannot sink the others."""
        try:
            return self.runner.run(works)
        except Exception:
            if len(works) == 1:
                return [RuntimeError("forward failed")]
        results = []
        for work in works:
            try:
                results.extend(self.runner.run([work]))
            except Exception as exc:
                results.append(exc)
        return results

    def _advance(self, work, rows: torch.Tensor) -> int:
        seq = work.seq
        seq.num_forwards += 1
        n = len(work.predict)
        if work.score:  # row p scores prompt token p + 1
            k = seq.knobs.prompt_logprobs
            seq.prompt_logprobs.extend(token_logprobs(rows[n:], [seq.tokens[p + 1] for p in work.score],
                                                      seq.knobs.temperature, k))
        committed = seq.algorithm.step(work, rows[:n]) if seq.steps is None else self._recorded_step(work, rows[:n])
        # A sequence keeps pages for its next window only: a rejected draft tail (exact mode) gives its
        # pages back at once; block decoding never shrinks, so there this frees nothing.
        self.pool.shrink(seq.pages, seq.end + seq.algorithm.growth(seq))
        return committed

    def _recorded_step(self, work, rows: torch.Tensor) -> int:
        """The algorithm's step, with a StepRecord of what it did for a request that asked for steps."""
        seq = work.seq
        p = seq.prompt_len
        blocks = [(b.start, b.end) for b in seq.blocks[seq.first_active():]] if work.predict else []
        before = [i for s, e in blocks for i in range(s, e) if seq.is_masked[i]]
        seq.record = StepRecord(seq.num_forwards, [(s - p, e - p) for s, e in blocks])
        n = seq.algorithm.step(work, rows)
        record, seq.record = seq.record, None
        # Read off the sequence, so it holds for every algorithm that commits into blocks: a position is final
        # once it is unmasked. A drafting algorithm (no blocks) fills committed itself.
        if blocks:
            record.committed = [(i - p, seq.tokens[i]) for i in before if not seq.is_masked[i]]
            record.masked = [[i - p for i in range(s, e) if seq.is_masked[i]] for s, e in blocks]
        seq.steps.append(record)
        return n

    def _fail(self, seq: Sequence, message: str) -> RequestOutput:
        self.requests.pop(seq.request_id, None)
        self.scheduler.remove(seq)
        return RequestOutput(seq.request_id, [], seq.answer[:seq.emitted], True, "error", seq.num_forwards,
                             seq.prompt_len, error=message)

    def _output(self, seq: Sequence) -> RequestOutput | None:
        answer, reason = seq.algorithm.check_finished(seq)
        if reason is not None:
            self.requests.pop(seq.request_id, None)
            self.scheduler.remove(seq)
            new, seq.emitted = answer[seq.emitted:], len(answer)
            return RequestOutput(seq.request_id, new, answer, True, reason, seq.num_forwards, seq.prompt_len,
                                 queue_seconds=_queue(seq), prompt_logprobs=_prompt_logprobs(seq),
                                 logprobs=_logprobs(seq, len(answer) + (reason == "stop")),  # and the stop token's
                                 steps=_take_steps(seq), draft_stats=seq.draft_stats)
        boundary = max(min(seq.algorithm.emit_boundary(seq), len(answer)), seq.emitted)
        if boundary == seq.emitted and not seq.steps:
            return None
        new, seq.emitted = answer[seq.emitted:boundary], boundary
        return RequestOutput(seq.request_id, new, answer[:boundary], False, None, seq.num_forwards, seq.prompt_len,
                             queue_seconds=_queue(seq), logprobs=_logprobs(seq, boundary),
                             prompt_logprobs=_prompt_logprobs(seq), steps=_take_steps(seq))

    def _record(self, works, committed: int, fwd: float, total: float) -> None:
        s = self.stats
        s.running, s.waiting = len(self.scheduler.running), len(self.scheduler.waiting)
        s.pages_used, s.pages_free = self.pool.num_used, self.pool.num_free
        s.tokens_in_forward = sum(w.end - w.start for w in works)
        s.num_seqs_in_forward = len(works)
        s.tokens_committed = committed
        s.preemptions_total = self.scheduler.num_preemptions
        s.forward_seconds, s.step_seconds = fwd, total

    def generate(self, prompts: list[list[int]], params: DecodeParams | list[DecodeParams]) -> list[RequestOutput]:
        """Run prompts to completion (all batched together); final outputs in prompt order."""
        plist = params if isinstance(params, list) else [params] * len(prompts)
        ids = [f"gen-{next(self._order)}" for _ in prompts]
        for rid, prompt, p in zip(ids, prompts, plist):
            self.add_request(rid, prompt, p)
        final: dict[str, RequestOutput] = {}
        while len(final) < len(ids):
            for out in self.step():
                if out.finished:
                    final[out.request_id] = out
        return [final[rid] for rid in ids]


# Below this, dividing logits by the temperature overflows fp32 (found by fuzzing: 1e-308 gave NaN
# probabilities); such a request is greedy in all but name, so it is decoded greedily.
GREEDY_BELOW = 1e-5


def _temperature(t: float) -> float:
    return 0.0 if t < GREEDY_BELOW else float(t)


def _queue(seq: Sequence) -> float | None:
    return None if seq.admitted is None else seq.admitted - seq.arrival


def _logprobs(seq: Sequence, upto: int) -> list | None:
    """The recorded log-probabilities of answer tokens [0, upto), if the request asked for them."""
    if seq.knobs.logprobs is None:
        return None
    return [seq.logprobs[seq.prompt_len + i] for i in range(upto)]


def _prompt_logprobs(seq: Sequence) -> list | None:
    return None if seq.knobs.prompt_logprobs is None else seq.prompt_logprobs


def _take_steps(seq: Sequence) -> list[StepRecord] | None:
    if seq.steps is None:
        return None
    steps, seq.steps = seq.steps, []
    return steps


def _stop_ids(params: DecodeParams, spec) -> frozenset[int]:
    return frozenset(set(params.stop_token_ids) | (set() if params.ignore_eos else set(spec.eos_token_ids)))


def _pick(value, default):
    return default if value is None else value
