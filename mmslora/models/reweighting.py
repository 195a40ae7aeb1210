"""Record what each MSLoRA adapter does to its block's feature map."""

from contextlib import contextmanager
from typing import Dict, Iterator

import torch
import torch.nn as nn

from .base import find_wrappers
from .wrapper import adapter_key


@contextmanager
def record_reweighting(model: nn.Module) -> Iterator[Dict[str, dict]]:
    """Within the context, each forward fills ``records[block name]`` with (H, W)
    maps of the first image, for the block adapters of each wrapper's active set:
    ``before`` = ||F||, ``after`` = ||F + H(F)|| (L2 over channels), and ``gate`` = the
    channel mean of the adapter's gate (``Trans(F)`` for MSLoRA) where
    :meth:`~mmslora.models.base.BlockAdapter.residual_and_gate` gives one."""
    records: Dict[str, dict] = {}
    handles = []

    def make_hook(name):
        def hook(adapter, args, output):
            feature = args[0].detach()
            entry = dict(before=feature[0].norm(dim=0), after=output.detach()[0].norm(dim=0))
            with torch.no_grad():
                _, gate = adapter.residual_and_gate(feature)
            if gate is not None:
                entry['gate'] = gate[0].mean(dim=0)
            records[name] = entry

        return hook

    for wrapper in find_wrappers(model).values():
        adapters = wrapper.adapter_set().modules
        for block_name in wrapper.adapter_set().blocks:
            adapter = adapters[adapter_key(block_name)]
            handles.append(adapter.register_forward_hook(make_hook(block_name)))
    if not handles:
        raise ValueError('the model has no MSLoRABackbone block adapters to visualise.')
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


def last_block_per_stage(names) -> list:
    """The last block of each stage (blocks grouped by their parent module's name)."""
    last = {}
    for name in names:
        last[name.rsplit('.', 1)[0] if '.' in name else name] = name
    return list(last.values())
