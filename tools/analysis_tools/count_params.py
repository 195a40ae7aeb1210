"""Print the parameter report of a config's model: the command
``mmslora-count-params``, whose code is mmslora/cli/count_params.py (``-h`` lists
the flags)."""

from mmslora.cli.count_params import main

if __name__ == '__main__':
    main()
