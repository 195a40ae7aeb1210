"""Where a benchmark runs: the repository's commit, other processes' CPU load, the
dataset converters, quieter OpenMMLab logs."""

import importlib.util
import os
import os.path as osp
import subprocess
import time
from typing import Optional

from . import ROOT


def git_commit() -> Optional[str]:
    """HEAD of the repository, with '+dirty' when mmslora/ has uncommitted changes."""
    try:
        head = subprocess.run(
            ['git', '-C', ROOT, 'rev-parse', '--short', 'HEAD'],
            text=True,
            capture_output=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ['git', '-C', ROOT, 'status', '--porcelain', '--', 'mmslora'],
            text=True,
            capture_output=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ('+dirty' if dirty else '')


def cpu_name() -> str:
    """The processor's model name from ``/proc/cpuinfo`` (``platform``'s guess elsewhere)."""
    import platform

    try:
        with open('/proc/cpuinfo') as f:
            return next(
                line.split(':', 1)[1].strip() for line in f if line.startswith('model name')
            )
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def converter(name: str):
    """``tools/dataset_converters/<name>.py`` as a module (a script, not a package)."""
    spec = importlib.util.spec_from_file_location(
        f'_bench_{name}', osp.join(ROOT, 'tools', 'dataset_converters', f'{name}.py')
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_converter(name: str, out_dir: str, **kwargs):
    """``convert_<name>(out_dir, **kwargs)`` of ``tools/dataset_converters/<name>.py``
    (which names the install command when its source is missing)."""
    return getattr(converter(name), f'convert_{name}')(out_dir, **kwargs)


def quiet() -> None:
    """mmengine's per-parameter initialisation log off (warnings stay), and mmseg's
    warnings about losses the benchmarks do not use."""
    import warnings

    from mmengine.logging import MMLogger

    MMLogger.get_instance('mmslora_bench', log_level='WARNING')  # now the current logger
    for message in (
        'For binary segmentation',
        '``build_loss`` would be deprecated',
        'Default ``avg_non_ignore``',
    ):
        warnings.filterwarnings('ignore', message=message)


class CpuMeter:
    """CPU time used by other processes while measuring, from ``/proc/stat`` minus
    this process's own CPU time, in CPUs (0 = idle machine; 1 = one busy core)."""

    def __init__(self) -> None:
        self.start = self._read()

    @staticmethod
    def _read():
        try:
            with open('/proc/stat') as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        busy = sum(fields[:3]) + sum(fields[5:8])  # user nice system irq softirq steal
        return busy / os.sysconf('SC_CLK_TCK'), time.process_time(), time.perf_counter()

    def others(self) -> Optional[float]:
        end = self._read()
        if self.start is None or end is None:
            return None
        busy = end[0] - self.start[0]
        own = end[1] - self.start[1]
        return max(busy - own, 0.0) / max(end[2] - self.start[2], 1e-9)
