"""Helpers of mmslora that need no model: safe checkpoint loading
(:mod:`.checkpoint`), state-dict comparison (:mod:`.state_dict`), config loading
(:mod:`.config`), data checks (:mod:`.data_check`) and work-dir logs (:mod:`.logs`).

A bottom layer: nothing here imports ``mmslora.models``, ``mmslora.engine`` or
``mmslora.cli``. The names this package exported before (``count_parameters``,
``save_adapter``, ...) moved to :mod:`mmslora.models`; their old spellings warn
(``mmslora/_deprecated.py``).
"""
