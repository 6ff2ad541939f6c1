import pytest

from recsearch import config
from recsearch.search.space import LogGrid, SearchSpace, SpaceConfig
from recsearch.types import Interaction, Topology

TOPO = Topology(world_size=2, device_memory_bytes=1 << 30)


def test_decode_builds_consistent_arch_and_round_trips_choices():
    space = SearchSpace(SpaceConfig(), TOPO, train_rows=100_000, seed=7)
    assert space.cardinality == 1 * 2 * 3 * 2 * 2 * 2 * 3 * 2 * 3 * 1 * 4 * 1 * 4 * 1
    choices = tuple(size - 1 for size in space.sizes)
    spec = space.decode(choices, trial_id=3)
    assert spec.arch.bottom_mlp[-1] == spec.arch.embedding_dim == 16
    assert spec.arch.bottom_mlp == (512, 512, 512, 16) and spec.arch.top_mlp == (512, 512, 1)
    assert spec.arch.interaction is Interaction.DCN
    assert spec.hparams.dense_lr == 0.1 and spec.hparams.seed == 7
    assert space.choices_of(spec) == choices


def test_lr_decay_is_a_decision_that_never_starts_inside_warmup():
    space = SearchSpace(SpaceConfig(warmup_steps=(0, 100), decay_start_step=(50, 400), decay_steps=(0, 200)),
                        TOPO, train_rows=100_000)
    names = [d.name for d in space.decisions]
    index = {n: i for i, n in enumerate(names)}

    def pick(**chosen):
        return tuple(chosen.get(n, 0) for n in names)

    h = space.decode(pick(warmup_steps=1, decay_start_step=0, decay_steps=1)).hparams
    assert (h.warmup_steps, h.decay_start_step, h.decay_steps) == (100, 100, 200)  # 50 is inside warmup
    h = space.decode(pick(warmup_steps=1, decay_start_step=1, decay_steps=1)).hparams
    assert (h.decay_start_step, h.decay_steps) == (400, 200)
    h = space.decode(pick(decay_start_step=1, decay_steps=0)).hparams
    assert (h.decay_start_step, h.decay_steps) == (0, 0)  # no decay: its start is moot
    assert not space.relevant(pick(decay_steps=0))[index["decay_start_step"]]
    assert space.relevant(pick(decay_steps=1))[index["decay_start_step"]]
    with pytest.raises(ValueError, match="decay_steps options must be >= 0"):
        SearchSpace(SpaceConfig(decay_steps=(-1,)), TOPO, train_rows=100_000)


def test_log_grid_spans_both_ends():
    assert LogGrid(0.001, 0.1, 3).values() == (0.001, 0.01, 0.1)
    with pytest.raises(ValueError):
        LogGrid(0.0, 1.0, 3).values()


def test_dcn_knobs_are_irrelevant_for_dot():
    space = SearchSpace(SpaceConfig(), TOPO, train_rows=100_000)
    dot = tuple(0 for _ in space.sizes)
    names = [d.name for d in space.decisions]
    relevant = dict(zip(names, space.relevant(dot)))
    assert not relevant["dcn_num_layers"] and relevant["bottom_width"]


def test_empty_and_contradictory_spaces_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="bottom_width has no options"):
        SearchSpace(SpaceConfig(bottom_width=()), TOPO, train_rows=10_000)
    with pytest.raises(ValueError, match="smaller than one global batch"):
        SearchSpace(SpaceConfig(batch_size=(8192,)), TOPO, train_rows=10_000)
    path = tmp_path / "s.yaml"
    path.write_text("interaction: [dot, attention]\nbottom_width: [0]\n")
    with pytest.raises(config.ConfigError, match="'attention' is not one of"):
        config.load(SpaceConfig, path)
