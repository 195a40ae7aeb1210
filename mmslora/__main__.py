"""``python -m mmslora SCRIPT [ARGS ...]``: mmslora.cli.run_script."""

from mmslora.cli.run_script import main

main()
