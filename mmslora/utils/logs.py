"""Reading the metrics that MMEngine's Runner writes into a work dir."""

import glob
import json
import os.path as osp
from typing import List


def run_logs(work_dir: str) -> List[str]:
    """The JSON-lines logs of ``work_dir``'s runs, newest first: ``<run>/<run>.json``
    (tests) and ``<run>/vis_data/<run>.json`` (training), ``<run>`` the Runner's
    timestamp folder. Other JSON files there (an adapter directory's
    ``adapter_config.json``, say) are no logs."""
    found = []
    for run in glob.glob(osp.join(work_dir, '*', '')):
        name = osp.basename(osp.dirname(run))
        found += [
            p
            for p in (osp.join(run, f'{name}.json'), osp.join(run, 'vis_data', f'{name}.json'))
            if osp.isfile(p)
        ]
    return sorted(found, key=osp.getmtime, reverse=True)


def latest_metrics(work_dir: str, key: str) -> dict:
    """The newest record holding ``key`` among the logs of ``work_dir``'s runs
    (:func:`run_logs`)."""
    for path in run_logs(work_dir):
        with open(path) as f:
            records = [json.loads(line) for line in f if line.strip()]
        for record in reversed(records):
            if key in record:
                return record
    raise FileNotFoundError(f'no run under {work_dir} logged {key!r}')
