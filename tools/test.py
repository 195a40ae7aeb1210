"""Evaluate a checkpoint with an mm* config: the command ``mmslora-test``, whose
code is mmslora/cli/test.py (``-h`` lists the flags)."""

from mmslora.cli.test import main

if __name__ == '__main__':
    main()
