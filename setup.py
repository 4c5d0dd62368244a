import re
from pathlib import Path

from setuptools import find_packages, setup

VERSION = re.search(r'__version__ = "([^"]+)"', (Path(__file__).parent / "bigrerank" / "__init__.py").read_text())[1]

setup(
    name="bigrerank",
    version=VERSION,
    description="Train and serve cross-encoder rerankers at large-model scale on DeepSpeed",
    packages=find_packages(include=["bigrerank", "bigrerank.*"]),
    package_data={"bigrerank": ["ds_configs/*.json"]},  # `ds_configs/` at the repository root links here
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4,<2.15",
        "deepspeed>=0.19.2",
        "transformers>=4.56",
        "datasets>=3.0",
        "pyarrow>=15",
        "wandb>=0.17",
        "safetensors>=0.4",
        "tqdm>=4.66",
        "ir-measures>=0.3.7",
        "pytrec-eval-terrier>=0.5.6",
        "bm25s>=0.2.6",
        "PyStemmer>=2.2",
        "accelerate>=1.1",
        "peft>=0.13",
        "ranx>=0.3.20",
        "xxhash>=3.0",
    ],
    extras_require={
        "gguf": ["gguf>=0.10"],  # a .gguf file as a model (bigrerank/gguf_file.py)
        # sentence-transformers: exports are checked in its CrossEncoder too (its dependencies leave torch alone)
        "test": ["pytest>=8", "hypothesis>=6.100", "gguf>=0.10", "sentence-transformers>=3"],
    },
    entry_points={"console_scripts": ["bigrerank=bigrerank.cli:main"]},
)
