"""update.py's own arithmetic; the update itself is tested through training runs (test_train.py, test_faults.py)."""

from powerflow_lite.update import micro_batches


def test_micro_batches_keep_groups_whole():
    assert micro_batches(12, 4, 1) == [slice(0, 4), slice(4, 8), slice(8, 12)]
    assert micro_batches(12, 5, 3) == [slice(0, 3), slice(3, 6), slice(6, 9), slice(9, 12)]
    assert micro_batches(12, 2, 3) == [slice(0, 3), slice(3, 6), slice(6, 9), slice(9, 12)]  # never split a group
