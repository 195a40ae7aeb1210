"""Turn a training checkpoint into adapter files: the command
``mmslora-export-adapter``, whose code is mmslora/cli/export_adapter.py (``-h``
lists the flags)."""

from mmslora.cli.export_adapter import main

if __name__ == '__main__':
    main()
