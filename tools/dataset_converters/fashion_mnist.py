"""Unpack Debian's Fashion-MNIST (package dataset-fashion-mnist) for mmpretrain.

    python tools/dataset_converters/fashion_mnist.py [OUT_DIR] [--source DIR]

mmpretrain's ``FashionMNIST`` dataset reads the four idx files un-gzipped from its
``data_root``; this writes them there (idempotent).
"""

import argparse
import gzip
import os
import os.path as osp
import shutil

SOURCE = '/usr/share/datasets/fashion-mnist'
FILES = (
    'train-images-idx3-ubyte',
    'train-labels-idx1-ubyte',
    't10k-images-idx3-ubyte',
    't10k-labels-idx1-ubyte',
)


def convert_fashion_mnist(out_dir: str, source: str = SOURCE) -> list:
    """Write the idx files into ``out_dir``; return their paths."""
    missing = [f for f in FILES if not osp.exists(osp.join(source, f + '.gz'))]
    if missing:
        raise FileNotFoundError(
            f'Fashion-MNIST files {missing} are not in {source}; install them with '
            f'`apt-get install dataset-fashion-mnist` (scripts/setup_env.sh does this as root) '
            f'or pass --source DIR holding the .gz files.'
        )
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for name in FILES:
        target = osp.join(out_dir, name)
        if not osp.exists(target):
            with gzip.open(osp.join(source, name + '.gz'), 'rb') as src, open(
                target + '.part', 'wb'
            ) as dst:
                shutil.copyfileobj(src, dst)
            os.replace(target + '.part', target)
        paths.append(target)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('out_dir', nargs='?', default='data/fashion_mnist')
    parser.add_argument('--source', default=SOURCE)
    args = parser.parse_args(argv)
    for path in convert_fashion_mnist(args.out_dir, args.source):
        print(path)


if __name__ == '__main__':
    main()
