"""The fine-tuning methods compared with MSLoRA, as keyword arguments of
:class:`~mmslora.models.MSLoRABackbone`.

=============  =====================================================================
method         what trains (besides the modules outside the backbone: neck, head)
=============  =====================================================================
full           every backbone parameter (``freeze=False``; norms follow ``train()``)
linear_probe   nothing in the backbone (``adapter=None``)
bitfit         every bias of the backbone (``adapter=None, trainable=('bias',)``;
               Ben Zaken et al., ACL 2022)
lora           rank-8 LoRA on every Linear and non-grouped Conv2d of the backbone
               (:class:`~mmslora.models.peers.LoRA`; Hu et al., ICLR 2022)
adapter        bottleneck adapter after every block, D = 64, s = 0.1
               (:class:`~mmslora.models.peers.BottleneckAdapter`; Houlsby et al.
               2019, AdaptFormer, NeurIPS 2022)
mona           Mona after every block, D = 64 (:class:`~mmslora.models.peers.MonaAdapter`;
               Yin et al., CVPR 2025)
mslora         MSLoRA after every block, D = 64, G = 8 (:class:`~mmslora.MSLoRAAdapter`)
=============  =====================================================================

Use::

    backbone = dict(type='mmslora.MSLoRABackbone', backbone=dict(type='mmdet.ResNet', depth=50),
                    **wrapper_kwargs('lora', adapter=dict(rank=4)))

or :func:`wrapper_cfg` for the whole config dict, or :func:`apply_method` to switch an
existing wrapper config (``tools/train.py CONFIG --method mona`` does that).
"""

import copy
from typing import Dict

METHODS: Dict[str, dict] = {
    'full': dict(adapter=None, freeze=False),
    'linear_probe': dict(adapter=None),
    'bitfit': dict(adapter=None, trainable=('bias',)),
    'lora': dict(adapter=dict(type='mmslora.LoRA', rank=8, alpha=8)),
    'adapter': dict(adapter=dict(type='mmslora.BottleneckAdapter', hidden_dim=64, scale=0.1)),
    'mona': dict(adapter=dict(type='mmslora.MonaAdapter', hidden_dim=64)),
    'mslora': dict(adapter=dict(type='mmslora.MSLoRAAdapter', hidden_dim=64, groups=8)),
}


def wrapper_kwargs(method: str, **overrides) -> dict:
    """The wrapper keyword arguments of ``method`` (a key of :data:`METHODS`).

    ``overrides`` replace keys, except that an ``adapter`` dict without ``type`` is
    merged into the method's adapter config, e.g. ``wrapper_kwargs('lora',
    adapter=dict(rank=4, targets=r'.*\\.qkv'))``. Returns a fresh (deep-copied) dict.
    """
    if method not in METHODS:
        raise KeyError(f'unknown method {method!r}; choose one of {sorted(METHODS)}.')
    kwargs = copy.deepcopy(METHODS[method])
    overrides = copy.deepcopy(overrides)
    adapter = overrides.get('adapter')
    if isinstance(adapter, dict) and 'type' not in adapter:
        if kwargs.get('adapter') is None:
            raise ValueError(f'method {method!r} has no adapter to update with {adapter!r}.')
        overrides['adapter'] = dict(kwargs['adapter'], **adapter)
    kwargs.update(overrides)
    return kwargs


def wrapper_cfg(method: str, backbone: dict, **overrides) -> dict:
    """``dict(type='mmslora.MSLoRABackbone', backbone=backbone, **wrapper_kwargs(...))``."""
    return apply_method(dict(type='mmslora.MSLoRABackbone', backbone=backbone), method, **overrides)


WRAPPER_TYPES = ('mmslora.MSLoRABackbone', 'MSLoRABackbone')
METHOD_KEYS = ('adapter', 'freeze', 'trainable')  # what a method sets in the wrapper


def apply_method(wrapper: dict, method: str, **overrides) -> dict:
    """A copy of the ``MSLoRABackbone`` config ``wrapper`` switched to ``method``.

    The method's keys (``adapter``, ``freeze``, ``trainable``) replace the wrapper's;
    everything else (the inner backbone, ``pretrained``, ``blocks``, ``norm_eval``, ...)
    is kept, so the methods compared differ in nothing but the method.
    ``overrides`` as in :func:`wrapper_kwargs`.
    """
    if not isinstance(wrapper, dict) or wrapper.get('type') not in WRAPPER_TYPES:
        kind = wrapper.get('type') if isinstance(wrapper, dict) else type(wrapper).__name__
        raise ValueError(
            f'switching to method {method!r} needs model.backbone to be '
            f"'mmslora.MSLoRABackbone', but it is {kind!r}; wrap the backbone first: "
            "model = dict(backbone=dict(_base_.mslora_backbone, backbone=<your "
            "backbone>)) with configs/_base_/mslora.py among the _base_ files."
        )
    switched = {
        k: copy.deepcopy(v) for k, v in wrapper.items() if k not in METHOD_KEYS and k != '_delete_'
    }
    switched.update(wrapper_kwargs(method, **overrides))
    return switched
