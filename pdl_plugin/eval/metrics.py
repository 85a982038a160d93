"""Pure metric functions for `pdl-eval`: text in, numbers out. No model, no framework state.

Word-level metrics (distinct-n, repetition) split on whitespace after lower-casing; token-level metrics
(self-information, rare-token recall) work on token ids of the model's tokenizer and a training frequency table.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Iterable, Sequence

import numpy as np


# Training-frequency buckets of the validation CE: (name, smallest count, largest count or None for no bound)
FREQUENCY_BUCKETS = (("unseen", 0, 0), ("1-2", 1, 2), ("3-10", 3, 10), ("11-100", 11, 100), (">100", 101, None))


def words(text: str) -> list[str]:
    """Lower-cased whitespace tokens: the unit of distinct-n and repetition."""
    return text.lower().split()


def ngrams(tokens: Sequence, n: int) -> list[tuple]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


# ---- overlap with the reference ----------------------------------------------------------------------------------


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F1 (Google's `rouge-score`, Porter stemming), in [0, 1]. An empty pair scores 0."""
    from rouge_score import rouge_scorer

    _same_length(predictions, references)
    if not predictions:
        return float("nan")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return float(np.mean([scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]))


# ---- diversity and degeneration ------------------------------------------------------------------------------------


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Corpus-level distinct-n (Li et al. 2016): distinct word n-grams / all word n-grams over all texts.

    NaN when the texts hold no n-gram at all.
    """
    grams = [gram for text in texts for gram in ngrams(words(text), n)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def repetition_rate(texts: Iterable[str], n: int = 3) -> float:
    """Mean within-text repetition (seq-rep-n, Welleck et al. 2019): per text, 1 - distinct n-grams / n-grams.

    0 means no word n-gram occurs twice in the same text; texts shorter than n words are skipped (NaN if all are).
    """
    rates = []
    for text in texts:
        grams = ngrams(words(text), n)
        if grams:
            rates.append(1.0 - len(set(grams)) / len(grams))
    return float(np.mean(rates)) if rates else float("nan")


# ---- information under the training frequency table ---------------------------------------------------------------


def self_information_bits(counts, epsilon: float) -> np.ndarray:
    """Per vocabulary row, ``-log2(freq + epsilon)`` with ``freq = count / total``: the self-information of a token
    under the training table, smoothed by the same epsilon as the PDL weights (a token unseen in training scores
    ``-log2(epsilon)``)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        raise ValueError("The frequency table counts no token.")
    return -np.log2(counts / total + epsilon)


def mean_self_information(token_ids: Sequence[Sequence[int]], counts, epsilon: float) -> float:
    """Mean self-information (bits) over all tokens of all sequences (pooled, so long texts weigh more)."""
    bits = self_information_bits(counts, epsilon)
    flat = [t for seq in token_ids for t in seq]
    return float(bits[np.asarray(flat, dtype=np.int64)].mean()) if flat else float("nan")


def unseen_token_rate(token_ids: Sequence[Sequence[int]], counts) -> float:
    """Share of tokens (pooled) never trained in the training set (count 0)."""
    counts = np.asarray(counts)
    flat = [t for seq in token_ids for t in seq]
    return float((counts[np.asarray(flat, dtype=np.int64)] == 0).mean()) if flat else float("nan")


def rare_token_ids(counts, fraction: float = 0.2) -> set[int]:
    """The rarest `fraction` of the trained token types (count > 0), ties included.

    Types are ranked by count, rarest first; the threshold is the count of the type at position
    ``ceil(fraction * types)``, and every type with a count at or below it is rare (so ties at the boundary are not
    split arbitrarily by id, and the set may hold more than `fraction` of the types).
    """
    counts = np.asarray(counts)
    seen = np.flatnonzero(counts > 0)
    if seen.size == 0:
        return set()
    k = max(1, math.ceil(fraction * seen.size))
    threshold = np.sort(counts[seen])[k - 1]
    return set(seen[counts[seen] <= threshold].tolist())


def rare_token_recall(
    generated_ids: Sequence[Sequence[int]], reference_ids: Sequence[Sequence[int]], rare: set[int]
) -> tuple[float, int]:
    """Mean over examples of |rare reference types found in the generation| / |rare reference types|.

    Types, not occurrences; only examples whose reference holds at least one rare (trained) type count. Returns the
    mean (NaN when no example qualifies) and how many examples qualified.
    """
    _same_length(generated_ids, reference_ids)
    shares = []
    for gen, ref in zip(generated_ids, reference_ids):
        wanted = set(ref) & rare
        if wanted:
            shares.append(len(wanted & set(gen)) / len(wanted))
    return (float(np.mean(shares)) if shares else float("nan")), len(shares)


def frequency_ranks(token_ids: Sequence[Sequence[int]], counts) -> np.ndarray:
    """The training-frequency rank (1 = most frequent trained type) of every token; 0 for types never trained."""
    counts = np.asarray(counts)
    order = np.lexsort((np.arange(counts.size), -counts))  # by count descending, ties by id
    ranks = np.empty(counts.size, dtype=np.int64)
    ranks[order] = np.arange(1, counts.size + 1)
    ranks[counts == 0] = 0
    flat = np.asarray([t for seq in token_ids for t in seq], dtype=np.int64)
    return ranks[flat]


# ---- code -----------------------------------------------------------------------------------------------------------


def parses(source: str) -> bool:
    """Whether `source` is valid Python for this interpreter."""
    try:
        ast.parse(source)
    except (SyntaxError, ValueError):  # ValueError: null bytes
        return False
    return True


def cut_at_top_level(body: str) -> str:
    """A generated function body up to (not including) its first non-blank line at column 0.

    A body completion that goes on past the function (a new `def`, a call, a comment at column 0) is cut there, the
    stop-sequence convention of HumanEval-style evaluation; the body itself is indented, so nothing of it is lost.
    """
    kept = []
    for line in body.split("\n"):
        if line.strip() and not line[0].isspace():
            break
        kept.append(line)
    return "\n".join(kept)


def body_parses(body: str) -> bool:
    """Whether the body, cut at its next top-level line, is a non-empty valid function body.

    Checked as the body of a neutral `def` (or `async def`, for `await`), so it needs no prompt: a docstring-only
    function parses, and an empty cut body does not count as a pass.
    """
    cut = cut_at_top_level(body)
    if not cut.strip():
        return False
    return any(parses(f"{head}def _generated():\n{cut.lstrip(chr(10))}\n") for head in ("", "async "))


_FENCE = re.compile(r"```[^\n`]*\n(.*?)(?:```|$)", re.DOTALL)


def first_code_block(text: str) -> str:
    """The body of the first fenced code block (```python ... ```; an unclosed fence runs to the end), or the whole
    text when it has none: the program in a chat reply."""
    found = _FENCE.search(text)
    return found.group(1) if found else text


def first_line(text: str) -> str:
    """The first non-blank line, stripped ('' when there is none): the synopsis of a one-line summary."""
    return next((line.strip() for line in text.split("\n") if line.strip()), "")


def parse_rate(sources: Iterable[str]) -> float:
    results = [parses(source) for source in sources]
    return float(np.mean(results)) if results else float("nan")


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation (n-1; NaN for one value), min and max, ignoring NaNs."""
    clean = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not clean:
        return {"mean": float("nan"), "sd": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {
        "mean": float(np.mean(clean)),
        "sd": float(np.std(clean, ddof=1)) if len(clean) > 1 else float("nan"),
        "min": min(clean),
        "max": max(clean),
        "n": len(clean),
    }


def _same_length(a: Sequence, b: Sequence) -> None:
    if len(a) != len(b):
        raise ValueError(f"Got {len(a)} generations but {len(b)} references.")


__all__ = [
    "FREQUENCY_BUCKETS", "body_parses", "cut_at_top_level", "distinct_n", "first_code_block", "first_line",
    "frequency_ranks", "mean_self_information", "ngrams", "parse_rate", "parses", "rare_token_ids",
    "rare_token_recall", "repetition_rate", "rouge_l", "self_information_bits", "summarize", "unseen_token_rate",
    "words",
]
