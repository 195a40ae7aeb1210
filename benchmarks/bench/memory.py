"""The peak-memory probe of the benchmarks (CPU: ``torch.profiler`` memory events)."""

from typing import Callable, Iterable, Optional

import torch
import torch.nn as nn


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def persistent_bytes(model: nn.Module, opt: Optional[torch.optim.Optimizer] = None) -> int:
    """Parameters, buffers and optimizer state of ``model`` (gradients not counted)."""
    state = [
        v
        for s in (opt.state.values() if opt is not None else [])
        for v in s.values()
        if isinstance(v, torch.Tensor)
    ]
    return tensor_bytes(model.parameters()) + tensor_bytes(model.buffers()) + tensor_bytes(state)


def event_start(event) -> int:
    """When a profiler (kineto) event started: ``start_ns()``, or ``start_us()`` on a
    torch that has no nanosecond times yet (torch 2.1). Only the order is used."""
    return event.start_ns() if hasattr(event, 'start_ns') else event.start_us()


def step_peak_bytes(fn: Callable[[], None]) -> int:
    """Highest rise of the CPU allocator's live bytes during ``fn()``, from the memory
    events of ``torch.profiler`` (frees of blocks allocated before are not seen)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == '[memory]']
    live = peak = 0
    for event in sorted(events, key=event_start):
        live += event.nbytes()
        peak = max(peak, live)
    return peak
