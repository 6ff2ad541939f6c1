import numpy as np
import pytest

from recsearch.search.importance import (
    NotEnoughTrialsError,
    param_importance,
    usable_rows,
)
from recsearch.search.results import CANDIDATE, REFERENCE, TrialRow
from recsearch.types import TrialState


def _row(i, params, auc, state=TrialState.COMPLETE, kind=CANDIDATE, log_loss=None):
    return TrialRow(trial_id=i, kind=kind, state=state, params=params, auc=auc, log_loss=log_loss)


def _planted(n=24, seed=0):
    """AUC driven by bottom_width (strongly) and dense_lr (weakly); batch_size is noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        p = {"bottom_width": int(rng.choice([64, 128, 256])), "dense_lr": float(rng.choice([0.003, 0.01, 0.03])),
             "batch_size": int(rng.choice([512, 1024])), "embedding_optimizer": "rowwise_adagrad"}
        auc = 0.70 + 0.03 * [64, 128, 256].index(p["bottom_width"]) + 0.004 * [0.003, 0.01, 0.03].index(p["dense_lr"])
        rows.append(_row(i, p, auc + rng.normal(0, 0.0005)))
    return rows


def test_planted_importance_ranks_the_driving_decision_first():
    imp = param_importance(_planted())
    names = [n for n, _ in imp.scores]
    assert names[0] == "bottom_width"
    assert dict(imp.scores)["bottom_width"] > 2 * dict(imp.scores)["batch_size"]
    assert sum(s for _, s in imp.scores) == pytest.approx(1.0)
    assert imp.constant == ("embedding_optimizer",) and imp.n_trials == 24 and imp.metric == "auc"


def test_minimized_metric_uses_the_low_end():
    # log loss falls as bottom_width grows: the top trials (lowest loss) are the wide ones
    rows = [_row(r.trial_id, r.params, r.auc, log_loss=1.2 - r.auc) for r in _planted()]
    assert param_importance(rows, metric="log_loss").scores[0][0] == "bottom_width"


def test_conditional_decisions_present_in_some_trials_only():
    rng = np.random.default_rng(1)
    rows = []
    for i in range(20):
        dcn = i % 2 == 0
        p = {"interaction": "dcn" if dcn else "dot", "bottom_width": int(rng.choice([64, 128]))}
        if dcn:
            p["dcn_num_layers"] = int(rng.choice([1, 2, 3]))
        auc = 0.70 + (0.01 * p["dcn_num_layers"] if dcn else 0.0)
        rows.append(_row(i, p, auc))
    scores = dict(param_importance(rows).scores)
    assert set(scores) == {"interaction", "bottom_width", "dcn_num_layers"}
    assert scores["bottom_width"] < min(scores["interaction"], scores["dcn_num_layers"])


def test_too_few_trials_is_a_clear_error():
    rows = _planted(4) + [
        _row(10, {"bottom_width": 64}, None, state=TrialState.FAILED),
        _row(11, {"bottom_width": 64}, 0.9, kind=REFERENCE),  # the reference is not from the space
        _row(12, {"bottom_width": 64}, 0.71, state=TrialState.PRUNED),  # fewer rows: not comparable
    ]
    assert len(usable_rows(rows, "auc")) == 4
    with pytest.raises(NotEnoughTrialsError, match=r"needs at least 5 complete trials with a finite auc; "
                                                   r"this search has 4 \(of 7 trials in the journal\)"):
        param_importance(rows)
    assert param_importance(rows, min_trials=4).n_trials == 4


def test_nothing_varied_and_bad_arguments():
    same = [_row(i, {"bottom_width": 64, "batch_size": 512}, 0.7 + 0.001 * i) for i in range(6)]
    with pytest.raises(NotEnoughTrialsError, match="every one of the 6 complete trials has the same decisions"):
        param_importance(same)
    with pytest.raises(ValueError, match="metric must be one of"):
        param_importance(same, metric="speed")
    with pytest.raises(ValueError, match="min_trials must be >= 2"):
        param_importance(same, min_trials=1)
