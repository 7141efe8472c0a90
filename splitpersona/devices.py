"""Where a persona is loaded when the caller does not say: the GPUs in bf16 where there are any, else the CPU in fp32.

`DEVICE` and `DTYPE` are the command-line options every command that loads a model shares.
"""

from __future__ import annotations

import typer


def default_device() -> str:
    """"auto" (spread over every visible GPU, as a 70B needs) where CUDA is present, else "cpu"."""
    import torch

    return "auto" if torch.cuda.is_available() else "cpu"


def default_dtype() -> str:
    """bfloat16 on GPUs that compute in it, float32 elsewhere (CPU bf16 matmuls are slow and inexact)."""
    import torch

    return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"


DTYPE = typer.Option(default_factory=default_dtype, show_default="bfloat16 on a GPU, else float32",
                     help="float32, bfloat16 or float16.")
DEVICE = typer.Option(default_factory=default_device, show_default="auto on a GPU, else cpu",
                      help="torch device (cpu, cuda, cuda:1) or auto to spread the model over the GPUs.")
