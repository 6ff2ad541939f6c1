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


def test_describe_lists_varied_decisions_then_fixed_ones_and_the_count():
    space = SearchSpace(SpaceConfig(embedding_dim=(8, 16), interaction=(Interaction.DOT,), dcn_num_layers=(1,),
                                    dcn_low_rank_dim=(64,), bottom_depth=(1,), bottom_width=(64, 128), top_depth=(1,),
                                    top_width=(64,), batch_size=(512, 1024), embedding_lr=LogGrid(0.01, 0.1, 3),
                                    dense_lr=LogGrid(0.05, 0.05, 1)),
                        TOPO, train_rows=100_000)
    text = space.describe()
    assert space.cardinality == 2 * 2 * 2 * 3 == 24
    assert text.startswith("4 decisions, 24 configurations: embedding_dim [8, 16]; bottom_width [64, 128]; "
                           "batch_size [512, 1024]; embedding_lr [log grid 0.01-0.1 x3] (fixed: ")
    assert "interaction dot" in text and "dense_lr 0.05" in text and "embedding_optimizer rowwise_adagrad" in text
    big = SearchSpace(SpaceConfig(), TOPO, train_rows=100_000).describe()
    assert big.startswith("10 decisions, 13,824 configurations: ") and "interaction [dot, dcn]" in big


def test_contradictory_architecture_options_are_refused_before_any_decode():
    topo = Topology(world_size=1, device_memory_bytes=1 << 30)
    # DLRM_Projection's branches end in 128 units: dims 16 and 32 divide it, 48 does not
    with pytest.raises(ValueError, match="embedding_dim has contradictory options: embedding_dim 48 with interaction projection"):
        SearchSpace(SpaceConfig(embedding_dim=(16, 48), interaction=(Interaction.DOT, Interaction.PROJECTION)),
                    topo, train_rows=100_000)
    ok = SearchSpace(SpaceConfig(embedding_dim=(16, 32), interaction=(Interaction.PROJECTION,)), topo, train_rows=100_000)
    spec = ok.decode(tuple(n - 1 for n in ok.sizes))
    assert spec.arch.interaction is Interaction.PROJECTION and spec.arch.embedding_dim == 32
    # dot and DCN work with any positive dim
    SearchSpace(SpaceConfig(embedding_dim=(3, 48), interaction=(Interaction.DOT, Interaction.DCN)), topo, train_rows=100_000)


def test_every_bad_option_list_is_reported_at_once_where_it_was_set(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("space:\n  top_width: [0, 64]\n  batch_size: [512, 1024]\n")
    from dataclasses import dataclass, field

    @dataclass(frozen=True)
    class Holder:  # a config with a space section, as a search config has
        space: SpaceConfig = field(default_factory=SpaceConfig)

    overrides = ["space.batch_size=[4096,512,512]", "space.dense_lr={low: 0.1, high: 0.01, num: 3}",
                 "space.embedding_dim=[16,48]", "space.interaction=[dot,projection]"]
    with pytest.raises(config.ConfigError) as err:
        config.load(Holder, path, overrides)
    assert sorted(err.value.problems) == sorted([
        f"{path}: space.top_width options must be positive integers, got [0, 64]",
        "command line: space.batch_size=[4096,512,512]: lists an option twice: [4096, 512, 512]",
        "command line: space.dense_lr={low: 0.1, high: 0.01, num: 3}: must be a log grid with 0 < low <= high "
        "and num >= 1, got low 0.1, high 0.01, num 3",
        "command line: space.embedding_dim=[16,48]: has contradictory options: embedding_dim 48 with interaction "
        "projection: projection_branch1 must end in a multiple of embedding_dim=48, got (512, 128); "
        "projection_branch2 must end in a multiple of embedding_dim=48, got (512, 128)",
    ])


def test_built_in_dlrm_knobs_searched_for_a_users_model_are_refused_each_with_its_fix():
    from recsearch.search.space import user_model_problems

    space = SpaceConfig(bottom_depth=(1,), bottom_width=(64,), top_depth=(1,), top_width=(64, 128),
                        interaction=(Interaction.DOT, Interaction.DCN), dcn_num_layers=(1,), dcn_low_rank_dim=(32,),
                        embedding_dim=(8, 16), batch_size=(512, 1024), model_args={"split": (6, 13)})
    assert user_model_problems(space, None) == []
    assert user_model_problems(space, "examples.two_tower:two_tower") == [
        "space.top_width: [64, 128]: a knob of the built-in DLRM, and the base model examples.two_tower:two_tower "
        "does not receive it: fix it to one option (e.g. space.top_width=[64]); the model's own decisions go "
        "under space.model_args",
        "space.interaction: [dot, dcn]: a knob of the built-in DLRM, and the base model examples.two_tower:two_tower "
        "does not receive it: fix it to one option (e.g. space.interaction=[dot]); the model's own decisions go "
        "under space.model_args",
    ]  # embedding_dim (the tables' width) and batch_size train any model
    fixed = SpaceConfig(**{**space.__dict__, "top_width": (64,), "interaction": (Interaction.DOT,)})
    assert user_model_problems(fixed, "examples.two_tower:two_tower") == []
    # without DCN among the interactions its knobs decide nothing: their default options are left alone
    assert user_model_problems(SpaceConfig(bottom_depth=(1,), bottom_width=(64,), top_depth=(1,), top_width=(64,),
                                           interaction=(Interaction.DOT,)), "m:f") == []
    # its one-line description leaves the DLRM knobs it does not receive out
    text = SearchSpace(fixed, TOPO, train_rows=100_000).describe()
    assert text.startswith("5 decisions, 128 configurations: embedding_dim [8, 16]; batch_size [512, 1024]; "
                           "embedding_lr [log grid 0.01-0.3 x4]; dense_lr [log grid 0.003-0.1 x4]; "
                           "model_args.split [6, 13] (fixed: embedding_optimizer rowwise_adagrad, ")
    assert "bottom_width" not in text and "interaction" not in text and "embedding_optimizer rowwise_adagrad" in text


def test_a_users_model_trial_is_labelled_by_its_own_decisions_not_the_dlrms():
    from recsearch.search.results import describe

    fixed = SpaceConfig(bottom_depth=(1,), bottom_width=(64,), top_depth=(1,), top_width=(64,),
                        interaction=(Interaction.DOT,), embedding_dim=(8,), batch_size=(512,),
                        model_args={"split": (6, 13)})
    space = SearchSpace(fixed, TOPO, train_rows=100_000)
    spec = space.decode(tuple(0 for _ in space.sizes))
    assert describe(spec).startswith("dim 8, batch 512, emb rowwise_adagrad ")
    assert describe(spec).endswith(", split 6") and "bottom" not in describe(spec) and "dot" not in describe(spec)
    dlrm = SearchSpace(SpaceConfig(bottom_depth=(1,), bottom_width=(64,), top_depth=(1,), top_width=(64,),
                                   interaction=(Interaction.DOT,), embedding_dim=(8,), batch_size=(512,)),
                       TOPO, train_rows=100_000)
    assert describe(dlrm.decode(tuple(0 for _ in dlrm.sizes))).startswith("dim 8, bottom 64, top 64, dot, batch 512")
