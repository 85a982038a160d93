"""The metrics against values computed by hand, not by the code under test."""

import math

import pytest

from pdl_plugin.eval import metrics


def test_rouge_l_on_hand_made_pairs():
    # LCS("the cat sat on the mat", "the cat lay on the mat") = "the cat on the mat": P = R = 5/6
    # LCS("a b c d", "a c e") = "a c": P = 2/4, R = 2/3, F = 2PR/(P+R) = 4/7
    # "x" against "y z": no overlap, F = 0
    got = metrics.rouge_l(["the cat sat on the mat", "a b c d", "x"], ["the cat lay on the mat", "a c e", "y z"])
    assert got == pytest.approx((5 / 6 + 4 / 7 + 0) / 3, abs=1e-9)


def test_rouge_l_stems_and_ignores_case():
    assert metrics.rouge_l(["Running dogs"], ["run dog"]) == pytest.approx(1.0)


def test_rouge_l_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="2 generations but 1 references"):
        metrics.rouge_l(["a", "b"], ["a"])


def test_distinct_n_is_corpus_level():
    texts = ["a b a B", "a c"]  # unigrams a b a b a c: 3 distinct of 6; bigrams ab ba ab ac: 3 of 4
    assert metrics.distinct_n(texts, 1) == pytest.approx(3 / 6)
    assert metrics.distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert math.isnan(metrics.distinct_n(["a", ""], 2))


def test_repetition_rate_is_the_mean_within_text_share_of_repeated_ngrams():
    # "a b c a b c": trigrams abc bca cab abc -> 1 - 3/4; "x y z" -> 0; "x y" has no trigram and is skipped
    assert metrics.repetition_rate(["a b c a b c", "x y z", "x y"], 3) == pytest.approx((0.25 + 0.0) / 2)
    assert metrics.repetition_rate(["no no no no"], 1) == pytest.approx(0.75)
    assert math.isnan(metrics.repetition_rate(["short"], 3))


def test_self_information_under_the_table_with_epsilon():
    counts = [0, 3, 1]  # freq 0, 3/4, 1/4
    eps = 1e-6
    expected = [-math.log2(0.75 + eps), -math.log2(0.25 + eps), -math.log2(0 + eps)]
    got = metrics.mean_self_information([[1, 2], [0]], counts, eps)
    assert got == pytest.approx(sum(expected) / 3, rel=1e-12)
    assert metrics.unseen_token_rate([[1, 2], [0]], counts) == pytest.approx(1 / 3)


def test_rare_tokens_are_the_rarest_fifth_of_trained_types_ties_included():
    counts = [0, 10, 1, 1, 2, 5, 3, 1, 0, 7]
    # trained types: 8; ceil(0.2 * 8) = 2; sorted counts 1 1 1 2 3 5 7 10 -> threshold 1 -> ids 2, 3, 7
    assert metrics.rare_token_ids(counts) == {2, 3, 7}


def test_rare_token_recall_counts_types_and_skips_references_without_rare_tokens():
    rare = {2, 3, 7}
    references = [[2, 5, 3], [1, 5], [7, 7, 2]]
    generations = [[3, 1, 3], [1], [2]]
    # example 1: {2,3} wanted, 3 found -> 1/2; example 2: nothing rare, skipped; example 3: {7,2}, 2 found -> 1/2
    assert metrics.rare_token_recall(generations, references, rare) == (pytest.approx(0.5), 2)


def test_frequency_ranks():
    counts = [0, 10, 1, 5]  # ranks: id1 -> 1, id3 -> 2, id2 -> 3, id0 never trained -> 0
    assert metrics.frequency_ranks([[1, 2], [0, 3]], counts).tolist() == [1, 3, 0, 2]


def test_parse_rate():
    assert metrics.parses("def f():\n    return 1\n")
    assert not metrics.parses("def f(:\n")
    assert metrics.parse_rate(["x = 1", "x = (", "pass"]) == pytest.approx(2 / 3)


def test_summarize_uses_the_sample_sd_and_skips_nans():
    stats = metrics.summarize([1.0, 3.0, float("nan")])
    assert stats["mean"] == 2.0 and stats["sd"] == pytest.approx(math.sqrt(2)) and stats["n"] == 2
    assert math.isnan(metrics.summarize([4.0])["sd"])


def test_code_body_is_cut_at_the_next_top_level_line():
    prompt = 'def f(x):\n    """Double x."""'
    body = "\n    y = 2 * x\n\n    return y\n\ndef g(:\n    pass"
    assert metrics.cut_at_top_level(body) == "\n    y = 2 * x\n\n    return y\n"
    assert metrics.body_parses(body)  # the broken `def g(` after the body is cut away
    assert not metrics.parses(prompt + body)
    assert not metrics.body_parses("\nreturn x")  # nothing indented: empty body, not a pass
    assert not metrics.body_parses("\n    return (x")
    assert metrics.body_parses("\n    await x\n    return 1")  # a coroutine's body


def test_first_line():
    assert metrics.first_line("\n\n  Ruby library for tables \nmore text") == "Ruby library for tables"
    assert metrics.first_line(" \n ") == ""
