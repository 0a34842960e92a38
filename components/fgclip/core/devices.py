"""Which accelerator a model runs on and in which precision (shared by evaluation and the
model backends). torch and torch_npu are imported only when a function is called."""

from __future__ import annotations

from typing import Any


def resolve_device(name: str) -> Any:
    """'auto' -> cuda, then Ascend npu (torch_npu), then cpu; anything else as given."""
    import torch

    if name != "auto":
        if name.startswith("npu"):
            import torch_npu  # noqa: F401  (registers the npu device type)
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    try:
        import torch_npu  # noqa: F401

        if torch.npu.is_available():  # type: ignore[attr-defined]  # torch_npu adds torch.npu
            return torch.device("npu")
    except ImportError:
        pass
    return torch.device("cpu")


def resolve_dtype(name: str, device: Any) -> Any:
    """'auto' -> bfloat16 on an accelerator that supports it, float16 on one that does
    not, float32 on cpu (CPU bf16 matmuls are slow on most hosts and change results)."""
    import torch

    if name != "auto":
        return getattr(torch, name)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "npu":
        return torch.bfloat16  # Ascend 910B and later; fp16 on older chips needs dtype: float16
    return torch.float32
