"""mmslora.ParameterReportHook: the parameter report in the log when training starts."""

import types

import torch.nn as nn

from mmslora.engine.hooks import ParameterReportHook
from mmslora.models import count_parameters


def test_report_is_logged():
    model = nn.Linear(3, 2)
    lines = []
    runner = types.SimpleNamespace(model=model, logger=types.SimpleNamespace(info=lines.append))
    ParameterReportHook().before_train(runner)
    assert lines == ['MSLoRA parameter report\n' + count_parameters(model).table()]
