"""The command-line glue of ``tools/train.py`` and ``tools/test.py``: arguments,
config preparation (:mod:`.config`) and CPU-only distributed runs
(:mod:`.distributed`)."""
from .config import (FIT_HOOK, RANDOM_STATE_HOOK, REPORT_HOOK, add_common_args,
                     load_cli_config, prepare_test_config, prepare_train_config)
from .distributed import init_cpu_distributed

__all__ = ['add_common_args', 'load_cli_config', 'prepare_train_config',
           'prepare_test_config', 'init_cpu_distributed', 'REPORT_HOOK',
           'RANDOM_STATE_HOOK', 'FIT_HOOK']
