"""``mmslora.ParameterReportHook``: the parameter report in the log."""

from mmengine.hooks import Hook

from mmslora.models import count_parameters
from mmslora.registry import HOOKS


@HOOKS.register_module()
class ParameterReportHook(Hook):
    """Log the parameter report (total, trainable, adapter, frozen, trainable share of
    the backbone) once, when training starts."""

    priority = 'VERY_LOW'

    def before_train(self, runner) -> None:
        model = getattr(runner.model, 'module', runner.model)
        runner.logger.info('MSLoRA parameter report\n' + count_parameters(model).table())
