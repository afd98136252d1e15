"""What the contrast finds on a pair, computed from a sample file: ``lightreasoner inspect``.

The KL spread and the kept share; which kinds of token the kept steps fall on (:func:`token_class`);
what the soft labels ask of the expert (weight on its own token, labels preferring another token,
the most frequent changes); and, given the expert's own next-token entropies, how far the kept
positions are the expert's most uncertain ones (Jaccard overlap, Spearman rank correlation). It ends
with a plain reading: sentences generated from those numbers, each stating the threshold it used.
"""

from __future__ import annotations

import math
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .controls import highest_entropy_steps
from .errors import LightReasonerError
from .layout import EXAMPLES_FILE, PUBLISHED_EXAMPLES_FILE
from .tables import _render

TOKEN_CLASSES = ("digits/operators", "words", "markup/whitespace")
DIGITS = set("0123456789")
OPERATORS = set("+-*/=^%<>×÷·")
NUMBER_PUNCTUATION = set(".,()")  # decimal points, thousands separators, brackets

# The reading's thresholds (each sentence names the one it used).
CONFIRMS_OWN_TOKEN = 0.9  # mean label weight on the expert's own token from which the labels mostly confirm it
OVER_REPRESENTED = 1.5  # a token class's share of kept steps, as a multiple of its share of all steps (or 1/1.5)
RANKS_ALIKE = 0.5  # Spearman(KL, entropy) from which the two rank the steps alike (at -0.5: in opposite orders)
RANKS_UNRELATED = 0.2  # ... and within +-0.2 of 0, nearly unrelated


def token_class(text: str, special: bool = False) -> str:
    """The class of a decoded token, judged on its text without surrounding whitespace:

    * ``markup/whitespace``: a special token, whitespace only, a LaTeX command (a backslash first), or
      one character repeated (markdown such as ``**``, ``##``, ``---``);
    * ``words``: any letter;
    * ``digits/operators``: only digits, the operators ``+ - * / = ^ % < > × ÷ ·`` and the ``. , ( )``
      that go with numbers, at least one of them a digit or an operator (``48``, `` +``, ``3.5``, ``=``);
    * ``markup/whitespace`` again for the rest: punctuation alone, braces, other symbols.
    """
    stripped = text.strip()
    repeated = len(stripped) > 1 and len(set(stripped)) == 1 and not stripped.isdigit()
    if special or not stripped or stripped.startswith("\\") or repeated:
        return "markup/whitespace"
    if any(c.isalpha() for c in stripped):
        return "words"
    if set(stripped) <= DIGITS | OPERATORS | NUMBER_PUNCTUATION and set(stripped) & (DIGITS | OPERATORS):
        return "digits/operators"
    return "markup/whitespace"


# ----------------------------------------------------------------------------------- the numbers


def kept_step_statistics(records: Sequence[dict[str, Any]], beta: float) -> dict[str, float]:
    """What the contrast found in a sample file: how the KL of every step is spread, how many steps
    pass ``beta``, and what the soft labels of the kept steps ask of the expert.

    ``label_disagrees`` is the share of kept steps whose soft label puts most weight on a token
    other than the expert's own greedy token (``completion_ids[step]``): there the training moves
    the expert's choice, elsewhere it only reshapes the distribution around the same choice.
    """
    kl = np.asarray([v for r in records for v in r.get("kl", [])], dtype=float)
    kept = [(r, s) for r in records for s in r["steps"]]
    own_weight = [s["weights"][s["ids"].index(r["completion_ids"][s["step"]])] for r, s in kept]
    disagrees = [s["ids"][int(np.argmax(s["weights"]))] != r["completion_ids"][s["step"]] for r, s in kept]
    quantile = (lambda q: float(np.quantile(kl, q))) if kl.size else (lambda q: 0.0)
    return {"questions": len(records), "steps": int(kl.size), "kept_steps": len(kept),
            "kept_share": float((kl >= beta).mean()) if kl.size else 0.0,
            "kl_mean": float(kl.mean()) if kl.size else 0.0,
            "kl_median": quantile(0.5), "kl_p90": quantile(0.9), "kl_p99": quantile(0.99),
            "kept_per_question": len(kept) / max(len(records), 1),
            "questions_without_kept_step": sum(not r["steps"] for r in records),
            "plausible_set_size": float(np.mean([len(s["ids"]) for _, s in kept])) if kept else 0.0,
            "own_token_weight": float(np.mean(own_weight)) if kept else 0.0,
            "label_disagrees": float(np.mean(disagrees)) if kept else 0.0}


def kept_step_rows(stats: dict[str, float], beta: float) -> list[list[str]]:
    return [
        ["steps (all trajectories)", f"{stats['steps']:,}"],
        ["KL(expert || amateur): mean / median / p90 / p99",
         f"{stats['kl_mean']:.3f} / {stats['kl_median']:.3f} / {stats['kl_p90']:.3f} / {stats['kl_p99']:.3f}"],
        [f"steps with KL >= {beta} (kept)", f"{stats['kept_steps']:,} ({stats['kept_share']:.1%})"],
        ["kept steps per question", f"{stats['kept_per_question']:.1f}"],
        ["questions without a kept step", f"{stats['questions_without_kept_step']:,}"],
        ["plausible tokens per kept step (mean)", f"{stats['plausible_set_size']:.2f}"],
        ["soft-label weight on the expert's own token (mean)", f"{stats['own_token_weight']:.3f}"],
        ["kept steps whose soft label prefers another token", f"{stats['label_disagrees']:.1%}"],
    ]


def token_statistics(records: Sequence[dict[str, Any]], tokenizer: Any, top: int = 10) -> dict[str, Any]:
    """Steps and kept steps per token class; the most kept tokens (with how often the token occurs);
    the most frequent label changes (the expert's token -> the label's top token)."""
    special = set(tokenizer.all_special_ids)
    texts: dict[int, str] = {}

    def text(token: int) -> str:
        if token not in texts:
            texts[token] = tokenizer.decode([token])
        return texts[token]

    classes = {name: {"steps": 0, "kept": 0} for name in TOKEN_CLASSES}
    occurrences, kept, changes = Counter(), Counter(), Counter()
    for record in records:
        kept_steps = {s["step"]: s for s in record["steps"]}
        for step, token in enumerate(record["completion_ids"]):
            name = token_class(text(token), token in special)
            classes[name]["steps"] += 1
            occurrences[token] += 1
            if step in kept_steps:
                classes[name]["kept"] += 1
                kept[token] += 1
                label = kept_steps[step]
                preferred = label["ids"][int(np.argmax(label["weights"]))]
                if preferred != token:
                    changes[token, preferred] += 1
    by_count = lambda item: (-item[1], item[0])  # noqa: E731 - most first, then by id: a stable order
    return {"token_classes": classes,
            "top_kept_tokens": [{"token": text(t), "id": t, "kept": n, "occurrences": occurrences[t]}
                                for t, n in sorted(kept.items(), key=by_count)[:top]],
            "top_label_changes": [{"expert": text(a), "label": text(b), "expert_id": a, "label_id": b, "count": n}
                                  for (a, b), n in sorted(changes.items(), key=by_count)[:top]]}


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 0, ties sharing their average rank."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    _, group, counts = np.unique(values, return_inverse=True, return_counts=True)
    return (np.bincount(group, weights=ranks) / counts)[group]


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation (Pearson's on average ranks); None when either side is constant."""
    ra, rb = _ranks(np.asarray(a, dtype=float)), _ranks(np.asarray(b, dtype=float))
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def random_jaccard(steps: int, count: int) -> float:
    """Expected Jaccard index between a fixed set of ``count`` of ``steps`` positions and as many
    drawn uniformly at random: the overlap I is hypergeometric, and J = I / (2 count - I)."""
    if count == 0:
        return 0.0
    total = math.comb(steps, count)
    return sum(math.comb(count, i) * math.comb(steps - count, count - i) * i / (2 * count - i)
               for i in range(1, count + 1)) / total


def entropy_overlap(records: Sequence[dict[str, Any]], entropies: Sequence[Sequence[float]]) -> dict[str, Any]:
    """How far the kept positions are the expert's most uncertain ones: per trajectory with a kept
    step, the Jaccard index between its kept steps and as many highest-entropy steps (as the entropy
    control picks them), averaged, beside the same for random positions; and Spearman's rank
    correlation between KL and entropy over every step."""
    jaccard, expected, kl, entropy = [], [], [], []
    for record, values in zip(records, entropies, strict=True):
        kept = {s["step"] for s in record["steps"]}
        if len(record.get("kl", [])) == len(values):
            kl += record["kl"]
            entropy += list(values)
        if kept:
            uncertain = set(highest_entropy_steps(values, len(kept)))
            jaccard.append(len(kept & uncertain) / len(kept | uncertain))
            expected.append(random_jaccard(len(values), len(kept)))
    return {"trajectories": len(jaccard), "jaccard": float(np.mean(jaccard)) if jaccard else None,
            "jaccard_random": float(np.mean(expected)) if expected else None, "spearman": spearman(kl, entropy)}


# ----------------------------------------------------------------------------------- the reading


def reading(findings: dict[str, Any]) -> list[str]:
    """Plain sentences from the numbers, each stating the threshold it used."""
    stats, beta = findings["contrast"], findings["beta"]
    sentences = [f"The contrast keeps {stats['kept_share']:.1%} of {stats['steps']:,} steps (KL >= {beta}); half "
                 f"the steps have a KL below {stats['kl_median']:.3f}, one in a hundred above {stats['kl_p99']:.2f}."]
    if stats["kept_steps"]:
        own, moved = stats["own_token_weight"], stats["label_disagrees"]
        if own >= CONFIRMS_OWN_TOKEN:
            sentences.append(f"At the kept steps the soft label mostly confirms the expert's own token: mean weight "
                             f"{own:.2f} on it (at least {CONFIRMS_OWN_TOKEN}), {moved:.1%} of the labels prefer "
                             "another token; these labels differ little from the one-hot labels of the format-only "
                             "control.")
        else:
            sentences.append(f"At the kept steps the soft label moves weight off the expert's own token: mean weight "
                             f"{own:.2f} on it (below {CONFIRMS_OWN_TOKEN}), and {moved:.1%} of the labels prefer "
                             "another token.")
    classes = findings.get("token_classes")
    if classes and stats["kept_steps"]:
        all_steps = sum(c["steps"] for c in classes.values())
        over, under = [], []
        for name, counts in classes.items():
            kept_share, step_share = counts["kept"] / stats["kept_steps"], counts["steps"] / all_steps
            described = f"{name} ({kept_share:.1%} of kept steps against {step_share:.1%} of all steps)"
            if step_share and kept_share >= OVER_REPRESENTED * step_share:
                over.append(described)
            elif step_share and kept_share * OVER_REPRESENTED <= step_share:
                under.append(described)
        if over:
            sentences.append(f"Kept steps fall more often than their share (at least {OVER_REPRESENTED} times) on "
                             + " and on ".join(over) + ".")
        if under:
            sentences.append(f"Kept steps fall less often than their share (at most 1/{OVER_REPRESENTED} of it) on "
                             + " and on ".join(under) + ".")
        if not over and not under:
            sentences.append("Kept steps fall on digits/operators, words and markup/whitespace about as often as "
                             f"these occur (no class at {OVER_REPRESENTED} times its share of all steps, or 1/"
                             f"{OVER_REPRESENTED} of it).")
    overlap = findings.get("entropy")
    if overlap is None:
        sentences.append("The expert's own entropies are not at hand: `lightreasoner inspect SAMPLES --model EXPERT` "
                         "computes them (one teacher-forced pass of the expert).")
    elif overlap["spearman"] is not None and overlap["jaccard"] is not None:
        rho, jaccard, chance = overlap["spearman"], overlap["jaccard"], overlap["jaccard_random"]
        both = (f"the kept positions and as many of the expert's highest-entropy positions overlap with Jaccard "
                f"{jaccard:.2f}, against {chance:.2f} for random positions")
        if rho >= RANKS_ALIKE:
            sentences.append(f"KL and the expert's own entropy rank the steps alike (Spearman {rho:.2f}, at least "
                             f"{RANKS_ALIKE}): the amateur marks largely the steps where the expert itself is unsure; "
                             f"{both}. The entropy-one-hot control tests whether the amateur is needed to find them.")
        elif rho <= -RANKS_ALIKE:
            sentences.append(f"KL and the expert's own entropy rank the steps in opposite orders (Spearman {rho:.2f}, "
                             f"at most -{RANKS_ALIKE}): the amateur marks steps where the expert is sure; {both}.")
        elif abs(rho) < RANKS_UNRELATED:
            sentences.append(f"KL and the expert's own entropy are nearly unrelated (Spearman {rho:.2f}, within "
                             f"+-{RANKS_UNRELATED}): the amateur marks steps the expert's uncertainty does not single "
                             f"out; {both}.")
        else:
            sentences.append(f"KL and the expert's own entropy are related but far from the same (Spearman {rho:.2f}, "
                             f"between {RANKS_UNRELATED} and {RANKS_ALIKE} in size); {both}.")
    return sentences


# ----------------------------------------------------------------------------------- entry points


def cached_entropies(samples: Path, records: Sequence[dict[str, Any]]) -> tuple[list[list[float]], str] | None:
    """The expert's per-step entropies of ``records`` from a control's examples in the sample file's
    folder (``*/examples.jsonl``, or ``*/examples.outputs.jsonl`` in a published folder), when one
    holds every trajectory (same id and tokens); with a description of where they came from."""
    from .sampling import iter_samples

    examples = [*samples.parent.glob(f"*/{EXAMPLES_FILE}"), *samples.parent.glob(f"*/{PUBLISHED_EXAMPLES_FILE}")]
    for path in sorted(examples):
        try:  # a cache to look in: a file that is not one is passed over
            _, header, lines = iter_samples(path)
            teacher = header.get("control", {}).get("teacher_forced")
            found = {r.get("id"): r for _, r in lines if "entropy" in r} if teacher else {}
        except LightReasonerError:
            continue
        if not teacher:
            continue
        matches = [found.get(r["id"]) for r in records]
        if all(m is not None and m["completion_ids"] == r["completion_ids"] for m, r in zip(matches, records)):
            where = path.relative_to(samples.parent)
            return [m["entropy"] for m in matches], f"expert {teacher['expert']} (float32), cached in {where}"
    return None


def inspect_samples(samples: str | Path, *, tokenizer: Any = None, entropies: Sequence[Sequence[float]] | None = None,
                    entropy_source: str | None = None, top: int = 10) -> dict[str, Any]:
    """Everything :mod:`lightreasoner.inspection` computes for a sample file, and its reading.
    Token classes and tokens need ``tokenizer``; the overlap with the expert's uncertainty needs
    ``entropies`` (per trajectory, one per step), else they are looked for in the folder's controls."""
    from .sampling import read_samples

    samples = Path(samples)
    header, records = read_samples(samples)
    settings = header.get("settings", {})
    findings: dict[str, Any] = {"samples": str(samples), "expert": header.get("expert"),
                                "amateur": header.get("amateur"), "alpha": settings.get("alpha"),
                                "beta": settings.get("beta"), "contrast": kept_step_statistics(records,
                                                                                                settings.get("beta"))}
    if tokenizer is not None:
        findings.update(token_statistics(records, tokenizer, top))
    if entropies is None and (cached := cached_entropies(samples, records)) is not None:
        entropies, entropy_source = cached
    if entropies is not None:
        if [len(e) for e in entropies] != [len(r["completion_ids"]) for r in records]:
            raise LightReasonerError(f"{samples}: the entropies do not cover the trajectories step for step")
        findings["entropy"] = {"source": entropy_source, **entropy_overlap(records, entropies)}
    else:
        findings["entropy"] = None
    findings["reading"] = reading(findings)
    return findings


def findings_tables(findings: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """Title, header and rows of each table of the findings (the text output and the report)."""
    stats, beta = findings["contrast"], findings["beta"]
    tables = [("What the contrast finds", ["quantity", "value"], kept_step_rows(stats, beta))]
    if findings.get("token_classes"):
        classes = findings["token_classes"]
        all_steps = max(sum(c["steps"] for c in classes.values()), 1)
        tables.append(("Kept steps by kind of token (inspection.token_class)",
                       ["class", "all steps", "kept steps", "share of kept", "kept of its steps"],
                       [[name, f"{c['steps']:,} ({c['steps'] / all_steps:.1%})", f"{c['kept']:,}",
                         f"{c['kept'] / max(stats['kept_steps'], 1):.1%}", f"{c['kept'] / max(c['steps'], 1):.1%}"]
                        for name, c in classes.items()]))
        tables.append(("Most kept tokens", ["token", "kept", "occurrences", "kept of its occurrences"],
                       [[repr(t["token"]), f"{t['kept']:,}", f"{t['occurrences']:,}",
                         f"{t['kept'] / t['occurrences']:.1%}"] for t in findings["top_kept_tokens"]]))
        tables.append(("Most frequent label changes (the expert's token -> the label's top token)",
                       ["change", "kept steps"], [[f"{c['expert']!r} -> {c['label']!r}", f"{c['count']:,}"]
                                                  for c in findings["top_label_changes"]]))
    overlap = findings.get("entropy")
    if overlap:
        number = lambda value: "-" if value is None else f"{value:.3f}"  # noqa: E731
        tables.append((f"Kept positions and the expert's own uncertainty ({overlap['source']})", ["quantity", "value"],
                       [["trajectories with a kept step", f"{overlap['trajectories']:,}"],
                        ["Jaccard: kept vs as many highest-entropy positions (mean)", number(overlap["jaccard"])],
                        ["Jaccard: kept vs as many random positions (expected)", number(overlap["jaccard_random"])],
                        ["Spearman rank correlation of KL and entropy (all steps)", number(overlap["spearman"])]]))
    return tables


def findings_text(findings: dict[str, Any], width: int = 100) -> str:
    """The findings as plain-text tables, then the reading; titles and sentences wrapped at ``width``
    columns, as the tables fit in them."""
    title = (f"{findings['samples']}: expert {findings['expert']}, amateur {findings['amateur']}, "
             f"alpha {findings['alpha']}, beta {findings['beta']}")
    parts = [textwrap.fill(title, width), ""]
    for name, header, rows in findings_tables(findings):
        parts += [textwrap.fill(name, width), _render(header, rows) if rows else "(none)", ""]
    parts += ["Reading"] + [textwrap.fill(sentence, width, initial_indent="- ", subsequent_indent="  ")
                            for sentence in findings["reading"]]
    return "\n".join(parts)
