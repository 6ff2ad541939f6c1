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
