"""The CPU LM head (replicate/finetune/cpu_lm_head.py) against TRL's own ChunkedLogProbFunction:
the same outputs and the same gradients, chunked differently."""
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from trl.kernels import ChunkedLogProbFunction

from replicate.finetune import cpu_lm_head

OUTPUTS = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


def _run(fn, hidden, weight, bias, targets, temperature, softcap, scale):
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    b = None if bias is None else bias.clone().requires_grad_()
    out = fn.apply(h, w, b, targets, temperature, 64, softcap, scale, OUTPUTS)
    log_probs, entropy = out[0], out[1]
    (-log_probs.sum() + 0.3 * entropy.sum()).backward()  # both gradients that TRL's loss and metrics can ask for
    return out, (h.grad, w.grad, None if b is None else b.grad)


@pytest.mark.parametrize("temperature,softcap,scale,with_bias", [
    (1.0, None, 1.0, False),   # the common case: a plain head
    (0.7, 30.0, 0.5, True),    # every transform TRL applies (Gemma-2-style softcap, logit scale, temperature)
])
def test_same_outputs_and_gradients_as_trl(monkeypatch, temperature, softcap, scale, with_bias):
    gen = torch.Generator().manual_seed(0)
    n, hid, vocab = 37, 16, 300
    hidden = torch.randn(n, hid, generator=gen, dtype=torch.float64) * 2
    weight = torch.randn(vocab, hid, generator=gen, dtype=torch.float64)
    bias = torch.randn(vocab, generator=gen, dtype=torch.float64) if with_bias else None
    targets = torch.randint(0, vocab, (n,), generator=gen)
    # position 3's target is its argmax (top-1); position 4's target ties an earlier token (not top-1)
    logits = hidden @ weight.t()
    targets[3] = int(logits[3].argmax())
    k = int(logits[4].argmax())
    assert k > 0
    weight[k - 1] = weight[k]
    targets[4] = k
    monkeypatch.setattr(cpu_lm_head, "TILE_ELEMENTS", 10 * vocab)  # 4 token chunks: the chunking is exercised
    ours, our_grads = _run(cpu_lm_head.cpu_log_prob_function(), hidden, weight, bias, targets, temperature, softcap, scale)
    theirs, their_grads = _run(ChunkedLogProbFunction, hidden, weight, bias, targets, temperature, softcap, scale)
    for name, a, b in zip(("log_probs", *OUTPUTS), ours, theirs):
        if name == "is_top1":
            assert torch.equal(a, b) and bool(a[3]) and not bool(a[4])
        else:
            torch.testing.assert_close(a.double(), b.double(), rtol=1e-4, atol=2e-5, msg=name)  # fp32 sums
    for name, a, b in zip(("hidden", "weight", "bias"), our_grads, their_grads):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5, msg=f"grad {name}")


def test_bf16_autocast_stays_close_to_fp32():
    """Under bf16 autocast (the CPU training path) the GEMMs run in bf16 and sum the whole
    vocabulary in one GEMM: log-probabilities within bf16 rounding of the fp32 ones."""
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(50, 64, generator=gen)
    weight = torch.randn(4000, 64, generator=gen) * 0.1
    targets = torch.randint(0, 4000, (50,), generator=gen)
    fn = cpu_lm_head.cpu_log_prob_function()
    exact = fn.apply(hidden, weight, None, targets, 1.0, 64, None, 1.0, ("entropy",))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = hidden.clone().requires_grad_()
        approx = fn.apply(h, weight, None, targets, 1.0, 64, None, 1.0, ("entropy",))
        approx[0].sum().backward()
    assert approx[2] is None and approx[4] is None  # only what was asked for
    torch.testing.assert_close(approx[0], exact[0], rtol=0.02, atol=0.05)
    torch.testing.assert_close(approx[1], exact[1], rtol=0.02, atol=0.05)
    assert h.grad.dtype == torch.float32 and torch.isfinite(h.grad).all()


def test_trl_calls_reach_it_on_a_cpu():
    """use_cpu_lm_head swaps the name TRL's fused forward calls, for CPU tensors only."""
    import trl.trainer.utils as trl_utils

    cpu_lm_head.use_cpu_lm_head()
    cpu_lm_head.use_cpu_lm_head()  # twice is harmless: the original stays reachable
    fn = trl_utils._ChunkedLogProbFunction
    assert fn.original is ChunkedLogProbFunction and trl_utils._use_triton(torch.device("cpu"))
    assert not trl_utils._use_triton(torch.device("meta"))  # other devices: TRL's own decision
    h = torch.randn(5, 8, requires_grad=True)
    out = fn.apply(h, torch.randn(20, 8), None, torch.zeros(5, dtype=torch.long), 1.0, 8, None, 1.0, ("is_top1",))
    out[0].sum().backward()
    assert out[1] is None and out[4].dtype == torch.bool and h.grad is not None
