"""Pair miners on tiny hand-made embeddings: which pairs each one picks, and the contrastive
loss over them computed by hand."""
from __future__ import annotations

import pytest
import torch

from cnnlab.metric_learning.losses import ContrastiveLoss
from cnnlab.metric_learning.miners import MINERS, HardPairMiner, RandomPairMiner, create_miner

# Four images on a line: person 0 at x = 0 and 3.2, person 1 at x = 1 and 5.
#   d(a0,a1)=3.2  d(a0,b0)=1  d(a0,b1)=5  d(a1,b0)=2.2  d(a1,b1)=1.8  d(b0,b1)=4
Z = torch.tensor([[0.0, 0.0], [3.2, 0.0], [1.0, 0.0], [5.0, 0.0]])
LABELS = torch.tensor([0, 0, 1, 1])


def pairs(i, j, same):
    return sorted(zip(i.tolist(), j.tolist(), same.tolist()))


def test_hard_miner_takes_every_positive_and_each_images_nearest_impostor():
    i, j, same = HardPairMiner()(Z, LABELS)
    # positives (0,1), (2,3); nearest other-person image: 0->2 (1.0), 1->3 (1.8), 2->0 (1.0), 3->1 (1.8)
    assert pairs(i, j, same) == sorted([(0, 1, True), (2, 3, True), (0, 2, False), (1, 3, False),
                                        (2, 0, False), (3, 1, False)])


def test_hard_miner_farthest_positives_and_more_negatives():
    i, j, same = HardPairMiner(positives=1, negatives=2)(Z, LABELS)
    expected = [(0, 1, True), (1, 0, True), (2, 3, True), (3, 2, True),      # the one positive each has
                (0, 2, False), (0, 3, False), (1, 3, False), (1, 2, False),  # both impostors, nearest first
                (2, 0, False), (2, 1, False), (3, 1, False), (3, 0, False)]
    assert pairs(i, j, same) == sorted(expected)


def test_contrastive_loss_over_mined_pairs_by_hand():
    i, j, same = HardPairMiner()(Z, LABELS)
    loss = ContrastiveLoss(margin=2.0)(Z[i], Z[j], same)
    # positives d^2: 3.2^2 = 10.24, 4^2 = 16; negatives max(0, 2 - d)^2: 1, 0.04, 1, 0.04
    assert loss.item() == pytest.approx((10.24 + 16 + 1 + 0.04 + 1 + 0.04) / 6, rel=1e-5)


def test_hard_miner_uses_the_losses_distance_and_no_gradients():
    from cnnlab.metric_learning.distances import CosineDistance
    z = torch.tensor([[1.0, 0.0], [10.0, 1.0], [0.0, 1.0], [3.0, 4.0]], requires_grad=True)
    negatives = lambda miner: {(a, b) for a, b, s in pairs(*miner(z, LABELS)) if not s}  # noqa: E731
    # image 0's nearest impostor: image 2 by length (1.41 vs 4.47), image 3 by angle (53 vs 90 degrees)
    assert ((0, 3) in negatives(HardPairMiner(CosineDistance()))
            and (0, 2) not in negatives(HardPairMiner(CosineDistance())))
    assert (0, 2) in negatives(HardPairMiner())
    assert not HardPairMiner()(z, LABELS)[0].requires_grad


def test_a_batch_of_one_person_gives_no_negatives():
    i, j, same = HardPairMiner()(Z[:2], LABELS[:2])
    assert pairs(i, j, same) == [(0, 1, True)]


def test_random_miner_is_the_balanced_batch_pairs():
    g = torch.Generator().manual_seed(0)
    i, j, same = RandomPairMiner()(Z, LABELS, g)
    assert int(same.sum()) == 2 and len(same) == 4 and bool((i < j).all())


def test_registry_and_validation():
    assert set(MINERS.names()) == {"random", "hard"}
    assert isinstance(create_miner("hard", negatives=3), HardPairMiner)
    with pytest.raises(ValueError):
        HardPairMiner(negatives=0)
    with pytest.raises(KeyError):
        create_miner("semi")


def test_an_option_a_miner_would_ignore_is_refused():
    with pytest.raises(ValueError, match="the random miner does not use negatives"):
        create_miner("random", negatives=5)
    with pytest.raises(ValueError, match="the hard miner does not use balance"):
        create_miner("hard", balance=False)
    assert isinstance(create_miner("random", balance=False), RandomPairMiner)


def test_the_face_recipe_refuses_miner_settings_that_do_nothing(capsys):
    from cnnlab.cli import main
    from cnnlab.core.config import build_config
    from cnnlab.core.errors import CnnlabError
    from cnnlab.tasks.faces import FaceTrainConfig
    with pytest.raises(CnnlabError, match="miner_negatives=5 has no effect with miner=random"):
        build_config(FaceTrainConfig, {"miner": "random", "miner_negatives": 5})
    with pytest.raises(CnnlabError, match="balance_pairs=false has no effect with miner=hard"):
        build_config(FaceTrainConfig, {"miner": "hard", "balance_pairs": False})
    assert main(["faces", "train", "--miner", "random", "--miner-negatives", "5", "--out", "/nonexistent/x"]) == 2
    assert "miner_negatives=5 has no effect with miner=random" in capsys.readouterr().err
