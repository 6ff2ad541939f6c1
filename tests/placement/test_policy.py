"""The actor-critic placer: masking, errors, training, greedy vs sampled decoding."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from recsearch.placement import policy as pol
from recsearch.placement.cli.policy import main
from recsearch.placement.cost_net import load_shipped as load_cost_net
from recsearch.placement.policy import (
    LearnedPlacer,
    PPOConfig,
    _feasible_mask,
    _PolicyNet,
    load_shipped,
    train_policy,
    training_tasks,
)
from recsearch.placement.registry import make_placer
from recsearch.placement.tables import load_task, load_tasks, make_task
from recsearch.placement.types import (
    PlacementError,
    Placer,
    format_bytes,
    table_memory_bytes,
)
from recsearch.tables import load_tables
from recsearch.types import TableSpec, Topology

DATA = Path(__file__).parents[2] / "recsearch" / "placement" / "data"


@pytest.fixture(scope="module")
def h100_policy():
    return load_shipped("cuda")


@pytest.fixture(scope="module")
def h100_tasks():
    return load_tasks(DATA / "tasks_h100")


def test_feasibility_mask_looks_ahead():
    # plain memory
    assert _feasible_mask(np.array([[10, 3]]), 4, np.array([])).tolist() == [[True, False]]
    # either device leaves room for the last table of 10
    assert _feasible_mask(np.array([[10, 10]]), 5, np.array([10])).tolist() == [[True, True]]
    # on device 0 the table of 10 could no longer go anywhere
    assert _feasible_mask(np.array([[10, 6]]), 5, np.array([10])).tolist() == [[False, True]]
    # the two tables of 10 left need two empty devices: only device 2 may take the 4
    assert _feasible_mask(np.array([[10, 10, 8]]), 4, np.array([10, 10])).tolist() == [
        [False, False, True]
    ]
    # first-fit-decreasing over several remaining tables, per episode row. Row 0: any device
    # works (e.g. 4 on 0: 9 -> 1, 6 -> 0, 6 -> 2, 3 -> 2). Row 1: 4 on 0 leaves [8, 9, 9], which
    # FFD packs; 4 on 1 leaves [12, 5, 9], where FFD puts 9 on 0 and finds no room for the second
    # 6 (a packing exists, 9 -> 2, 6 + 6 -> 0, 3 -> 1: the mask is conservative, never optimistic)
    free = np.array([[10, 10, 10], [12, 9, 9]])
    got = _feasible_mask(free, 4, np.array([9, 6, 6, 3]))
    assert got.tolist() == [[True, True, True], [True, False, False]]


class _PreferFirstDevice:
    """A policy that always wants device 0 as much as it can: only the mask keeps it legal."""

    def __call__(self, dev_enc, table_enc, dev_feat, glob, mask, with_value=False):
        logits = np.zeros(mask.shape)
        logits[:, 0] = 1e6
        return np.where(mask, logits, -1e9), (np.zeros(len(mask)) if with_value else None)


def test_policy_never_uses_a_masked_device(h100_policy):
    placer = LearnedPlacer(h100_policy.net, h100_policy.cost_net, samples=4)
    placer.policy = _PreferFirstDevice()
    pool = load_tables(DATA / "pool_test.json")
    for seed in range(4):
        task = make_task(pool, 30, 4, seed=seed, slack=1.05)
        p = placer.place(task.tables, task.topology)
        mem = p.memory_per_rank(task.tables, task.optimizer)
        assert max(mem) <= task.device_memory_bytes
        assert mem[0] > task.device_memory_bytes * 0.8  # it did fill device 0 first


def test_numpy_rollout_policy_equals_the_torch_network():
    torch.manual_seed(0)
    net = _PolicyNet(40, pol.PolicyShape(hidden=16))
    b, d = 3, 5
    dev = torch.randn(b, d, 40, dtype=torch.float64)
    table = torch.randn(40, dtype=torch.float64)
    feat = torch.randn(b, d, pol.NUM_DEVICE_FEATURES, dtype=torch.float64)
    glob = torch.randn(pol.NUM_GLOBAL_FEATURES, dtype=torch.float64)
    mask = torch.rand(b, d) > 0.3
    logits, value = net.double()(dev, table.expand(b, -1), feat, glob.expand(b, -1), mask)
    fast = pol._FastPolicy(net, 40)
    f_logits, f_value = fast(dev.numpy(), table.numpy(), feat.numpy(), glob.numpy(), mask.numpy(), True)
    np.testing.assert_allclose(f_logits, logits.detach().numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(f_value, value.detach().numpy(), rtol=1e-9, atol=1e-9)
    assert (f_logits[~mask.numpy()] == -1e9).all()


def test_tight_tasks_are_always_placed_within_the_cap(h100_policy):
    pool = load_tables(DATA / "pool_test.json")
    sampled = LearnedPlacer(h100_policy.net, h100_policy.cost_net, samples=8, seed=3)
    for seed in range(6):
        task = make_task(pool, 40, 2 + seed % 5, seed=seed, slack=1.02)
        for placer in (h100_policy, sampled):
            p = placer.place(task.tables, task.topology)
            p.validate(task.tables, task.topology, task.optimizer)


def test_nothing_fits_is_a_placement_error_naming_the_table(h100_policy):
    tables = [TableSpec(n, 1000, 16, 2.0) for n in ("a", "b", "c")]
    mem = table_memory_bytes(tables[0])
    topo = Topology(2, int(mem * 1.6))  # each fits alone, two never share a device
    with pytest.raises(PlacementError) as err:
        h100_policy.place(tables, topo)
    msg = str(err.value)
    # a and b take one device each (equal cost: task order); c is the one left without room
    assert "learned placer: table 'c'" in msg
    assert f"needs {format_bytes(mem)} ({mem:,} bytes)" in msg
    cap = int(mem * 1.6)
    left = f"{format_bytes(cap - mem)} of {format_bytes(cap)} ({cap:,} bytes)"
    assert f"left of each rank's cap: rank 0: {left}, rank 1: {left}" in msg
    huge = [TableSpec("huge", 10**6, 64)]
    with pytest.raises(PlacementError, match="table 'huge'.*does not fit"):
        h100_policy.place(huge, Topology(2, 1 << 20))


def test_shipped_h100_policy_beats_the_baselines_on_unseen_tasks(h100_policy, h100_tasks):
    """tasks_h100 tables (pool seed 1) were never seen by the cost net or the policy; device
    counts 2, 6 and 12 never in policy training. Judged by the H100 cost net (an estimate)."""
    cost_net = h100_policy.cost_net
    got = {"learned": [], "round_robin": [], "lookup_greedy": [], "size_lookup_greedy": []}
    for task in h100_tasks[::2]:
        for name in got:
            placer = h100_policy if name == "learned" else make_placer(name)
            p = placer.place(task.tables, task.topology)
            got[name].append(cost_net.predict(task.tables, p, task.topology).total_ms)
    ratio = {name: np.array(got["learned"]) / np.array(v) for name, v in got.items()}
    assert (ratio["round_robin"] < 1).all()
    # measured when written: learned / lookup_greedy (the best baseline) 0.87 over all 18 tasks
    assert ratio["lookup_greedy"].mean() < 0.92
    assert ratio["size_lookup_greedy"].mean() < 0.92


def test_shipped_cpu_policy_beats_the_baselines_on_unseen_tasks(test_tasks):
    """tasks_test: pool_test tables (never seen by the CPU cost net or policy), device counts 2, 6
    and 12 never in policy training. Judged by the CPU cost net (an estimate; `place eval`
    measures)."""
    learned = load_shipped("cpu")
    assert learned.cost_net.meta.device == "cpu" and learned.info["cost_net"] == "cost_net_cpu"
    names = ("learned", "round_robin", "dim_greedy", "lookup_greedy")
    got = {name: [] for name in names}
    for task in test_tasks[1::2]:
        for name in names:
            placer = learned if name == "learned" else make_placer(name)
            p = placer.place(task.tables, task.topology)
            got[name].append(learned.cost_net.predict(task.tables, p, task.topology).total_ms)
    ratio = {name: np.array(got["learned"]) / np.array(v) for name, v in got.items()}
    # measured when written (all 18 tasks): learned / dim_greedy (the best baseline) 0.825
    assert (ratio["round_robin"] < 1).all()
    assert ratio["dim_greedy"].mean() < 0.9 and ratio["lookup_greedy"].mean() < 0.9


@pytest.mark.slow
def test_shipped_cpu_policy_beats_the_baselines_by_measured_cost(tmp_path):
    """The judge is the measurement, not the cost net the policy was trained against: a small
    `recsearch place eval` times every device's fused kernel of each placement on this CPU. Task
    t80_d8_000: 80 tables of pool_test (never seen by the CPU cost net or policy) on 8 devices,
    a device count never in policy training. Three interleaved rounds (3 warm-up + 5 timed calls
    each, median over rounds): one round alone swings with the neighbours on 2 shared cores
    (the policy of 2026-12-05, learned / the cheapest baseline in four single rounds: 0.746,
    0.773, 0.893, 0.945); docs/BENCHMARKS.md's place_eval_retrained (3 rounds of 10 calls):
    best_learned 0.822. The margin, 0.92, is the learned placer's own claim (cheaper than the
    best baseline on unseen tables) with room for noise."""
    from recsearch.placement.cli.eval import main as place_eval

    task_file = DATA / "tasks_test" / "t80_d8_000.json"
    baselines = ["round_robin", "dim_greedy", "lookup_greedy", "size_lookup_greedy"]
    out = tmp_path / "eval.json"
    argv = ["--tasks", str(task_file), "--methods", "learned", *baselines, "--out", str(out),
            "--rounds", "3", "--warmup", "3", "--iters", "5", "--no-bound", "--no-timing"]  # fmt: skip
    assert place_eval(argv) == 0
    (row,) = json.loads(out.read_text())["rows"]
    task_tables = {t.name for t in load_task(task_file).tables}
    assert row["tables"] == 80 and row["devices"] == 8
    assert not task_tables & set(load_shipped("cpu").cost_net.meta.tables_seen)  # held out
    measured = {m: r["measured_ms"] for m, r in row["results"].items()}
    assert all(r["feasible"] for r in row["results"].values()) and set(measured) == {"learned", *baselines}
    cheapest = min(measured[m] for m in baselines)
    assert measured["learned"] < 0.92 * cheapest, measured


def test_make_placer_learned_picks_the_policy_of_the_topology_device(test_tasks):
    placer = make_placer("learned")
    task = test_tasks[0]
    placer.place(task.tables, task.topology)
    placer.place(task.tables, Topology(task.world_size, task.device_memory_bytes, "cuda"))
    got = {dev: p.cost_net.meta.device for dev, p in placer._loaded.items()}
    assert got == {"cpu": "cpu", "cuda": "cuda"}


def test_sample_k_is_never_worse_than_greedy_under_the_cost_net(h100_policy, test_tasks):
    sampled = LearnedPlacer(h100_policy.net, h100_policy.cost_net, samples=8, seed=1)
    better = 0
    for task in test_tasks[::2]:
        g = h100_policy.place(task.tables, task.topology)
        s = sampled.place(task.tables, task.topology)
        eg = h100_policy.cost_net.predict(task.tables, g).total_ms
        es = h100_policy.cost_net.predict(task.tables, s).total_ms
        assert es <= eg + 1e-9
        assert sampled.last_estimate_ms == pytest.approx(es, rel=1e-4)
        better += es < eg
    assert better >= 1  # sampling does find cheaper placements


def test_monotone_policy_sample_k_and_its_running_max_estimate(test_tasks):
    """The CPU policy's MDP keeps each device's running max of the net's estimates: its estimate
    bounds the net's plain one from above, and sample-K never loses to greedy under it."""
    shipped = load_shipped("cpu")
    assert shipped.monotone == shipped.info["ppo"].get("monotone", False)
    assert not load_shipped("cuda").monotone  # saved before the flag: trained on the raw estimate
    info = {"ppo": {"monotone": True}}
    greedy = LearnedPlacer(shipped.net, shipped.cost_net, info=info)
    sampled = LearnedPlacer(shipped.net, shipped.cost_net, samples=8, seed=1, info=info)
    assert greedy.monotone and sampled.monotone
    for task in test_tasks[::3]:
        g = greedy.place(task.tables, task.topology)
        g_est = greedy.last_estimate_ms
        s = sampled.place(task.tables, task.topology)
        assert sampled.last_estimate_ms <= g_est + 1e-9
        for p, est in ((g, g_est), (s, sampled.last_estimate_ms)):
            # float64 rollout vs float32 net: equal to ~1e-7 where the running max is not hit
            assert est >= greedy.cost_net.predict(task.tables, p).total_ms * (1 - 1e-5)


def test_greedy_row_of_a_batched_rollout_is_the_greedy_placement(test_tasks):
    """Sample-K runs the greedy decoding as row 0 of the sampled batch (one rollout instead of
    two): that row is the greedy placement, and the sampled rows draw what a batch of only
    samples draws."""
    shipped = load_shipped("cpu")
    task = test_tasks[0]
    prep = pol._prepare(task.tables, task.topology, shipped.cost_net, shipped.heads,
                        task.optimizer, shipped.monotone)
    alone, alone_cost = pol._rollout(prep, shipped.policy, shipped.cost_net, shipped.heads, 1, greedy_rows=1)
    both, both_cost = pol._rollout(prep, shipped.policy, shipped.cost_net, shipped.heads, 5,
                                   rng=np.random.default_rng(3), greedy_rows=1)
    assert (both[0] == alone[0]).all() and both_cost[0] == pytest.approx(alone_cost[0], rel=1e-9)
    only, _ = pol._rollout(prep, shipped.policy, shipped.cost_net, shipped.heads, 4,
                           rng=np.random.default_rng(3))
    assert (both[1:] == only).mean() > 0.99  # the same draws (a float tie may differ in a batch)
    assert len({tuple(r) for r in both}) > 1  # the sampled rows do sample


def test_learned_placer_is_a_placer_and_registered():
    placer = make_placer("learned")
    assert isinstance(placer, Placer)
    task = load_tasks(DATA / "tasks_test")[0]
    p = placer.place(task.tables, task.topology)
    assert len(p) == len(task.tables) and p.world_size == task.world_size


def test_short_ppo_training_beats_round_robin_on_unseen_tasks(test_tasks, tmp_path):
    cost_net = load_cost_net("cuda")
    pool = load_tables(DATA / "pool_train.json")
    cfg = PPOConfig(iters=25, episodes=8, num_tasks=8, max_tables=40, seed=0)
    tasks = training_tasks(pool, cfg)
    assert {t.world_size for _, t in tasks} <= {4, 8, 16}
    placer, info = train_policy(cost_net, tasks, cfg)
    assert info["iters_done"] == 25 and all(np.isfinite(h["cost_over_ref"]) for h in info["history_tail"])
    wins = 0
    for task in test_tasks[::3]:
        mine = placer.place(task.tables, task.topology)
        rr = make_placer("round_robin").place(task.tables, task.topology)
        wins += cost_net.predict(task.tables, mine).total_ms < cost_net.predict(task.tables, rr).total_ms
    assert wins == len(test_tasks[::3])
    # files: weights_only state_dict + JSON naming the cost net
    pt, js = placer.save(tmp_path / "p", str(DATA / "cost_net_h100"))
    assert set(torch.load(pt, weights_only=True)) == set(placer.net.state_dict())
    again = LearnedPlacer.load(tmp_path / "p")
    task = test_tasks[0]
    assert again.place(task.tables, task.topology) == placer.place(task.tables, task.topology)


def test_cli_place_writes_a_placement_file_and_names_the_estimate(tmp_path, capsys):
    task = DATA / "tasks_h100" / "t50_d4_000.json"
    out = tmp_path / "plan.json"
    assert main(["place", "--task", str(task), "--policy", str(DATA / "policy_h100"),
                 "--samples", "4", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "t50_d4_000: 50 tables on 4 devices placed in" in text and "cost-net estimate" in text
    raw = __import__("json").loads(out.read_text())
    assert raw["world_size"] == 4 and len(raw["placement"]) == 50
    assert set(raw["placement"].values()) <= {0, 1, 2, 3} and raw["samples"] == 4
    assert main(["place", "--task", str(tmp_path / "none.json")]) == 2
    assert "none.json" in capsys.readouterr().err


def test_cli_policy_train_writes_a_policy_that_places_and_names_its_cost_net(tmp_path, capsys):
    """`recsearch place policy train`: a few PPO iterations on the shipped CPU cost net; the
    files load as a placer (the JSON names the cost net relative to itself and the pool)."""
    from recsearch import cli

    out = tmp_path / "policies" / "tiny"
    out.parent.mkdir()
    argv = ["place", "policy", "train", "--cost-net", str(DATA / "cost_net_cpu"),
            "--pool", str(DATA / "pool_train_wide.json"), "--out", str(out), "--iters", "3",
            "--episodes", "4", "--num-tasks", "4", "--max-tables", "20", "--devices", "2", "4"]  # fmt: skip
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "4 training tasks from" in text and "devices [2, 4]" in text
    assert "trained 3 PPO iterations in" in text and f"wrote {out}.pt, {out}.json" in text
    info = json.loads(out.with_suffix(".json").read_text())
    assert (out.parent / info["cost_net"]).resolve() == (DATA / "cost_net_cpu").resolve()
    placer = LearnedPlacer.load(out)
    assert placer.info["iters_done"] == 3 and placer.info["pool"] == str(DATA / "pool_train_wide.json")
    task = load_tasks(DATA / "tasks_test")[0]
    placement = placer.place(task.tables, task.topology)
    assert len(placement.ranks) == len(task.tables) and max(placement.ranks) < task.world_size == placement.world_size
    # a cost net that is not there: a clear error, no files
    missing = ["place", "policy", "train", "--cost-net", str(tmp_path / "none"), "--pool",
               str(DATA / "pool_train_wide.json"), "--out", str(tmp_path / "x")]  # fmt: skip
    assert cli.main(missing) == 2
    assert "recsearch place policy train:" in capsys.readouterr().err
    assert not list(tmp_path.glob("x*"))


def test_training_tasks_from_several_pools_draw_each_task_from_one_pool():
    train, test = load_tables(DATA / "pool_train.json"), load_tables(DATA / "pool_test.json")
    cfg = PPOConfig(num_tasks=7, max_tables=30, devices=(2, 4))
    tasks = pol.training_tasks_from_pools([train, test], cfg)
    names = [{t.name for t in pool} for pool in (train, test)]
    origin = [next(j for j, pool in enumerate(names) if {t.name for t in tables} <= pool) for tables, _ in tasks]
    assert origin == [0, 0, 0, 0, 1, 1, 1]  # 7 shared out 4 + 3, each task's tables from one pool
    assert pol.training_tasks_from_pools([train], cfg) == training_tasks(train, cfg)
    with pytest.raises(ValueError, match="no pools"):
        pol.training_tasks_from_pools([], cfg)


def test_the_shipped_placer_warns_when_this_machine_is_another_device_model(monkeypatch):
    """The shipped nets were measured on one CPU and one GPU model: on another model the
    learned placer says so once (a UserWarning naming both), on the same one it stays silent,
    and planning for GPUs on a host without one says nothing."""
    import warnings

    from recsearch.placement import hardware
    from recsearch.placement.policy import ShippedLearnedPlacer

    cpu_net = load_shipped("cpu").cost_net.meta.hardware
    assert hardware.device_name_of(cpu_net) == "AMD EPYC"
    assert hardware.device_name_of("cuda:NVIDIA H100 80GB HBM3|cpus=16") == "NVIDIA H100 80GB HBM3"
    assert hardware.device_name_of("") == ""

    def ours(record):
        return [w for w in record if "the shipped" in str(w.message)]

    for model, expect in (("AMD EPYC", 0), ("Intel(R) Xeon(R) Platinum 8480+", 1)):
        monkeypatch.setattr(hardware, "_cpu_model", lambda m=model: m)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            placer = ShippedLearnedPlacer()
            placer.policy_for("cpu")
            placer.policy_for("cpu")  # loaded once: warned once
        got = ours(record)
        assert len(got) == expect, [str(w.message) for w in record]
        if expect:
            text = str(got[0].message)
            assert "'AMD EPYC'" in text and "'Intel(R) Xeon(R) Platinum 8480+'" in text
            assert "docs/PLACEMENT.md" in text
    monkeypatch.setattr(hardware.torch.cuda, "is_available", lambda: False)
    assert hardware.local_device_name("cuda") is None
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ShippedLearnedPlacer().policy_for("cuda")
    assert not ours(record)


def test_malformed_policy_files_are_value_errors_naming_file_and_key(tmp_path, capsys):
    import shutil

    for suffix in (".pt", ".json"):
        shutil.copy(DATA / f"policy_cpu{suffix}", tmp_path / f"pol{suffix}")
        shutil.copy(DATA / f"cost_net_cpu{suffix}", tmp_path / f"cost_net_cpu{suffix}")
    net = load_cost_net("cpu")
    info = json.loads((tmp_path / "pol.json").read_text())
    del info["embed"]
    (tmp_path / "pol.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"pol\.json: malformed policy config: missing key\(s\) \['embed'\]"):
        LearnedPlacer.load(tmp_path / "pol", cost_net=net)
    info = json.loads((DATA / "policy_cpu.json").read_text())
    del info["cost_net"]
    (tmp_path / "pol.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"missing key\(s\) \['cost_net'\]"):
        LearnedPlacer.load(tmp_path / "pol")
    info["shape"] = {"bogus": 1}
    (tmp_path / "pol.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"pol\.json: malformed policy config 'shape'"):
        LearnedPlacer.load(tmp_path / "pol", cost_net=net)
    shutil.copy(DATA / "policy_cpu.json", tmp_path / "pol.json")
    (tmp_path / "pol.pt").write_bytes(b"\x80garbage")
    with pytest.raises(ValueError, match=r"pol\.pt: not a readable weights file"):
        LearnedPlacer.load(tmp_path / "pol", cost_net=net)
    task = tmp_path / "task.json"
    shutil.copy(DATA / "tasks_test" / "t50_d4_000.json", task)
    assert main(["place", "--task", str(task), "--policy", str(tmp_path / "pol")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("recsearch place policy place: ") and "pol.pt: not a readable" in err
