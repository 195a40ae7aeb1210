"""The ``mmslora`` registries, children of MMEngine's root registries.

Every module registered here is reachable from any OpenMMLab toolbox as
``type='mmslora.<Name>'`` (for example ``'mmslora.MSLoRABackbone'`` inside an
mmdet, mmseg or mmpretrain config), once ``mmslora`` has been imported, e.g. by
``custom_imports=dict(imports=['mmslora'])``. ``locations`` lets MMEngine import
the modules lazily when ``mmslora`` is the default scope.
"""

from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='mmslora', locations=['mmslora.models'])
OPTIM_WRAPPER_CONSTRUCTORS = Registry(
    'optimizer wrapper constructor',
    parent=MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS,
    scope='mmslora',
    locations=['mmslora.engine'],
)
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope='mmslora', locations=['mmslora.engine'])
DATASETS = Registry(
    'dataset', parent=MMENGINE_DATASETS, scope='mmslora', locations=['mmslora.datasets']
)
TRANSFORMS = Registry(
    'transform', parent=MMENGINE_TRANSFORMS, scope='mmslora', locations=['mmslora.datasets']
)
