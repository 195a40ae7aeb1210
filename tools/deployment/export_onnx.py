"""Export a trained model to ONNX: the command ``mmslora-export-onnx``, whose code is
mmslora/cli/export_onnx.py (``-h`` lists the flags; docs/export.md)."""

import sys

from mmslora.cli.export_onnx import main

if __name__ == '__main__':
    sys.exit(main())
