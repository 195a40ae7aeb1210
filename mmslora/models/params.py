"""Parameter counting by module ownership (never by name substrings)."""

from collections import Counter
from dataclasses import dataclass
from typing import Tuple

import torch.nn as nn

from .base import AdapterBase, find_wrappers


@dataclass(frozen=True)
class ParameterReport:
    """Counts of a model's parameters.

    ``backbone`` counts the wrapped (upstream) backbones, ``adapter`` the adapters
    they carry, ``trainable`` every parameter with ``requires_grad`` anywhere in the
    model (heads and necks included), ``backbone_trainable`` the trainable parameters
    inside the wrappers (adapters plus any unfrozen backbone parameter); ``notes`` what
    adapters changed to fit their blocks (e.g. fewer groups), how a parameter budget
    was met, and where the adapters exceed the default 5% of the backbone.
    """

    total: int
    trainable: int
    backbone: int
    adapter: int
    backbone_trainable: int
    notes: Tuple[str, ...] = ()

    @property
    def frozen(self) -> int:
        return self.total - self.trainable

    @property
    def backbone_share(self) -> float:
        """Trainable parameters of the wrappers as a fraction of their backbones."""
        return self.backbone_trainable / self.backbone if self.backbone else 0.0

    def peft_line(self) -> str:
        """The line Hugging Face peft's ``print_trainable_parameters`` prints."""
        return (
            f'trainable params: {self.trainable:,d} || all params: {self.total:,d} || '
            f'trainable%: {100 * self.trainable / max(self.total, 1):.4f}'
        )

    def table(self) -> str:
        rows = [
            ('total', self.total),
            ('trainable', self.trainable),
            ('frozen', self.frozen),
            ('backbone (wrapped)', self.backbone),
            ('adapters', self.adapter),
            ('trainable in wrapper', self.backbone_trainable),
        ]
        lines = [f'{name:<22}{value:>14,d}' for name, value in rows]
        lines.append(f"{'trainable / backbone':<22}{100 * self.backbone_share:>13.3f}%")
        lines += [f'note: {note}' for note in self.notes]
        return '\n'.join(lines + [self.peft_line()])


def _numel(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def count_parameters(model: nn.Module) -> ParameterReport:
    """Count ``model``'s parameters, attributing them to wrapped backbones and adapters
    (all adapter sets) by module ownership (every ``MSLoRABackbone`` in ``model``)."""
    wrappers = list(find_wrappers(model).values())
    adjusted = Counter(
        m.adjustment
        for w in wrappers
        for m in w.adapter_modules().modules()
        if isinstance(m, AdapterBase) and m.adjustment
    )
    notes = [note for w in wrappers for note in w.notes] + [
        f'{note}: {n} adapter{"s" if n > 1 else ""}' for note, n in adjusted.items()
    ]
    return ParameterReport(
        total=_numel(model),
        trainable=_numel(model, trainable_only=True),
        backbone=sum(_numel(w.backbone) for w in wrappers),
        adapter=sum(_numel(w.adapter_modules()) for w in wrappers),
        backbone_trainable=sum(_numel(w, trainable_only=True) for w in wrappers),
        notes=tuple(notes),
    )


def print_trainable_parameters(model: nn.Module) -> ParameterReport:
    """Print peft's one-line summary for ``model`` and return the report."""
    report = count_parameters(model)
    print(report.peft_line())
    return report
