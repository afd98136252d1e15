"""The contrast math against plain-Python loops over tokens (float64)."""

import math

import pytest
import torch

from lightreasoner.contrast import log_probs, select_steps, soft_label_kl


def softmax_list(values: list[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def reference_step(expert_row: list[float], amateur_row: list[float], alpha: float):
    """KL(pi_E || pi_A), plausible ids and soft-label weights, one token at a time."""
    p_e, p_a = softmax_list(expert_row), softmax_list(amateur_row)
    kl = sum(pe * (math.log(pe) - math.log(pa)) for pe, pa in zip(p_e, p_a) if pe > 0)
    top = max(p_e)
    ids = [a for a in range(len(p_e)) if p_e[a] >= alpha * top]
    contrast = [math.log(p_e[a]) - math.log(p_a[a]) for a in ids]
    return kl, ids, softmax_list(contrast)


@pytest.mark.parametrize("alpha,beta", [(0.2, 0.4), (0.05, 1.0), (1.0, 0.0)])
def test_select_steps_matches_token_loops(alpha, beta):
    generator = torch.Generator().manual_seed(0)
    rows, vocab, real = 70, 50, 43  # the last 7 rows are padding rows: never part of a distribution
    expert = torch.randn(rows, vocab, generator=generator) * 3
    amateur = torch.randn(rows, vocab, generator=generator) * 3
    kept, kl = select_steps(expert.to(torch.bfloat16), amateur.to(torch.bfloat16), vocab_size=real, alpha=alpha,
                            beta=beta, chunk_size=16)
    expected_kept = []
    for t in range(rows):
        e_row = expert[t, :real].to(torch.bfloat16).double().tolist()
        a_row = amateur[t, :real].to(torch.bfloat16).double().tolist()
        value, ids, weights = reference_step(e_row, a_row, alpha)
        assert kl[t].item() == pytest.approx(value, abs=1e-5, rel=1e-5)
        if value >= beta:
            expected_kept.append((t, value, ids, weights))
    assert [k.step for k in kept] == [t for t, *_ in expected_kept]
    for step, (t, value, ids, weights) in zip(kept, expected_kept):
        assert step.kl == pytest.approx(value, abs=1e-5, rel=1e-5)
        assert step.token_ids == ids
        assert all(i < real for i in step.token_ids)
        assert step.weights == pytest.approx(weights, abs=1e-5)
        assert sum(step.weights) == pytest.approx(1.0, abs=1e-5)


def test_select_steps_rejects_nan():
    expert = torch.zeros(3, 10)
    expert[1, 2] = float("nan")
    with pytest.raises(FloatingPointError):
        select_steps(expert, torch.zeros(3, 10), vocab_size=10, alpha=0.2, beta=0.4)


def test_soft_label_kl_matches_dense_loops():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 30, generator=generator, requires_grad=True)
    real = 26
    label_ids = torch.tensor([[3, 7, 0], [1, 0, 0], [25, 24, 2], [9, 10, 11], [4, 0, 0]])
    label_weights = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.2, 0.3, 0.5], [0.1, 0.1, 0.8],
                                  [1.0, 0.0, 0.0]])
    loss = soft_label_kl(logits, label_ids, label_weights, real)
    for n in range(5):
        p = softmax_list(logits[n, :real].double().tolist())
        expected = sum(w * (math.log(w) - math.log(p[i]))
                       for i, w in zip(label_ids[n].tolist(), label_weights[n].tolist()) if w > 0)
        assert loss[n].item() == pytest.approx(expected, abs=1e-5)
    # Gradient: the dense formula on a full label row gives the same gradient.
    loss.sum().backward()
    dense_logits = logits.detach().clone().requires_grad_(True)
    dense = torch.zeros(5, real, dtype=torch.float64)
    for n in range(5):
        for i, w in zip(label_ids[n].tolist(), label_weights[n].tolist()):
            dense[n, i] += w
    logp = log_probs(dense_logits, real).double()
    dense_loss = (torch.xlogy(dense, dense) - dense * logp).sum()
    dense_loss.backward()
    assert torch.allclose(logits.grad, dense_logits.grad, atol=1e-6)
    assert logits.grad[:, real:].abs().max() == 0  # padding rows take no part
