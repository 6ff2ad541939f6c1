import pytest

from recsearch.data.loader import NpyBatchLoader
from recsearch.model.dlrm import build_model, table_rows, table_specs
from recsearch.types import ArchSpec, Interaction
from tests.conftest import write_dataset


@pytest.mark.parametrize("interaction", list(Interaction))
def test_forward_shapes_for_every_interaction(tmp_path, interaction):
    write_dataset(tmp_path)
    arch = ArchSpec(embedding_dim=8, bottom_mlp=(16, 8), top_mlp=(16, 1), interaction=interaction,
                    dcn_num_layers=2, dcn_low_rank_dim=4, projection_branch1=(16, 16), projection_branch2=(16, 8))
    rows = table_rows([970] * 26, max_rows_per_table=50)
    assert rows == [50] * 26
    model = build_model(arch, rows, device="cpu")
    batch = next(iter(NpyBatchLoader(tmp_path, "train", 12, num_embeddings_per_feature=rows)))
    loss, (_, logits, labels) = model(batch)
    assert logits.shape == (12,) and labels.shape == (12,) and loss.ndim == 0
    loss.backward()
    ebc = model.model.sparse_arch.embedding_bag_collection
    assert [c.name for c in ebc.embedding_bag_configs()] == [f"t_cat_{i}" for i in range(26)]


def test_table_specs_and_arch_validation():
    specs = table_specs(ArchSpec(), [10, 20] + [5] * 24)
    assert specs[1].num_rows == 20 and specs[1].dim == 16 and specs[1].size_bytes == 20 * 16 * 4
    with pytest.raises(ValueError, match="projection_branch1 must end in a multiple of embedding_dim"):
        ArchSpec(interaction=Interaction.PROJECTION, projection_branch1=(64, 20))
    with pytest.raises(ValueError, match="bottom_mlp must end in embedding_dim"):
        ArchSpec(embedding_dim=8)


def test_the_gather_dot_interaction_computes_torchrecs_values_and_gradients():
    """Same outputs and the same gradients as TorchRec's InteractionArch (which it replaces in the
    dot DLRM for speed), bit for bit."""
    import torch
    from torchrec.models.dlrm import InteractionArch

    from recsearch.model.dlrm import GatherDotInteraction

    torch.manual_seed(0)
    dense, sparse = torch.randn(32, 8, requires_grad=True), torch.randn(32, 26, 8, requires_grad=True)
    dense2, sparse2 = dense.detach().clone().requires_grad_(), sparse.detach().clone().requires_grad_()
    ours, theirs = GatherDotInteraction(26)(dense2, sparse2), InteractionArch(26)(dense, sparse)
    assert ours.shape == (32, 8 + 27 * 26 // 2) and torch.equal(ours, theirs)
    grad = torch.randn_like(ours)
    ours.backward(grad)
    theirs.backward(grad)
    assert torch.equal(dense2.grad, dense.grad) and torch.equal(sparse2.grad, sparse.grad)


def test_the_view_sparse_arch_gives_sparse_arch_values_and_gradients():
    """The single engine's SparseArch returns a view of the pooled output instead of splitting and
    concatenating it: the same values and the same table gradients as TorchRec's."""
    import torch
    from torchrec.models.dlrm import SparseArch
    from torchrec.modules.embedding_configs import EmbeddingBagConfig
    from torchrec.modules.embedding_modules import EmbeddingBagCollection
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    from recsearch.model.dlrm import ViewSparseArch

    torch.manual_seed(0)
    tables = [EmbeddingBagConfig(name=f"t{i}", embedding_dim=4, num_embeddings=10, feature_names=[f"f{i}"]) for i in range(3)]
    ebc = EmbeddingBagCollection(tables=tables)
    features = KeyedJaggedTensor(
        keys=["f0", "f1", "f2"], values=torch.tensor([1, 2, 3, 4, 5, 6, 7, 8, 9, 0]),
        lengths=torch.tensor([1, 2, 1, 1, 2, 3]),  # 3 keys x 2 rows; multi-hot bags pool (sum) too
    )
    view_arch, torchrec_arch = ViewSparseArch(ebc), SparseArch(ebc)
    ours = view_arch(features)
    grad = torch.randn_like(ours)
    ours.backward(grad)
    our_grads = [p.grad.clone() for p in ebc.parameters()]
    ebc.zero_grad()
    theirs = torchrec_arch(features)
    theirs.backward(grad)
    assert ours.shape == (2, 3, 4) and torch.equal(ours, theirs)
    assert all(torch.equal(a, p.grad) for a, p in zip(our_grads, ebc.parameters()))
    assert view_arch._viewable
