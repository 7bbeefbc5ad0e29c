"""TRL's fused LM head, made fast on a CPU: the vocabulary projection in bf16, in chunks of tokens.

TRL's SFTTrainer scores the supervised positions with `ChunkedLogProbFunction`: per-token
log-probabilities (and entropy, top-1) of `hidden @ weight.T` without materializing all the logits,
in tiles of 32K vocabulary columns. Its torch fallback, what runs without Triton, took two thirds
of each LoRA step of gemma-3-270m (262K vocabulary) on a 2-core Xeon (torch profiler), because:

- its backward adds every tile's gradient GEMM into an fp32 accumulator with fp32 inputs
  (`_addmm_fp32`: a CPU has no bf16 GEMM with an fp32 output), and fp32 GEMMs run ~4x slower
  than bf16 ones on a CPU with AMX;
- it makes a dozen elementwise passes over each [tokens x 32K] fp32 tile, each into a new tensor
  of hundreds of MB, which glibc maps afresh and the kernel faults in page by page (half the
  elementwise time was page faults: 2 of the fine-tune's 5 minutes were system time).

`CpuLogProbFunction` computes the same outputs with the same autograd contract (tested against
TRL's), chunked over tokens instead, each chunk against the whole vocabulary:
- each GEMM sums over the whole vocabulary inside its own fp32 accumulator and is rounded once,
  so it can run in bf16 (TRL accumulates in fp32 to avoid rounding every vocabulary tile's
  product; one GEMM over the whole vocabulary has nothing to round in between);
- the statistics take a few in-place passes (max, exp, sum; a dot product for the entropy) in a
  workspace of three [tokens x V] buffers (at most 640 MiB, 256 tokens of a 262K vocabulary) kept
  from step to step and freed when training ends.
Measured: 2.05 s instead of 6.75 s for one step's head (benchmarks/cpu_lm_head.py).

    use_cpu_lm_head()   # before the SFTTrainer is built; a no-op on a machine with CUDA
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

TILE_ELEMENTS = 1 << 26  # logits per token chunk: 256 tokens of a 262K vocabulary
OPTIONAL_OUTPUTS = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")  # TRL's order, after log_probs


def use_cpu_lm_head() -> None:
    """On a machine without CUDA: TRL's fused LM head scores only the supervised positions, with
    this module's function. (TRL scores every position where it has no Triton, to keep shapes static
    for compilers; eager CPU training has no compiler, so prompt and padding positions can skip the
    vocabulary: same loss, for short answers a fraction of the work.)"""
    import torch
    import trl.trainer.utils as trl_utils

    if torch.cuda.is_available() or not hasattr(trl_utils, "_ChunkedLogProbFunction"):
        return
    original = getattr(trl_utils._ChunkedLogProbFunction, "original", trl_utils._ChunkedLogProbFunction)
    use_triton = getattr(trl_utils._use_triton, "original", trl_utils._use_triton)

    def compact(device) -> bool:  # only the `compact` decision reads this name there; other devices as TRL decides
        return device.type == "cpu" or use_triton(device)

    compact.original = use_triton
    trl_utils._use_triton = compact

    class Dispatch:
        """TRL calls `_ChunkedLogProbFunction.apply(...)`: CPU tensors here, others to TRL's."""

        @staticmethod
        def apply(hidden, *args):
            fn = cpu_log_prob_function() if hidden.device.type == "cpu" else original
            return fn.apply(hidden, *args)

    Dispatch.original = original
    trl_utils._ChunkedLogProbFunction = Dispatch


@functools.cache
def cpu_log_prob_function():
    """The autograd Function (built on first use: importing this module does not import torch)."""
    import torch

    class _CpuLogProbFunction(torch.autograd.Function):
        """As TRL's ChunkedLogProbFunction.apply(hidden [N, H], weight [V, H], bias [V] | None,
        targets [N], temperature, chunk_size (unused: chunks are by tokens here), softcap,
        logit_scale, outputs) -> (log_probs, entropy, log_sum_sq_probs, mean_logits, is_top1), the
        optional ones None unless named in `outputs`; gradients for log_probs and entropy."""

        @staticmethod
        def forward(ctx, hidden, weight, bias, targets, temperature, chunk_size, final_logit_softcapping=None,
                    logit_scale=1.0, outputs=OPTIONAL_OUTPUTS):
            ctx.set_materialize_grads(False)  # entropy is usually logged only: no gradient to compute for it
            dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else hidden.dtype
            ctx.dtype, ctx.transform = dtype, (1.0 / temperature, final_logit_softcapping, logit_scale)
            n, vocab = hidden.shape[0], weight.shape[0]
            want = {name: name in outputs for name in OPTIONAL_OUTPUTS}
            f32 = {"dtype": torch.float32, "device": hidden.device}
            log_probs, log_z = torch.empty(n, **f32), torch.empty(n, **f32)
            entropy = torch.empty(n, **f32) if want["entropy"] else None
            log_sum_sq = torch.empty(n, **f32) if want["log_sum_sq_probs"] else None
            mean_logits = torch.empty(n, **f32) if want["mean_logits"] else None
            is_top1 = torch.empty(n, dtype=torch.bool, device=hidden.device) if want["is_top1"] else None
            w = weight.to(dtype)  # once per call, not per chunk (fp32 master weights under bf16 autocast)
            with torch.autocast("cpu", enabled=False):
                for s, e in _chunks(n, vocab):
                    z, _, ws = _logits(hidden[s:e], w, bias, dtype, ctx.transform)
                    if is_top1 is not None:  # argmax: the first maximum, so a tie with an earlier token is not top-1
                        is_top1[s:e] = z.argmax(-1) == targets[s:e]
                    if mean_logits is not None:
                        mean_logits[s:e] = z.mean(-1)
                    target = z.gather(-1, targets[s:e, None]).squeeze(-1)
                    # log-sum-exp in place (torch.logsumexp would allocate two more [tokens, V] tensors)
                    top = z.amax(-1)
                    shifted = z.sub_(top[:, None])
                    p = torch.exp(shifted, out=ws.p[:e - s])
                    total = p.sum(-1)
                    lz = top + torch.log(total)
                    log_z[s:e] = lz
                    log_probs[s:e] = target - lz
                    if entropy is not None or log_sum_sq is not None:
                        log_p = shifted.sub_(torch.log(total)[:, None])
                        p.div_(total[:, None])
                        if entropy is not None:  # sum of p log p: no cancellation between two large numbers
                            entropy[s:e] = -torch.linalg.vecdot(p, log_p)
                        if log_sum_sq is not None:
                            log_sum_sq[s:e] = torch.log(torch.linalg.vecdot(p, p))
            ctx.save_for_backward(hidden, weight, bias, targets, log_z, log_z if entropy is None else entropy)
            ctx.mark_non_differentiable(*(x for x in (log_sum_sq, mean_logits, is_top1) if x is not None))
            return log_probs, entropy, log_sum_sq, mean_logits, is_top1

        @staticmethod
        def backward(ctx, grad_log_probs, grad_entropy, *_):
            from trl.trainer.utils import maybe_gather_lm_head_ctx

            hidden, weight, bias, targets, log_z, entropy = ctx.saved_tensors
            with maybe_gather_lm_head_ctx(weight, bias):  # ZeRO-3: the full weight, as TRL's backward
                return _backward(ctx, hidden, weight, bias, targets, log_z, entropy, grad_log_probs, grad_entropy)

    def _backward(ctx, hidden, weight, bias, targets, log_z, entropy, grad_log_probs, grad_entropy):
        """The gradients (as TRL's backward returns them), chunk by chunk in the workspace."""
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        inv_t, _, logit_scale = ctx.transform
        n, vocab = hidden.shape[0], weight.shape[0]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32) if need_weight else None
        grad_bias = torch.zeros(vocab, dtype=torch.float32) if need_bias else None
        w = weight.to(ctx.dtype)
        with torch.autocast("cpu", enabled=False):
            for s, e in _chunks(n, vocab):
                z, (h, tanh), ws = _logits(hidden[s:e], w, bias, ctx.dtype, ctx.transform)
                log_p = z.sub_(log_z[s:e, None])
                grad = torch.exp(log_p, out=ws.p[:e - s])  # p, made the gradient in place below
                if grad_entropy is not None:  # d entropy / dz_j = -p_j (log p_j + entropy): before p is overwritten
                    d_entropy = grad_entropy[s:e, None].float() * grad * (log_p + entropy[s:e, None])
                if grad_log_probs is None:
                    grad.zero_()
                else:  # d log p_target / dz_j = 1[j = target] - p_j
                    g = grad_log_probs[s:e, None].float()
                    grad.mul_(-g).scatter_add_(-1, targets[s:e, None], g)
                if grad_entropy is not None:
                    grad -= d_entropy
                if inv_t * logit_scale != 1.0:
                    grad *= inv_t * logit_scale
                if tanh is not None:
                    grad *= 1 - tanh * tanh
                grad = ws.low[:e - s].copy_(grad) if ctx.dtype != torch.float32 else grad
                if grad_hidden is not None:
                    grad_hidden[s:e] = (grad @ w).to(hidden.dtype)
                if grad_weight is not None:  # fp32 across chunks, as TRL: no rounding per chunk
                    grad_weight.addmm_(grad.t().float(), h.float())
                if grad_bias is not None:
                    grad_bias += grad.sum(0, dtype=torch.float32)
        return (grad_hidden,
                grad_weight.to(weight.dtype) if grad_weight is not None else None,
                grad_bias.to(bias.dtype) if grad_bias is not None else None,
                None, None, None, None, None, None)

    return _CpuLogProbFunction


def _chunks(n: int, vocab: int):
    step = max(1, TILE_ELEMENTS // max(1, vocab))
    return ((s, min(s + step, n)) for s in range(0, n, step))


def _logits(hidden, w, bias, dtype, transform):
    """fp32 logits [tokens, V] of one chunk after TRL's transform (logit scale, softcap, 1/temperature),
    the GEMM in `dtype` (`w` is the weight in it already); (hidden in `dtype`, tanh of the softcap or
    None) for the backward; and the workspace the logits live in."""
    import torch

    inv_t, softcap, logit_scale = transform
    h = hidden.to(dtype)
    n, vocab = h.shape[0], w.shape[0]
    ws = _workspace(n, vocab, dtype, h.device)
    z = ws.z[:n]
    if dtype == torch.float32:
        torch.mm(h, w.t(), out=z)
    else:  # the GEMM writes `dtype`; the statistics need fp32
        z.copy_(torch.mm(h, w.t(), out=ws.low[:n]))
    if bias is not None:
        z += bias.float()
    if logit_scale != 1.0:
        z *= logit_scale
    tanh = None
    if softcap is not None:
        tanh = torch.tanh(z / softcap)
        torch.mul(tanh, softcap, out=z)
    if inv_t != 1.0:
        z *= inv_t
    return z, (h, tanh), ws


@dataclass
class _Workspace:
    z: object     # fp32 [rows, V]: the logits, then log p
    p: object     # fp32 [rows, V]: p, then the logits' gradient
    low: object   # `dtype` [rows, V]: the GEMM's output, then the gradient the backward GEMM reads


_kept: dict = {}


def _workspace(rows: int, vocab: int, dtype, device) -> _Workspace:
    """Buffers for a chunk of `rows` tokens, kept from step to step (grown when a chunk is larger):
    allocated anew, tensors this large are mmapped and every page is faulted in again (glibc),
    which cost as much as the arithmetic (docs/benchmarks.md)."""
    import torch

    key = (vocab, dtype, str(device))
    ws = _kept.get(key)
    if ws is None or ws.z.shape[0] < rows:
        _kept.clear()  # one model trains at a time: keep one workspace
        ws = _kept[key] = _Workspace(*(torch.empty(rows, vocab, dtype=d, device=device)
                                       for d in (torch.float32, torch.float32, dtype)))
    return ws


def release_workspace() -> None:
    """Free the kept buffers (training is over)."""
    _kept.clear()
