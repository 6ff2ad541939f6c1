"""tools/bench_latency_rank.py: what counts as the search ranking configurations the same way."""

from __future__ import annotations

from tools.bench_latency_rank import contradictions, key, ranking


def _round(**ratios: float) -> dict[str, dict]:
    return {name: {"p50_ms": 10 * r, "reference_p50_ms": 10.0, "vs_reference": r} for name, r in ratios.items()}


def test_the_locked_ranking_is_by_the_paired_ratio_and_raw_by_the_p50():
    entry = {"p50_ms": 2.0, "reference_p50_ms": 1.0, "vs_reference": 1.9}
    assert key(entry, "locked") == 1.9 and key(entry, "raw") == 2.0
    assert key({"p50_ms": 2.0, "reference_p50_ms": 1.0}, "locked") == 2.0  # no paired ratio recorded
    assert ranking(_round(A=1.0, B=0.8, C=1.5), "locked") == ["B", "A", "C"]


def test_a_swap_within_the_resolution_is_a_tie_and_one_beyond_it_is_a_contradiction():
    rounds = [_round(A=1.0, C=2.03, E=2.00), _round(A=1.0, C=1.99, E=2.01)]  # C and E 1-1.5 % apart
    assert contradictions(rounds, "locked", 0.03) == []
    assert contradictions(rounds, "locked", 0.005) == ["C/E"]
    # C clearly slower in one round and clearly faster in another: the ranking is not reproducible
    flipped = [_round(A=1.0, C=2.2, E=2.0), _round(A=1.0, C=1.8, E=2.0)]
    assert contradictions(flipped, "locked", 0.03) == ["C/E"]
    # one clear order and one tie are not a contradiction
    assert contradictions([_round(A=1.0, C=2.2, E=2.0), _round(A=1.0, C=2.0, E=2.01)], "locked", 0.03) == []
