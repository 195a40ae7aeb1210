"""Run a script in a process that imported mmslora first.

    python -m mmslora SCRIPT [ARGS ...]

An upstream tool such as mmdet's ``tools/train.py`` parses its config before it
imports anything the config names, so a config inheriting
``mmslora::_base_/mslora.py`` needs ``import mmslora`` to have run: this runs SCRIPT
as ``python SCRIPT ARGS ...`` would, after it.
"""

import argparse
import os.path as osp
import runpy
import sys

import mmslora  # noqa: F401  (mmslora:: config names, the adapters, safe checkpoint loading)


def main(argv=None):
    parser = argparse.ArgumentParser(prog='python -m mmslora', description=__doc__.splitlines()[0])
    parser.add_argument('script', help='the script to run, e.g. mmdet/.mim/tools/train.py')
    parser.add_argument('args', nargs=argparse.REMAINDER, help="the script's arguments")
    args = parser.parse_args(argv)
    if not osp.isfile(args.script):
        parser.error(f'no script {args.script}')
    sys.argv = [args.script, *args.args]
    sys.path.insert(0, osp.dirname(osp.abspath(args.script)))  # as python SCRIPT does
    runpy.run_path(args.script, run_name='__main__')
