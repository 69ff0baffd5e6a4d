"""What a network is, in numbers (`katapool model inspect`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np

from katapool.models.desc import (
    AttentionBlock,
    Block,
    FFNBlock,
    ModelDesc,
    NestedBottleneckBlock,
    Norm,
    RMSNorm,
)


def walk(blocks: list[Block], depth: int = 0) -> Iterator[tuple[int, Block]]:
    for block in blocks:
        yield depth, block
        if isinstance(block, NestedBottleneckBlock):
            yield from walk(block.blocks, depth + 1)


def _arrays(obj: Any) -> Iterator[tuple[str, np.ndarray]]:
    """Every weight array in a layer tree, with the field it sits in."""
    if isinstance(obj, np.ndarray):
        yield "", obj
    elif isinstance(obj, list):
        for item in obj:
            yield from _arrays(item)
    elif hasattr(obj, "__dataclass_fields__"):
        for key in obj.__dataclass_fields__:
            if key == "source":
                continue
            for sub, arr in _arrays(getattr(obj, key)):
                yield f"{key}.{sub}" if sub else key, arr


def _activations(obj: Any) -> Iterator[str]:
    """Every activation layer's kind, heads included."""
    if isinstance(obj, list):
        for item in obj:
            yield from _activations(item)
    elif hasattr(obj, "__dataclass_fields__"):
        for key in obj.__dataclass_fields__:
            value = getattr(obj, key)
            if key.endswith("act") or key in ("act1", "act2"):
                if isinstance(value, str):
                    yield value
            elif key != "source":
                yield from _activations(value)


def parameter_count(model: ModelDesc) -> int:
    """Trainable parameters as KataGo counts them: batch-norm mean and variance are not."""
    total = 0
    for name, arr in _arrays(model):
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("mean", "variance"):
            continue
        total += int(arr.size)
    return total


def summarize(model: ModelDesc) -> dict[str, Any]:
    trunk = model.trunk
    kinds: Counter[str] = Counter()
    activations: Counter[str] = Counter()
    attention: list[dict[str, Any]] = []
    ffn: set[tuple[int, int, bool]] = set()
    top = [b.kind for b in trunk.blocks]
    for _depth, block in walk(trunk.blocks):
        kinds[block.kind] += 1
        if isinstance(block, AttentionBlock):
            entry = {"heads": block.heads, "kv_heads": block.kv_heads, "q_head_dim": block.q_head_dim,
                     "v_head_dim": block.v_head_dim, "rope": block.rope}
            if entry not in attention:
                attention.append(entry)
        if isinstance(block, FFNBlock):
            ffn.add((block.channels, block.ffn_channels, block.swiglu))
    for kind in _activations(model):
        activations[kind] += 1
    tip = trunk.tip_norm
    tip_text = (f"RMSNorm ({'spatial' if tip.spatial else 'per position'})"
                if isinstance(tip, RMSNorm) else "batch norm" if isinstance(tip, Norm) else "?")
    policy = model.policy
    return {
        "name": model.name,
        "file": str(model.source.path),
        "sha256": model.source.sha256,
        "size_bytes": model.source.size,
        "model_version": model.version,
        "inputs": {"spatial": model.spatial_inputs, "global": model.global_inputs,
                   "meta": model.meta_inputs},
        "trunk": {
            "channels": trunk.channels,
            "mid_channels": trunk.mid_channels,
            "gpool_channels": trunk.gpool_channels,
            "initial_conv": f"{trunk.initial_conv.weights.shape[0]}x{trunk.initial_conv.weights.shape[1]}",
            "top_level_blocks": len(trunk.blocks),
            "top_level_kinds": dict(Counter(top)),
            "blocks_by_kind": dict(kinds),
            "tip": tip_text,
            "tip_activation": trunk.tip_act,
            "activations": dict(activations),
            "attention": attention,
            "ffn": [{"channels": c, "ffn_channels": f, "swiglu": s} for c, f, s in sorted(ffn)],
            "human_sl_metadata_encoder": trunk.meta is not None,
        },
        "heads": {
            "policy_channels": policy.out_channels,
            "policy_pass": "mlp" if policy.gpool_to_pass2 is not None else "matmul",
            "value_channels": 3,
            "score_channels": model.score_channels,
            "ownership": True,
        },
        "postprocess": list(model.postprocess),
        "parameters": parameter_count(model),
        "floats_stored": model.floats_stored,
    }
