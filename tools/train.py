"""Train a model from an mm* config with MSLoRA available: the command
``mmslora-train``, whose code is mmslora/cli/train.py (``-h`` lists the flags)."""

from mmslora.cli.train import main

if __name__ == '__main__':
    main()
