"""The data schedule: deterministic, every row once per epoch, steps independent of the split,
micro-batches of similar length."""

import random

from alignkit.train.loop import make_schedule


def _lengths(n=200, seed=0):
    rng = random.Random(seed)
    return [rng.randint(20, 400) for _ in range(n)]


def test_every_row_once_per_epoch_and_deterministic():
    lengths = _lengths()
    a = make_schedule(lengths, 4, 2, 1.0, seed=3)
    assert sorted(i for mb in a for i in mb) == list(range(200))
    assert a == make_schedule(lengths, 4, 2, 1.0, seed=3)
    assert a != make_schedule(lengths, 4, 2, 1.0, seed=4)


def test_step_contents_do_not_depend_on_the_split():
    lengths = _lengths()
    one_by_eight = make_schedule(lengths, 1, 8, 1.0, seed=0)
    eight_by_one = make_schedule(lengths, 8, 1, 1.0, seed=0)
    steps_a = [sorted(sum(one_by_eight[s:s + 8], [])) for s in range(0, len(one_by_eight), 8)]
    steps_b = [sorted(mb) for mb in eight_by_one]
    assert steps_a == steps_b


def test_micro_batches_group_similar_lengths():
    lengths = _lengths()
    grouped = make_schedule(lengths, 4, 1, 1.0, seed=0)
    pad = sum(4 * max(lengths[i] for i in mb) - sum(lengths[i] for i in mb) for mb in grouped)
    rng = random.Random(0)
    order = list(range(200))
    rng.shuffle(order)
    plain = [order[i:i + 4] for i in range(0, 200, 4)]
    pad_plain = sum(4 * max(lengths[i] for i in mb) - sum(lengths[i] for i in mb) for mb in plain)
    assert pad < 0.25 * pad_plain


def test_fractional_epochs():
    assert len(make_schedule(_lengths(), 4, 1, 0.5, seed=0)) == 25
    assert len(make_schedule(_lengths(), 4, 1, 2.0, seed=0)) == 100
