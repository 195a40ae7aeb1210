"""Method presets of the benchmarks, on top of :mod:`mmslora.models.peers.methods`.

A *row* is a method of :data:`~mmslora.models.peers.METHODS` or a name of
:data:`VARIANTS` (an MSLoRA option). :func:`switch` turns an ``MSLoRABackbone`` config
into a row's config with :func:`~mmslora.models.peers.apply_method`; nothing else
wraps a backbone.
"""

from typing import Dict, Optional, Tuple

from mmslora.models.peers import METHODS, apply_method

#: adapter widths of the demo tasks (EfficientNet-Lite0, 3.4 M parameters): the demo
#: configs' MSLoRA ``hidden_dim=32``, and the bottleneck Adapter and Mona at the same D
DEMO_WIDTHS: Dict[str, dict] = dict(
    adapter=dict(hidden_dim=32), mona=dict(hidden_dim=32), mslora=dict(hidden_dim=32)
)
#: rows besides METHODS: name -> (method, adapter options merged into its adapter)
VARIANTS: Dict[str, Tuple[str, dict]] = {
    'mslora_cp': ('mslora', dict(with_cp=True)),
    'mslora_ratio': ('mslora', dict(max_hidden_ratio=0.5)),
    'mslora_stride2': ('mslora', dict(trans_stride=2)),
    'mslora_proj': ('mslora', dict(combine='proj')),
}
ROWS = tuple(METHODS) + tuple(VARIANTS)
#: display names (the demo widths)
NAMES = dict(
    full='Full fine-tuning',
    linear_probe='Linear probe',
    bitfit='BitFit',
    lora='LoRA (r 8)',
    adapter='Adapter (D 32)',
    mona='Mona (D 32)',
    mslora='MSLoRA (D 32, G 8)',
    mslora_cp='MSLoRA, with_cp',
    mslora_ratio='MSLoRA, max_hidden_ratio=0.5',
    mslora_stride2='MSLoRA, trans_stride=2',
    mslora_proj="MSLoRA, combine='proj'",
)


def base_method(row: str) -> str:
    """The method of METHODS behind ``row``."""
    if row in VARIANTS:
        return VARIANTS[row][0]
    if row not in METHODS:
        raise KeyError(f'unknown row {row!r}; choose one of {list(ROWS)}')
    return row


def switch(wrapper: dict, row: str, widths: Optional[Dict[str, dict]] = None) -> dict:
    """``wrapper`` (an ``MSLoRABackbone`` config) switched to ``row``, the adapter sized
    by ``widths`` (method -> adapter options; None: the package's defaults)."""
    method = base_method(row)
    adapter = dict((widths or {}).get(method, {}), **VARIANTS.get(row, (None, {}))[1])
    overrides = dict(adapter=adapter) if adapter and METHODS[method].get('adapter') else {}
    return apply_method(wrapper, method, **overrides)
