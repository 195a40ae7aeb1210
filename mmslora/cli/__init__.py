"""mmslora's commands and their glue.

The commands (console scripts of the package; ``tools/*.py`` call the same ``main``):
``mmslora-train`` (:mod:`.train`), ``mmslora-test`` (:mod:`.test`),
``mmslora-count-params`` (:mod:`.count_params`), ``mmslora-export-adapter``
(:mod:`.export_adapter`) and ``mmslora-merge`` (:mod:`.merge`); ``python -m mmslora SCRIPT ...`` runs an upstream script
(mmdet's ``tools/train.py``) with mmslora imported first (:mod:`.run_script`). Their
glue: arguments and config preparation (:mod:`.config`) and CPU-only distributed
runs (:mod:`.distributed`).
"""

from .config import (
    FIT_HOOK,
    RANDOM_STATE_HOOK,
    REPORT_HOOK,
    add_common_args,
    load_cli_config,
    prepare_test_config,
    prepare_train_config,
)
from .distributed import init_cpu_distributed

__all__ = [
    'add_common_args',
    'load_cli_config',
    'prepare_train_config',
    'prepare_test_config',
    'init_cpu_distributed',
    'REPORT_HOOK',
    'RANDOM_STATE_HOOK',
    'FIT_HOOK',
]
