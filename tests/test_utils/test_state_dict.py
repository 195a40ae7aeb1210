"""mmslora.utils.state_dict: a checkpoint's keys and shapes against a model's."""

import torch

from mmslora.utils.state_dict import mismatch_summary, state_dict_mismatches


def test_mismatches_and_summary():
    expected = {'a': torch.zeros(2), 'b': torch.zeros(3), 'c': torch.zeros(1)}
    state = {'a': torch.zeros(2), 'b': torch.zeros(4), 'd': torch.zeros(1)}
    missing, unexpected, shapes = state_dict_mismatches(expected, state)
    assert (missing, unexpected, shapes) == (['c'], ['d'], ['b: file (4,) vs model (3,)'])
    assert mismatch_summary(missing, unexpected, shapes) == (
        "missing keys ['c'] (1 in all); unexpected keys ['d'] (1 in all); shape "
        "mismatches ['b: file (4,) vs model (3,)'] (1 in all)"
    )
    assert mismatch_summary([str(i) for i in range(7)], [], []).startswith(
        "missing keys ['0', '1', '2', '3', '4'] ... (7 in all)"
    )
