import math

import pytest
import torch

from cnnlab.metric_learning.distances import DISTANCES, CosineDistance, EuclideanDistance, create_distance
from cnnlab.metric_learning.losses import ContrastiveLoss

DTYPES = [torch.float32, torch.float64]


# --- distances -------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_euclidean_distance_values(dtype):
    a = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.5, -1.0]], dtype=dtype)
    b = torch.tensor([[3.0, 4.0], [1.0, 1.0], [-0.1, 0.7]], dtype=dtype)
    d = EuclideanDistance().paired(a, b)
    assert d.dtype == dtype
    torch.testing.assert_close(d, torch.tensor([5.0, 0.0, math.sqrt(3.25)], dtype=dtype), atol=2e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_euclidean_gradient_is_finite_and_value_near_zero_at_d0(dtype):
    a = torch.tensor([[0.3, -0.7]], dtype=dtype, requires_grad=True)
    b = a.detach().clone().requires_grad_(True)
    d = EuclideanDistance().paired(a, b)
    assert 0.0 <= d.item() < 1e-5
    d.sum().backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    # The unguarded formula is what this protects against: it really gives NaN here.
    naive = (a - b).pow(2).sum(1).sqrt()
    (g,) = torch.autograd.grad(naive.sum(), a)
    assert torch.isnan(g).any()


def test_euclidean_gradient_away_from_zero_is_the_unit_direction():
    a = torch.tensor([[3.0, 4.0]], requires_grad=True)
    EuclideanDistance().paired(a, torch.zeros(1, 2)).sum().backward()
    torch.testing.assert_close(a.grad, torch.tensor([[0.6, 0.8]]))


@pytest.mark.parametrize("name", DISTANCES.names())
def test_compute_mat_agrees_with_paired(name):
    distance = create_distance(name)
    a, b = torch.randn(5, 7, dtype=torch.float64), torch.randn(4, 7, dtype=torch.float64)
    matrix = distance.compute_mat(a, b)
    assert matrix.shape == (5, 4)
    rows, cols = torch.meshgrid(torch.arange(5), torch.arange(4), indexing="ij")
    expected = distance.paired(a[rows.flatten()], b[cols.flatten()]).view(5, 4)
    torch.testing.assert_close(matrix, expected)


def test_cosine_distance_values_and_scale_invariance():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [2.0, 2.0]])
    b = torch.tensor([[0.0, 3.0], [-5.0, 0.0], [1.0, 1.0]])
    torch.testing.assert_close(CosineDistance().paired(a, b), torch.tensor([1.0, 2.0, 0.0]), atol=1e-6, rtol=0)


def test_distance_registry_and_shape_checks():
    assert isinstance(create_distance("l2"), EuclideanDistance)
    assert isinstance(create_distance("cosine"), CosineDistance)
    with pytest.raises(KeyError, match="euclidean"):
        create_distance("manhattan")
    with pytest.raises(ValueError, match="as many rows"):
        EuclideanDistance().paired(torch.zeros(3, 2), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="N x D"):
        EuclideanDistance().compute_mat(torch.zeros(3, 2), torch.zeros(2, 3))


# --- contrastive loss ------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_contrastive_loss_on_hand_placed_points(dtype):
    # margin 2; by hand:
    #   same, d = 5            -> 5^2             = 25
    #   same, d = 0            -> 0
    #   different, d = 1       -> (2 - 1)^2       = 1
    #   different, d = 5       -> max(0, 2 - 5)^2 = 0
    #   different, d = sqrt(3.25) = 1.8027756377  -> (2 - d)^2 = 7.25 - 4 sqrt(3.25) = 0.0388974491
    a = torch.tensor([[0, 0], [1, 1], [0, 0], [3, 4], [0.5, -1.0]], dtype=dtype)
    b = torch.tensor([[3, 4], [1, 1], [1, 0], [0, 0], [-0.1, 0.7]], dtype=dtype)
    same = torch.tensor([1, 1, 0, 0, 0])
    loss_fn = ContrastiveLoss(margin=2.0)
    per_pair = loss_fn.per_pair(a, b, same)
    expected = torch.tensor([25.0, 0.0, 1.0, 0.0, 0.0388974491], dtype=dtype)
    torch.testing.assert_close(per_pair, expected, atol=1e-6, rtol=1e-6)
    loss = loss_fn(a, b, same)
    assert loss.dtype == dtype
    assert loss.item() == pytest.approx(26.0388974491 / 5, rel=1e-6)


def test_contrastive_loss_accepts_bool_labels_and_cosine_distance():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    loss_fn = ContrastiveLoss(margin=1.5, distance=CosineDistance())
    # cosine distances: 1 and 1 - 1/sqrt(2); pair 0 different -> (1.5 - 1)^2, pair 1 same -> d^2
    expected = ((1.5 - 1.0) ** 2 + (1 - 1 / math.sqrt(2)) ** 2) / 2
    assert loss_fn(a, b, torch.tensor([False, True])).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_loss_for_identical_positives_and_far_negatives(dtype):
    x = torch.randn(6, 3, dtype=dtype)
    loss_fn = ContrastiveLoss(margin=1.0)
    assert loss_fn(x, x.clone(), torch.ones(6)).item() == pytest.approx(0.0, abs=1e-10)
    far = x + torch.tensor([10.0, 0.0, 0.0], dtype=dtype)
    assert loss_fn(x, far, torch.zeros(6)).item() == 0.0
    # ... and exactly at the margin too
    at_margin = x + torch.tensor([0.0, 1.0, 0.0], dtype=dtype)
    assert loss_fn(x, at_margin, torch.zeros(6)).item() == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("label", [0, 1])
def test_contrastive_gradient_is_finite_at_d0(label):
    a = torch.tensor([[0.2, 0.4]], requires_grad=True)
    b = a.detach().clone().requires_grad_(True)
    loss = ContrastiveLoss(margin=1.0)(a, b, torch.tensor([label]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    # A collapsed negative pair costs the full margin squared.
    assert loss.item() == pytest.approx(1.0 if label == 0 else 0.0, abs=1e-5)


def test_contrastive_gradients_match_the_formula():
    a = torch.tensor([[0.0, 0.0], [0.0, 0.0]], requires_grad=True)
    b = torch.tensor([[0.3, 0.4], [0.3, 0.4]])  # d = 0.5
    ContrastiveLoss(margin=2.0)(a, b, torch.tensor([1, 0])).backward()
    # same: d(d^2)/da = 2 (a - b); different: d((m - d)^2)/da = -2 (m - d) (a - b) / d; both / N
    expected = torch.stack([2 * (a[0] - b[0]), -2 * (2.0 - 0.5) * (a[1] - b[1]) / 0.5]).detach() / 2
    torch.testing.assert_close(a.grad, expected)


def test_pairs_indexed_into_one_batch_equal_the_pairs_written_out():
    # Training embeds each image of a batch once and indexes the mined pairs into it,
    # `loss(z[i], z[j], same)`: the loss and every image's gradient (summed over the pairs it
    # is in) are those of the pairs written out one by one.
    embeddings = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    i, j = torch.tensor([0, 0, 1, 5]), torch.tensor([1, 2, 7, 6])
    same = torch.tensor([1, 0, 0, 1])
    loss_fn = ContrastiveLoss(margin=1.3)
    loss = loss_fn(embeddings[i], embeddings[j], same)
    written_out = sum(loss_fn(embeddings[[a]], embeddings[[b]], same[[k]])
                      for k, (a, b) in enumerate(zip(i.tolist(), j.tolist()))) / len(i)
    torch.testing.assert_close(loss, written_out)
    torch.testing.assert_close(torch.autograd.grad(loss, embeddings)[0],
                               torch.autograd.grad(written_out, embeddings)[0])
    with pytest.raises(ValueError, match="as many rows"):
        loss_fn(embeddings[i], embeddings[j[:2]], same)


def test_per_pair_and_distances_returns_the_distances_the_loss_used():
    # The training step reports mean same/different distances from these: they must be the
    # loss's own distances (its distance object, its eps), and the loss must not change.
    a, b = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    same = torch.tensor([1, 0, 1, 0, 0, 1])
    for loss_fn in (ContrastiveLoss(margin=1.3), ContrastiveLoss(margin=0.4, distance=CosineDistance())):
        per_pair, d = loss_fn.per_pair_and_distances(a, b, same)
        torch.testing.assert_close(d, loss_fn.distance.paired(a, b))
        torch.testing.assert_close(per_pair, loss_fn.per_pair(a, b, same))
        m = loss_fn.margin
        torch.testing.assert_close(per_pair, torch.where(same.bool(), d ** 2, (m - d).clamp(min=0) ** 2))


@pytest.mark.parametrize("margin", [0.0, -1.0, float("nan")])
def test_margin_must_be_positive(margin):
    with pytest.raises(ValueError, match="margin"):
        ContrastiveLoss(margin=margin)


def test_label_and_empty_batch_validation():
    loss_fn = ContrastiveLoss()
    with pytest.raises(ValueError, match="one label per pair"):
        loss_fn(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(2))
    with pytest.raises(ValueError, match="zero pairs"):
        loss_fn(torch.zeros(0, 2), torch.zeros(0, 2), torch.zeros(0))


def test_agrees_with_pytorch_metric_learning():
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning.distances import LpDistance
    from pytorch_metric_learning.losses import ContrastiveLoss as PmlContrastiveLoss
    from pytorch_metric_learning.reducers import DoNothingReducer

    # pml's ContrastiveLoss gives per pair relu(d - pos_margin) and relu(neg_margin - d);
    # with pos_margin 0 and no reduction, squaring those is exactly Hadsell et al.'s terms.
    margin = 1.2
    reference = PmlContrastiveLoss(pos_margin=0.0, neg_margin=margin, reducer=DoNothingReducer(),
                                    distance=LpDistance(normalize_embeddings=False, p=2, power=1))
    g = torch.Generator().manual_seed(3)
    embeddings = torch.randn(20, 6, generator=g, dtype=torch.float64) * 0.5
    i, j = torch.arange(0, 10), torch.arange(10, 20)
    same = torch.tensor([1, 0] * 5)
    pos, neg = same.bool(), ~same.bool()
    out = reference(embeddings, indices_tuple=(i[pos], j[pos], i[neg], j[neg]))
    ours = ContrastiveLoss(margin=margin).per_pair(embeddings[i], embeddings[j], same)
    torch.testing.assert_close(ours[pos], out["pos_loss"]["losses"] ** 2)
    torch.testing.assert_close(ours[neg], out["neg_loss"]["losses"] ** 2)
    assert (ours[neg] > 0).any() and (ours[neg] == 0).any()  # both sides of the margin exercised


# --- margin softmax (CosFace, ArcFace) ----------------------------------------------------

def margin_loss_with(kind, weight, **options):
    from cnnlab.metric_learning.losses import MarginSoftmaxLoss
    loss = MarginSoftmaxLoss(kind, weight.shape[0] // options.get("subcenters", 1), weight.shape[1], **options)
    with torch.no_grad():
        loss.weight.copy_(weight)
    return loss


@pytest.mark.parametrize("kind", ["cosface", "arcface"])
def test_margin_softmax_by_hand_on_two_classes(kind):
    # Class 0 along x, class 1 along y; one embedding at 60 degrees from x, labelled 0.
    # cos(theta_0) = 1/2, cos(theta_1) = sqrt(3)/2 (30 degrees from y).
    loss = margin_loss_with(kind, torch.tensor([[2.0, 0.0], [0.0, 5.0]]), margin=0.2, scale=10.0)
    z = torch.tensor([[3 * 0.5, 3 * math.sqrt(3) / 2]])  # any length: the loss normalises
    target = 0.5 - 0.2 if kind == "cosface" else math.cos(math.pi / 3 + 0.2)
    other = math.sqrt(3) / 2
    expected = -math.log(math.exp(10 * target) / (math.exp(10 * target) + math.exp(10 * other)))
    assert loss(z, torch.tensor([0])).item() == pytest.approx(expected, rel=1e-5)


def test_arcface_past_pi_minus_m_keeps_the_loss_increasing_in_the_angle():
    # theta_y = 170 degrees with m = 0.5 rad: cos(theta + m) would have turned up again.
    m, theta = 0.5, math.radians(170)
    loss = margin_loss_with("arcface", torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), margin=m, scale=1.0)
    z = torch.tensor([[math.cos(theta), math.sin(theta)]])
    logits = loss.logits(z, torch.tensor([0]))
    assert logits[0, 0].item() == pytest.approx(math.cos(theta) - m * math.sin(m), rel=1e-5)
    assert logits[0, 1].item() == pytest.approx(math.cos(math.pi - theta), rel=1e-5)


@pytest.mark.parametrize("kind", ["cosface", "arcface"])
def test_margin_softmax_matches_pytorch_metric_learning(kind):
    from pytorch_metric_learning import losses as pml

    torch.manual_seed(0)
    weight = torch.randn(7, 5, dtype=torch.float64)
    z, labels = torch.randn(12, 5, dtype=torch.float64), torch.randint(0, 7, (12,))
    ours = margin_loss_with(kind, weight, scale=30.0).double()
    if kind == "cosface":
        reference = pml.CosFaceLoss(num_classes=7, embedding_size=5, margin=0.35, scale=30.0)
    else:
        reference = pml.ArcFaceLoss(num_classes=7, embedding_size=5, margin=math.degrees(0.5), scale=30.0)
    with torch.no_grad():
        reference.W.data = weight.t().clone()
    torch.testing.assert_close(ours(z, labels).double(), reference(z, labels).double(), rtol=1e-6, atol=1e-6)


def test_subcenter_arcface_by_hand_takes_each_class_s_nearest_subcenter():
    # Class 0's sub-centers along x and y, class 1's along -x and -y; one embedding at 60
    # degrees from x, labelled 0: class 0's cosine is its y sub-center's, sqrt(3)/2 (30 degrees),
    # class 1's the -x one's, -1/2 (120 degrees), not the -y one's, -sqrt(3)/2.
    weight = torch.tensor([[1.0, 0.0], [0.0, 3.0], [-2.0, 0.0], [0.0, -1.0]])
    loss = margin_loss_with("arcface", weight, margin=0.2, scale=2.0, subcenters=2)
    z = torch.tensor([[0.5, math.sqrt(3) / 2]])
    target, other = math.cos(math.pi / 6 + 0.2), -0.5
    torch.testing.assert_close(loss.logits(z, torch.tensor([0])), torch.tensor([[2 * target, 2 * other]]))
    expected = -math.log(math.exp(2 * target) / (math.exp(2 * target) + math.exp(2 * other)))
    assert loss(z, torch.tensor([0])).item() == pytest.approx(expected, rel=1e-5)
    assert "subcenters=2" in repr(loss) and loss.num_classes == 2


def test_subcenter_arcface_matches_pytorch_metric_learning():
    from pytorch_metric_learning import losses as pml

    torch.manual_seed(0)
    weight = torch.randn(7 * 3, 5, dtype=torch.float64)
    z, labels = torch.randn(12, 5, dtype=torch.float64), torch.randint(0, 7, (12,))
    ours = margin_loss_with("arcface", weight, scale=30.0, subcenters=3).double()
    reference = pml.SubCenterArcFaceLoss(num_classes=7, embedding_size=5, margin=math.degrees(0.5), scale=30.0,
                                         sub_centers=3)
    with torch.no_grad():
        reference.W.data = weight.t().clone()  # pml's columns are class-major too: class c, sub-center k at c*3 + k
    torch.testing.assert_close(ours(z, labels).double(), reference(z, labels).double(), rtol=1e-6, atol=1e-6)


def test_imprinted_subcenters_take_each_class_s_images_in_turn():
    from cnnlab.metric_learning.losses import MarginSoftmaxLoss
    loss = MarginSoftmaxLoss("arcface", 2, 2, subcenters=2)
    # Class 0's images in order: (3, 0), (0, 1), (0, -2): the 1st and 3rd go to sub-center 0,
    # (1, 0) + (0, -1) -> (1, -1)/sqrt 2, the 2nd to sub-center 1, (0, 1). Class 1 has one image,
    # (-4, 0): sub-center 0 takes it, sub-center 1 (no image of its own) the class's mean, the same.
    loss.imprint(torch.tensor([[3.0, 0.0], [-4.0, 0.0], [0.0, 1.0], [0.0, -2.0]]), torch.tensor([0, 1, 0, 0]))
    r = 1 / math.sqrt(2)
    torch.testing.assert_close(loss.weight.data, torch.tensor([[r, -r], [0.0, 1.0], [-1.0, 0.0], [-1.0, 0.0]]))
    with pytest.raises(ValueError, match="1 classes have no embedding"):
        loss.imprint(torch.ones(2, 2), torch.tensor([0, 0]))


def test_imprinted_class_vectors_are_the_normalised_means_of_normalised_embeddings():
    from cnnlab.metric_learning.losses import MarginSoftmaxLoss
    loss = MarginSoftmaxLoss("cosface", 2, 2)
    # Class 0: (3, 0) and (0, 1) normalise to (1, 0) and (0, 1), mean (1/2, 1/2) -> (1, 1)/sqrt 2.
    # Class 1: one embedding, (0, -4) -> (0, -1).
    loss.imprint(torch.tensor([[3.0, 0.0], [0.0, -4.0], [0.0, 1.0]]), torch.tensor([0, 1, 0]))
    r = 1 / math.sqrt(2)
    torch.testing.assert_close(loss.weight.data, torch.tensor([[r, r], [0.0, -1.0]]))
    # The logits then start at each embedding's cosine to its class's mean direction.
    assert loss.logits(torch.tensor([[0.0, -2.0]]), torch.tensor([0]))[0, 1].item() == pytest.approx(64.0)
    with pytest.raises(ValueError, match="1 classes have no embedding"):
        MarginSoftmaxLoss("cosface", 3, 2).imprint(torch.ones(2, 2), torch.tensor([0, 1]))


def test_margin_softmax_refuses_bad_settings():
    from cnnlab.metric_learning.losses import MarginSoftmaxLoss
    with pytest.raises(ValueError, match="one of cosface, arcface"):
        MarginSoftmaxLoss("sphereface", 3, 4)
    with pytest.raises(ValueError, match="at least 2 classes"):
        MarginSoftmaxLoss("cosface", 1, 4)
    with pytest.raises(ValueError, match="scale > 0"):
        MarginSoftmaxLoss("arcface", 3, 4, scale=0)
    with pytest.raises(ValueError, match="subcenters must be >= 1"):
        MarginSoftmaxLoss("arcface", 3, 4, subcenters=0)
    assert MarginSoftmaxLoss("cosface", 3, 4).margin == 0.35 and MarginSoftmaxLoss("arcface", 3, 4).margin == 0.5


@pytest.mark.parametrize("kind", ["cosface", "arcface"])
def test_margin_softmax_separates_classes_when_trained(kind):
    # Embedding and class weights trained together on 4 noisy clusters: the margin loss must
    # drive every point to its own class's weight (the gradient reaches both).
    torch.manual_seed(0)
    labels = torch.arange(40) % 4
    x = 2 * torch.randn(4, 6)[labels] + torch.randn(40, 6)
    embed = torch.nn.Linear(6, 3)
    loss = margin_loss_with(kind, torch.randn(4, 3), scale=8.0)
    optimizer = torch.optim.Adam([*embed.parameters(), *loss.parameters()], lr=0.05)
    first = loss(embed(x), labels).item()
    for _ in range(300):
        optimizer.zero_grad()
        value = loss(embed(x), labels)
        value.backward()
        optimizer.step()
    assert value.item() < 0.5 * first
    with torch.no_grad():  # plain cosine logits (no margin): each point nearest its class
        predicted = (torch.nn.functional.normalize(embed(x), dim=1) @ torch.nn.functional.normalize(
            loss.weight, dim=1).t()).argmax(1)
    assert (predicted == labels).float().mean() > 0.9
