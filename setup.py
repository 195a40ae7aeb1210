from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent


def read_requirements(name: str) -> list:
    lines = (ROOT / 'requirements' / name).read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith('#')]


version = {}
exec((ROOT / 'mmslora' / 'version.py').read_text(), version)

setup(
    name='mmslora',
    version=version['__version__'],
    description='MSLoRA: multi-scale low-rank adaptation via attention reweighting, for OpenMMLab',
    long_description=(ROOT / 'README.md').read_text() if (ROOT / 'README.md').exists() else '',
    long_description_content_type='text/markdown',
    packages=find_packages(include=['mmslora', 'mmslora.*']),
    # OpenMMLab's .mim layout, so that `mmslora::<config>` names and `mim train mmslora`
    # find the configs and tools: mmslora/.mim/* are symlinks to the repository's
    # configs/, tools/ and model-index.yml, copied into the wheel.
    package_data={
        'mmslora': [
            '.mim/model-index.yml',
            '.mim/configs/*.yml',
            '.mim/configs/**/*.py',
            '.mim/tools/**/*.py',
            '.mim/tools/*.sh',
        ]
    },
    exclude_package_data={'mmslora': ['.mim/tools/demo.py']},  # needs the repository
    entry_points={
        'console_scripts': [
            'mmslora-train = mmslora.cli.train:main',
            'mmslora-test = mmslora.cli.test:main',
            'mmslora-count-params = mmslora.cli.count_params:main',
            'mmslora-export-adapter = mmslora.cli.export_adapter:main',
            'mmslora-merge = mmslora.cli.merge:main',
            'mmslora-export-onnx = mmslora.cli.export_onnx:main',
        ]
    },
    python_requires='>=3.8',
    install_requires=read_requirements('runtime.txt'),
    extras_require={
        'mim': read_requirements('mminstall.txt'),
        'tests': read_requirements('tests.txt'),
        'optional': read_requirements('optional.txt'),
        'deploy': read_requirements('deploy.txt'),
    },
    license='Apache-2.0',
)
