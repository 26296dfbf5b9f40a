"""P x K sampling and in-batch pair formation."""
import numpy as np
import pytest
import torch

from cnnlab.core.errors import CnnlabError
from cnnlab.data.pairs import batch_pairs, sample_pairs
from cnnlab.data.samplers import PKSampler

# person q has COUNTS[q] images; people 7 and 8 have a single image (negatives only)
COUNTS = [5, 4, 2, 3, 6, 2, 4, 1, 1]
LABELS = np.repeat(np.arange(len(COUNTS)), COUNTS)
rng = np.random.default_rng(0)
LABELS = LABELS[rng.permutation(len(LABELS))]   # images of a person are not contiguous


def test_pk_batches_shape_and_content():
    sampler = PKSampler(LABELS, p=3, k=3, seed=0)
    assert len(sampler) == 7 // 3
    seen_people = []
    for batch in sampler:
        assert batch.dtype == torch.int64
        rows = batch.numpy()
        assert len(set(rows.tolist())) == len(rows)                # no image twice in a batch
        people, counts = np.unique(LABELS[rows], return_counts=True)
        assert len(people) == 3
        for q, c in zip(people, counts):
            assert c == min(3, COUNTS[q]) and COUNTS[q] >= 2      # single-image people never as P
        seen_people += people.tolist()
    assert len(set(seen_people)) == len(seen_people)              # a person once per epoch


def test_pk_is_deterministic_per_seed_and_epoch():
    a, b = PKSampler(LABELS, 2, 2, seed=1), PKSampler(LABELS, 2, 2, seed=1)
    same_epoch = [torch.equal(x, y) for x, y in zip(a.batches(0), b.batches(0))]
    assert all(same_epoch)
    a.set_epoch(1)
    assert [x.tolist() for x in a] == [x.tolist() for x in b.batches(1)]
    assert [x.tolist() for x in a.batches(0)] != [x.tolist() for x in a.batches(1)]
    c = PKSampler(LABELS, 2, 2, seed=2)
    assert [x.tolist() for x in c.batches(0)] != [x.tolist() for x in b.batches(0)]


def test_pk_adds_single_image_people_as_impostors_without_changing_the_people_drawn():
    plain, with_singles = PKSampler(LABELS, p=2, k=2, seed=3), PKSampler(LABELS, p=2, k=2, seed=3, singles=1)
    single_rows = {int(r) for r in np.flatnonzero(np.isin(LABELS, [7, 8]))}
    for epoch in range(3):
        seen = []
        for a, b in zip(plain.batches(epoch), with_singles.batches(epoch)):
            # The same people's images first, then one single-image person's image.
            assert b[:-1].tolist() == a.tolist() and int(b[-1]) in single_rows
            seen.append(int(b[-1]))
        # 3 batches, 2 singles: they cycle in a seeded order, both drawn.
        assert set(seen) == single_rows and seen[0] != seen[1] and seen[2] == seen[0]
    # Never more per batch than there are: an image is never twice in a batch.
    greedy = PKSampler(LABELS, p=2, k=2, seed=3, singles=5)
    assert greedy.singles_per_batch == 2
    for batch in greedy.batches(0):
        assert len(set(batch.tolist())) == len(batch) and single_rows <= set(batch.tolist())
    with pytest.raises(CnnlabError, match="singles >= 0"):
        PKSampler(LABELS, p=2, k=2, singles=-1)


def test_pk_rejects_impossible_settings():
    with pytest.raises(CnnlabError, match="p=8"):
        PKSampler(LABELS, p=8, k=2)
    with pytest.raises(CnnlabError):
        PKSampler(LABELS, p=2, k=1)


def test_batch_pairs_all_and_balanced():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 3])
    i, j, same = batch_pairs(labels, balance=False)
    assert len(i) == 21 and torch.all(i < j)
    assert torch.equal(same, labels[i] == labels[j]) and int(same.sum()) == 4
    g = torch.Generator().manual_seed(0)
    bi, bj, bsame = batch_pairs(labels, balance=True, generator=g)
    assert int(bsame.sum()) == 4 and int((~bsame).sum()) == 4
    assert torch.equal(bsame, labels[bi] == labels[bj]) and torch.all(bi < bj)
    pairs = set(zip(bi.tolist(), bj.tolist()))
    assert len(pairs) == 8
    assert {(a, b) for a, b, s in zip(i.tolist(), j.tolist(), same.tolist()) if s} <= pairs
    # seeded: the same generator state gives the same negatives
    b2 = batch_pairs(labels, True, torch.Generator().manual_seed(0))
    assert torch.equal(b2[0], bi) and torch.equal(b2[1], bj)


def test_one_embedding_pass_covers_every_pair():
    # The point of in-batch pairs: distances come from indexing one embedding matrix.
    emb = torch.randn(6, 4, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    i, j, same = batch_pairs(labels, balance=False)
    d = (emb[i] - emb[j]).pow(2).sum(1)
    d.sum().backward()
    assert emb.grad.abs().sum(1).gt(0).all()
    assert torch.allclose(d, torch.cdist(emb, emb).pow(2)[i, j], atol=1e-5)


def test_sample_pairs_distinct_seeded_and_capped():
    i, j, same = sample_pairs(LABELS, 10, seed=0)
    assert same.sum() == 10 and (~same).sum() == 10
    assert np.array_equal(LABELS[i] == LABELS[j], same)
    assert len(set(zip(i.tolist(), j.tolist()))) == 20 and np.all(i < j)
    again = sample_pairs(LABELS, 10, seed=0)
    assert all(np.array_equal(x, y) for x, y in zip((i, j, same), again))
    n_possible = sum(c * (c - 1) // 2 for c in COUNTS)
    i, j, same = sample_pairs(LABELS, 1000, 5, seed=0)
    assert same.sum() == n_possible and (~same).sum() == 5


def test_pk_reshuffles_people_every_epoch_so_the_leftovers_train_too():
    # 7 eligible people, P = 3: each epoch one person waits. A person order that does not
    # change with the epoch would leave the same one out for ever.
    sampler = PKSampler(LABELS, p=3, k=2, seed=0)
    orders, seen = [], set()
    for epoch in range(12):
        order = [int(q) for batch in sampler.batches(epoch) for q in dict.fromkeys(LABELS[batch.numpy()].tolist())]
        assert len(order) == 6
        orders.append(tuple(order))
        seen.update(order)
    assert len(set(orders)) > 1
    assert seen == {q for q, c in enumerate(COUNTS) if c >= 2}
