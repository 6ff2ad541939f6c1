import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from recsearch.train.metrics import MetricAccumulator
from recsearch.train.optim import DenseOptimizer, dense_optimizer, embedding_optimizer
from recsearch.train.schedule import LRSchedule, apply_lr
from tests.spawn import spawn_ranks


def test_warmup_then_polynomial_decay():
    s = LRSchedule(warmup_steps=4, decay_start_step=10, decay_steps=10)
    assert [s.multiplier(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert s.multiplier(9) == 1.0
    assert s.multiplier(15) == pytest.approx((1 - 5 / 10) ** 2)
    assert s.multiplier(20) == 0.0 and s.multiplier(100) == 0.0
    assert LRSchedule().multiplier(12345) == 1.0
    with pytest.raises(ValueError, match="decay_start_step"):
        LRSchedule(warmup_steps=10, decay_start_step=5, decay_steps=3)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.4)
    apply_lr(opt, [0.4], s.multiplier(15))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)


def test_lamb_matches_its_definition_on_one_step():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5))
    w0 = w.detach().clone()
    w.grad = torch.randn(5)
    DenseOptimizer([w], kind="lamb", lr=0.1).step()
    # first Adam step with bias correction: m_hat = g, v_hat = g^2
    update = w.grad / (w.grad.abs() + DenseOptimizer.LAMB_EPS)
    expected = w0 - 0.1 * (w0.norm() / update.norm()) * update
    torch.testing.assert_close(w.detach(), expected)


@pytest.mark.parametrize(
    ("kind", "reference"),
    [
        ("sgd", lambda ps, lr: torch.optim.SGD(ps, lr=lr)),
        ("adagrad", lambda ps, lr: torch.optim.Adagrad(ps, lr=lr, eps=1e-8)),
        ("adam", lambda ps, lr: torch.optim.Adam(ps, lr=lr)),
    ],
)
def test_dense_optimizer_follows_torch_optim_with_a_changing_lr(kind, reference):
    """The graph-safe optimizer computes torch.optim's updates, step after step, also when the
    scheduled lr changes between steps (it reaches the update through a device tensor)."""
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt, ref = DenseOptimizer(ours, kind=kind, lr=0.05), reference(theirs, 0.05)
    for step in range(12):
        grads = [torch.randn_like(p) for p in ours]
        for p, q, g in zip(ours, theirs, grads):
            p.grad, q.grad = g.clone(), g.clone()
        lr = 0.05 * (step + 1) / 12
        opt.param_groups[0]["lr"] = ref.param_groups[0]["lr"] = lr
        opt.step()
        ref.step()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert float(opt.state[ours[0]]["step"]) == 12.0


def test_dense_optimizer_state_round_trips_and_resumes_exactly():
    torch.manual_seed(1)
    params = [torch.nn.Parameter(torch.randn(6))]
    opt = DenseOptimizer(params, kind="adam", lr=0.1)
    for _ in range(3):
        params[0].grad = torch.randn(6)
        opt.step()
    saved_params = [p.detach().clone() for p in params]
    saved = {k: v for k, v in opt.state_dict().items()}
    saved = torch.utils._pytree.tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, saved)
    grad = torch.randn(6)
    params[0].grad = grad.clone()
    opt.step()
    straight = params[0].detach().clone()

    resumed = [torch.nn.Parameter(saved_params[0].clone())]
    opt2 = DenseOptimizer(resumed, kind="adam", lr=0.1)
    opt2.load_state_dict(saved)
    resumed[0].grad = grad.clone()
    opt2.step()
    assert torch.equal(resumed[0].detach(), straight)


def test_optimizer_names():
    assert embedding_optimizer("rowwise_adagrad", 0.1)[1]["lr"] == 0.1
    assert dense_optimizer("lamb", [torch.nn.Parameter(torch.zeros(1))], 0.1).kind == "lamb"
    with pytest.raises(ValueError, match="embedding optimizer must be one of"):
        embedding_optimizer("lion", 0.1)
    with pytest.raises(ValueError, match="dense optimizer must be one of"):
        dense_optimizer("rmsprop", [], 0.1)


def _reference(logits, labels):
    p = 1 / (1 + np.exp(-logits))
    order = np.argsort(logits)
    ranks = np.empty(len(logits))
    ranks[order] = np.arange(1, len(logits) + 1)
    pos = labels == 1
    auc = (ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum())
    loss = -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    acc = np.mean((logits > 0) == (labels == 1))
    return auc, loss, acc


def _data(n=1000):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-2 * logits))).astype(np.float64)
    return logits, labels


def test_metrics_match_numpy_single_process():
    logits, labels = _data()
    acc = MetricAccumulator(torch.device("cpu"))
    for chunk in np.array_split(np.arange(len(logits)), 7):
        acc.update(torch.tensor(logits[chunk]), torch.tensor(labels[chunk]))
    m = acc.compute()
    auc, loss, accuracy = _reference(logits, labels)
    assert m.rows == 1000
    assert m.auc == pytest.approx(auc, abs=1e-6)
    assert m.log_loss == pytest.approx(loss, rel=1e-5)
    assert m.accuracy == pytest.approx(accuracy)
    # NE: the log loss over the entropy of predicting the click rate for every row
    rate = labels.mean()
    assert m.ne == pytest.approx(loss / -(rate * np.log(rate) + (1 - rate) * np.log(1 - rate)), rel=1e-5)
    assert m.ne < 1  # these logits carry information about the labels
    constant = MetricAccumulator(torch.device("cpu"))  # predicting the click rate itself: NE 1
    constant.update(torch.full((len(labels),), float(np.log(rate / (1 - rate)))), torch.tensor(labels))
    assert constant.compute().ne == pytest.approx(1.0, rel=1e-6)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_metrics(rank, port, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    logits, labels = _data()
    half = slice(0, 600) if rank == 0 else slice(600, 1000)  # uneven shares
    acc = MetricAccumulator(torch.device("cpu"))
    acc.update(torch.tensor(logits[half]), torch.tensor(labels[half]))
    m = acc.compute()
    out[rank] = (m.auc, m.log_loss, m.accuracy, m.rows)
    dist.destroy_process_group()


@pytest.mark.multiproc
def test_metrics_are_global_across_two_ranks():
    out = mp.Manager().dict()
    spawn_ranks(_rank_metrics, (_free_port(), out))
    auc, loss, accuracy = _reference(*_data())
    for rank in (0, 1):
        got_auc, got_loss, got_acc, rows = out[rank]
        assert rows == 1000
        assert got_auc == pytest.approx(auc, abs=1e-6)
        assert got_loss == pytest.approx(loss, rel=1e-5) and got_acc == pytest.approx(accuracy)
