"""The ONNX operators katapool's exports use, as PyTorch operations: the small interpreter
behind gpu_fp16_check.py (FP16 on a GPU) and int8_qat.py (fake-quantized training)."""

from __future__ import annotations

from typing import Any

import numpy as np


def torch_op(op: str, a: list[Any], at: dict[str, Any]) -> Any:
    """One node of katapool's ONNX operator set (about 20 types) on PyTorch tensors ``a``,
    with the node's attributes ``at``."""
    import torch

    f: Any = torch.nn.functional
    torch_: Any = torch  # PyTorch's operator stubs differ by version; this table needs none
    if op == "Conv":
        pads = at.get("pads", [0, 0, 0, 0])
        return f.conv2d(a[0], a[1], a[2] if len(a) > 2 else None, padding=(pads[0], pads[1]),
                        dilation=tuple(at.get("dilations", [1, 1])))
    simple: dict[str, Any] = {"MatMul": torch_.matmul, "Add": torch_.add, "Mul": torch_.mul,
                              "Sub": torch_.sub, "Div": torch_.div}
    if op in simple:
        return simple[op](a[0], a[1])
    unary: dict[str, Any] = {"Relu": torch_.relu, "Sigmoid": torch_.sigmoid, "Sqrt": torch_.sqrt,
                             "Tanh": torch_.tanh, "Softplus": f.softplus,
                             "Identity": lambda x: x}
    if op in unary:
        return unary[op](a[0])
    if op == "Cast":
        return a[0].to({1: torch.float32, 10: torch.float16, 7: torch.int64}[at["to"]])
    if op == "Concat":
        return torch.cat(a, dim=at["axis"])
    if op == "Flatten":
        return a[0].reshape(int(np.prod(a[0].shape[:at["axis"]])), -1)
    if op == "Gather":
        return torch.index_select(a[0], at["axis"], a[1].reshape(-1))
    if op in ("ReduceMax", "ReduceMean", "ReduceSum"):
        axes = at["axes"] if "axes" in at else [int(v) for v in a[1].tolist()]
        keep = bool(at.get("keepdims", 1))
        if op == "ReduceMax":
            return torch.amax(a[0], dim=axes, keepdim=keep)
        return (torch.mean if op == "ReduceMean" else torch.sum)(a[0], dim=axes, keepdim=keep)
    if op == "Reshape":
        shape = [int(d) if d != 0 else a[0].shape[i] for i, d in enumerate(a[1].tolist())]
        return a[0].reshape(shape)
    if op == "Slice":
        x = a[0]
        for start, end, axis in zip(a[1].tolist(), a[2].tolist(), a[3].tolist(), strict=True):
            end = min(end, x.shape[axis])
            x = x.narrow(axis, start, end - start)
        return x
    if op == "Softmax":
        return torch.softmax(a[0], dim=at["axis"])
    if op == "Transpose":
        return a[0].permute(*at["perm"])
    if op == "Unsqueeze":
        x = a[0]
        for axis in sorted(int(v) for v in a[1].tolist()):
            x = x.unsqueeze(axis)
        return x
    raise NotImplementedError(op)
