"""Successive halving on deterministic fake scores: who is promoted, who is pruned, when."""

import itertools

import pytest

from recsearch.search.asha import Status, SuccessiveHalving


def _statuses(sh: SuccessiveHalving) -> dict[int, tuple[str, int]]:
    return {t: (sh.status(t).status.value, sh.status(t).rung) for t in sh.trials()}


def test_nine_configs_three_rungs_promote_top_third_and_prune_the_rest():
    sh = SuccessiveHalving((100, 300, 900), eta=3)
    assert sh.bracket_size == 9
    scores = {t: 0.70 + 0.01 * t for t in range(9)}  # trial 8 best, 0 worst
    for t in range(9):
        assert sh.add(t) == 0
    assert sh.runnable() == [(t, 0) for t in range(9)]
    for t in range(8):
        sh.record(t, 0, scores[t])
    # the rung is not decided until its last member reports
    assert {s for s, _ in _statuses(sh).values()} == {"waiting", "run"}
    assert sh.runnable() == [(8, 0)]
    sh.record(8, 0, scores[8])
    st = _statuses(sh)
    assert [t for t in range(9) if st[t] == ("run", 1)] == [6, 7, 8]
    assert all(st[t] == ("pruned", 0) for t in range(6))
    assert sh.status(0).rank == 9 and sh.status(0).of == 9
    assert sh.runnable() == [(6, 1), (7, 1), (8, 1)]
    # at rung 1 the order flips: 6 is now the best of the three
    for t, s in ((6, 0.80), (7, 0.79), (8, 0.78)):
        sh.record(t, 1, s)
    st = _statuses(sh)
    assert st[6] == ("run", 2) and st[7] == ("pruned", 1) and st[8] == ("pruned", 1)
    sh.record(6, 2, 0.81)
    assert sh.status(6).status is Status.COMPLETE
    assert sh.runnable() == []


def test_failed_runs_are_failed_not_ranked_and_do_not_block_the_rung():
    sh = SuccessiveHalving((10, 20), eta=2, bracket_size=4)
    for t in range(4):
        sh.add(t)
    sh.record(0, 0, 0.6)
    sh.record(1, 0, None)  # crashed
    sh.record(2, 0, float("nan"))  # non-finite score counts as failed
    sh.record(3, 0, 0.7)
    st = _statuses(sh)
    assert st[1] == ("failed", 0) and st[2] == ("failed", 0)
    # two scored trials, eta 2: the best one goes on
    assert st[3] == ("run", 1) and st[0] == ("pruned", 0)
    sh.record(3, 1, None)
    assert sh.status(3).status is Status.FAILED and sh.status(3).rung == 1


def test_close_decides_a_partial_last_bracket_and_brackets_overlap():
    sh = SuccessiveHalving((10, 20), eta=3, bracket_size=3)
    for t in range(5):  # bracket 0: 0,1,2; bracket 1: 3,4
        sh.add(t)
    assert sh.bracket_of(4) == 1
    for t in range(5):
        sh.record(t, 0, 0.5 + 0.01 * t)
    assert sh.status(2).status is Status.RUN and sh.status(2).rung == 1  # bracket 0 decided
    assert sh.status(4).status is Status.WAITING  # bracket 1 may still grow
    sh.close()
    assert sh.status(4).status is Status.RUN and sh.status(3).status is Status.PRUNED
    # the older bracket's promotion comes first
    assert sh.runnable() == [(2, 1), (4, 1)]
    with pytest.raises(ValueError, match="closed"):
        sh.add(9)


def test_one_rung_means_every_trial_completes_on_its_own():
    sh = SuccessiveHalving((1000,), eta=3)
    assert sh.bracket_size == 1
    sh.add(0)
    sh.add(1)
    sh.record(0, 0, 0.1)
    assert sh.status(0).status is Status.COMPLETE
    assert sh.status(1).status is Status.RUN


def test_decisions_depend_only_on_the_facts_not_their_order():
    facts = [(t, 0, s) for t, s in enumerate([0.3, 0.9, 0.5, 0.7])]
    outcomes = set()
    for order in itertools.permutations(facts):
        sh = SuccessiveHalving((1, 2), eta=2, bracket_size=4)
        for t in range(4):
            sh.add(t)
        for fact in order:
            sh.record(*fact)
        outcomes.add(tuple(sorted(_statuses(sh).items())))
    assert outcomes == {((0, ("pruned", 0)), (1, ("run", 1)), (2, ("pruned", 0)), (3, ("run", 1)))}


def test_ties_go_to_the_lower_trial_id():
    sh = SuccessiveHalving((1, 2), eta=2, bracket_size=2)
    sh.add(5)
    sh.add(3)
    sh.record(5, 0, 0.5)
    sh.record(3, 0, 0.5)
    assert sh.status(3).status is Status.RUN and sh.status(5).status is Status.PRUNED


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="strictly increasing"):
        SuccessiveHalving((10, 10))
    with pytest.raises(ValueError, match="eta must be >= 2"):
        SuccessiveHalving((10, 20), eta=1)
    with pytest.raises(ValueError, match="at least one rung"):
        SuccessiveHalving(())
    sh = SuccessiveHalving((10,))
    sh.add(0)
    with pytest.raises(ValueError, match="already added"):
        sh.add(0)
    with pytest.raises(KeyError, match="never added"):
        sh.record(7, 0, 0.5)
    with pytest.raises(ValueError, match="out of range"):
        sh.record(0, 1, 0.5)
