"""The benchmarks' shared module: method presets (:mod:`.methods`), the memory probe
(:mod:`.memory`), environment helpers (:mod:`.env`), the data of the protocol tasks
(:mod:`.data`), training (:mod:`.training`, :mod:`.detection`), statistics
(:mod:`.stats`), the resumable grid (:mod:`.grid`) and the report (:mod:`.report`).

Importing it puts the repository root on ``sys.path`` and registers mmslora's modules.
"""

import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import mmslora  # noqa: E402,F401  (registers the modules)
