"""Merge a trained LoRA into the backbone and write a plain upstream checkpoint: the
command ``mmslora-merge``, whose code is mmslora/cli/merge.py (``-h`` lists the
flags)."""

from mmslora.cli.merge import main

if __name__ == '__main__':
    main()
