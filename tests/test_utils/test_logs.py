"""Metrics from a work dir's run logs (mmslora/utils/logs.py)."""

import json
import os
import time

import pytest

from mmslora.utils.logs import latest_metrics, run_logs


def write_lines(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(''.join(json.dumps(r) + '\n' for r in records))


def test_reads_the_newest_run_and_skips_other_json_files(tmp_path):
    write_lines(
        tmp_path / '20261201_100000' / 'vis_data' / '20261201_100000.json',
        [{'coco/bbox_mAP': 0.1}, {'loss': 1.0}],
    )
    time.sleep(0.01)
    write_lines(tmp_path / '20261201_110000' / '20261201_110000.json', [{'coco/bbox_mAP': 0.6}])
    # an adapter directory beside the runs: pretty-printed JSON, not a log
    (tmp_path / 'adapter').mkdir()
    (tmp_path / 'adapter' / 'adapter_config.json').write_text(json.dumps({'a': 1}, indent=2))
    assert [os.path.basename(p) for p in run_logs(str(tmp_path))] == [
        '20261201_110000.json',
        '20261201_100000.json',
    ]
    assert latest_metrics(str(tmp_path), 'coco/bbox_mAP') == {'coco/bbox_mAP': 0.6}
    assert latest_metrics(str(tmp_path), 'loss') == {'loss': 1.0}
    with pytest.raises(FileNotFoundError, match="logged 'mIoU'"):
        latest_metrics(str(tmp_path), 'mIoU')
