"""The LightReasoner contrast, as pure tensor functions (the method: docs/METHOD.md).

For one step with expert distribution pi_E and amateur distribution pi_A over the shared
vocabulary:

    D        = KL(pi_E || pi_A)                              (step kept when D >= beta)
    V        = { a : pi_E(a) >= alpha * max_b pi_E(b) }      (plausible set)
    v(a)     = softmax_{a in V}(log pi_E(a) - log pi_A(a))    (soft label, 0 outside V)
    loss     = KL(v || pi_theta) = sum_{a in V} v(a) (log v(a) - log pi_theta(a))

All functions take raw logits over (at least) ``vocab_size`` rows and use only the first
``vocab_size`` of them: rows past the tokenizer's length (Qwen's padding rows) are no token and
never enter a distribution. Everything is computed in float32 whatever the model's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KeptStep:
    """One kept step of a trajectory: the label for position ``step`` (predicting y_step)."""

    step: int
    kl: float
    token_ids: list[int]
    weights: list[float]


def log_probs(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """float32 log-softmax over the first ``vocab_size`` rows of the last dimension."""
    return torch.log_softmax(logits[..., :vocab_size].float(), dim=-1)


def kl_divergence(logp_expert: torch.Tensor, logp_amateur: torch.Tensor) -> torch.Tensor:
    """KL(pi_E || pi_A) per row; terms with pi_E(a) = 0 contribute 0."""
    return torch.sum(logp_expert.exp() * (logp_expert - logp_amateur), dim=-1)


def plausible_mask(logp_expert: torch.Tensor, alpha: float) -> torch.Tensor:
    """Tokens whose expert probability is at least ``alpha`` times the row's maximum."""
    probs = logp_expert.exp()
    return probs >= alpha * probs.max(dim=-1, keepdim=True).values


def soft_labels(logp_expert: torch.Tensor, logp_amateur: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax of the contrast ``log pi_E - log pi_A`` restricted to ``mask``; 0 outside it."""
    scores = (logp_expert - logp_amateur).masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1)


def plausible_distribution(logp_expert: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The expert's own distribution restricted to ``mask`` and renormalised; 0 outside it."""
    return torch.softmax(logp_expert.masked_fill(~mask, float("-inf")), dim=-1)


def entropy(logp: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each row's distribution; zero-probability tokens contribute 0."""
    return torch.special.entr(logp.exp()).sum(dim=-1)


def select_steps(
    expert_logits: torch.Tensor,
    amateur_logits: torch.Tensor,
    *,
    vocab_size: int,
    alpha: float,
    beta: float,
    chunk_size: int = 32,
) -> tuple[list[KeptStep], torch.Tensor]:
    """Contrast one trajectory: row t of both ``[T, V]`` inputs are the logits at state s_t.

    Returns the kept steps (sparse soft labels) and the float32 KL of every step. Rows are
    processed in chunks so that no more than ``chunk_size`` vocabulary-sized float32 rows
    are alive at once.
    """
    if expert_logits.shape[0] != amateur_logits.shape[0]:
        raise ValueError("expert and amateur logits cover different numbers of steps")
    kept: list[KeptStep] = []
    all_kl = []
    for start in range(0, expert_logits.shape[0], chunk_size):
        logp_e = log_probs(expert_logits[start:start + chunk_size], vocab_size)
        logp_a = log_probs(amateur_logits[start:start + chunk_size], vocab_size)
        kl = kl_divergence(logp_e, logp_a)
        if not torch.isfinite(kl).all():
            raise FloatingPointError("non-finite KL: the models produced NaN or infinite logits")
        all_kl.append(kl)
        rows = torch.nonzero(kl >= beta).flatten()
        if rows.numel() == 0:
            continue
        mask = plausible_mask(logp_e[rows], alpha)
        labels = soft_labels(logp_e[rows], logp_a[rows], mask)
        for row, row_mask, row_labels in zip(rows.tolist(), mask, labels):
            ids = torch.nonzero(row_mask).flatten()
            kept.append(KeptStep(start + row, float(kl[row]), ids.tolist(), row_labels[ids].tolist()))
    return kept, torch.cat(all_kl) if all_kl else torch.zeros(0)


def soft_label_kl(logits: torch.Tensor, label_ids: torch.Tensor, label_weights: torch.Tensor,
                  vocab_size: int) -> torch.Tensor:
    """Per-step KL(v || pi_theta) from sparse labels, without vocabulary-sized label rows.

    ``logits``: ``[N, V]`` model logits at the kept positions. ``label_ids``/``label_weights``:
    ``[N, K]``, each row padded with weight 0 (any valid id). Returns ``[N]``.
    """
    logp = log_probs(logits, vocab_size).gather(-1, label_ids)
    weights = label_weights.float()
    return torch.sum(torch.xlogy(weights, weights) - weights * logp, dim=-1)
