"""Print the parameter report of a config's model, without data or downloads.

    mmslora-count-params CONFIG [--cfg-options k=v ...]

(also ``python tools/analysis_tools/count_params.py ...``); CONFIG is a file or a
``mmslora::`` name.

Prints total, trainable, adapter and frozen parameters, the trainable share of the
backbone, and peft's one-line summary.
"""

import argparse

from mmengine.config import DictAction

import mmslora  # noqa: F401
from mmslora.models import count_parameters
from mmslora.utils.config import build_model_from_config, disable_pretrained, load_config


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args(argv)
    cfg = disable_pretrained(load_config(args.config, args.cfg_options))
    report = count_parameters(build_model_from_config(cfg))
    print(f'config: {args.config}')
    print(report.table())
