"""The `0 w 0 w` generator, its loss mask and the accuracy metric."""
import pytest
import torch

from bench.duplication.data import (
    SEPARATOR, DuplicationTask, loss_mask, make_batch, make_generator, masked_accuracy, masked_accuracy_counts,
)

TASK = DuplicationTask(half_len=9, n_symbols=5)


def test_sequences_are_zero_w_zero_w():
    batch = make_batch(TASK, 16, make_generator(3))
    seq = batch.inputs
    assert seq.shape == (16, TASK.seq_len) and seq.dtype == torch.long
    h = TASK.half_len
    assert (seq[:, 0] == SEPARATOR).all() and (seq[:, h] == SEPARATOR).all()
    first, second = seq[:, 1:h], seq[:, h + 1:]
    assert first.shape[1] == TASK.w_len == h - 1
    assert torch.equal(first, second)
    assert first.min() >= 1 and first.max() <= TASK.n_symbols
    # w varies between sequences and uses the whole alphabet
    assert len({tuple(row.tolist()) for row in first}) > 1
    assert set(first.unique().tolist()) == set(range(1, TASK.n_symbols + 1))


def test_targets_are_the_next_symbol():
    batch = make_batch(TASK, 4, make_generator(0))
    assert torch.equal(batch.targets[:, :-1], batch.inputs[:, 1:])


def test_same_seed_same_batches_other_seed_other_batches():
    a, b, c = make_generator(7), make_generator(7), make_generator(8)
    for _ in range(3):
        x, y, z = (make_batch(TASK, 8, g).inputs for g in (a, b, c))
        assert torch.equal(x, y)
        assert not torch.equal(x, z)


def test_mask_selects_exactly_the_second_copy_of_w():
    batch = make_batch(TASK, 6, make_generator(1))
    mask = batch.mask
    assert mask.dtype == torch.bool and mask.shape == batch.inputs.shape
    assert torch.equal(mask, loss_mask(TASK, 6))
    assert mask.sum(dim=1).tolist() == [TASK.w_len] * 6
    w_second = batch.inputs[:, TASK.half_len + 1:]
    # the targets the mask selects are, in order, the symbols of the second copy of w
    assert torch.equal(batch.targets[mask].view(6, TASK.w_len), w_second)
    # ... and nothing of the first half nor the separator is ever a scored target
    positions = mask.nonzero()[:, 1] + 1  # position of the predicted symbol
    assert positions.min() == TASK.half_len + 1 and positions.max() == TASK.seq_len - 1


def test_task_refuses_bad_sizes_naming_the_field():
    with pytest.raises(ValueError, match="half_len"):
        DuplicationTask(half_len=1, n_symbols=4)
    with pytest.raises(ValueError, match="n_symbols"):
        DuplicationTask(half_len=4, n_symbols=0)


def test_masked_accuracy_on_hand_made_logits():
    targets = torch.tensor([[1, 2, 3, 0], [2, 2, 1, 0]])
    mask = torch.tensor([[False, True, True, False], [True, True, True, False]])
    pred = torch.tensor([[0, 2, 1, 0], [2, 1, 1, 3]])  # right at (0,1), (1,0), (1,2); wrong at (0,2), (1,1)
    logits = torch.nn.functional.one_hot(pred, num_classes=4).float() * 5.0
    assert masked_accuracy_counts(logits, targets, mask) == (3, 5)
    assert masked_accuracy(logits, targets, mask) == pytest.approx(3 / 5)
    # unmasked positions do not count, however wrong they are
    assert masked_accuracy(logits, targets, torch.zeros_like(mask).index_fill_(1, torch.tensor([1]), True)) == 0.5
    with pytest.raises(ValueError, match="mask"):
        masked_accuracy(logits, targets, torch.zeros_like(mask))
