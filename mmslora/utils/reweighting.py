"""Record what each MSLoRA adapter does to its block's feature map."""
from contextlib import contextmanager
from typing import Dict, Iterator

import torch
import torch.nn as nn


@contextmanager
def record_reweighting(model: nn.Module) -> Iterator[Dict[str, dict]]:
    """Within the context, each forward fills ``records[block name]`` with (B, H, W)
    maps of the first image: ``before`` = ||F||, ``after`` = ||F + H(F)|| (L2 over
    channels), and for MSLoRA adapters ``gate`` = the channel mean of ``Trans(F)``."""
    from mmslora.models.wrapper import MSLoRABackbone
    records: Dict[str, dict] = {}
    handles = []

    def make_hook(name):
        def hook(adapter, args, output):
            feature = args[0].detach()
            entry = dict(before=feature[0].norm(dim=0), after=output.detach()[0].norm(dim=0))
            if hasattr(adapter, 'trans'):
                with torch.no_grad():
                    entry['gate'] = adapter.trans(feature)[0].mean(dim=0)
            records[name] = entry
        return hook

    for wrapper in (m for m in model.modules() if isinstance(m, MSLoRABackbone)):
        for block_name in wrapper.block_layouts:
            adapter = wrapper.adapters[block_name.replace('.', '_')]
            handles.append(adapter.register_forward_hook(make_hook(block_name)))
    if not handles:
        raise ValueError('the model has no MSLoRABackbone adapters to visualise.')
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
