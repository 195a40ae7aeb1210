"""Everything mmslora takes from upstream packages beyond their public API.

:mod:`mmslora.compat.torch` bridges the torch versions of the supported range;
:mod:`mmslora.compat.mmcv` works around quirks of mmcv's layers.
:mod:`mmslora.compat.mmengine` is the only module of mmslora that reads private
mmengine attributes or patches mmengine; it states the versions it was written for.
Like :mod:`mmslora.utils`, this package is a bottom layer: it imports nothing from
the rest of mmslora.
"""
