"""Each building block of the ONNX export against a small numpy reference written from
KataGo's semantics (independently of the exporter), on a board with off-board points so the
masking is exercised; and negative controls: a reference wired wrong must disagree."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from katapool.models.desc import (
    AttentionBlock,
    Conv,
    FFNBlock,
    GPoolBlock,
    MatMul,
    NestedBottleneckBlock,
    Norm,
    OrdinaryBlock,
    RMSNorm,
    TransformerNorm,
)
from katapool.models.export_onnx import block_graph

B, C, N = 7, 8, 2  # a 7x7 buffer holding a 5x5 board (and a full 7x7 one)
rng = np.random.default_rng(3)


def _mask() -> np.ndarray:
    m = np.zeros((N, 1, B, B), dtype=np.float32)
    m[0, :, :5, :5] = 1.0  # board in the top-left corner, as KataGo lays it out
    m[1] = 1.0
    return m


def _x(mask: np.ndarray) -> np.ndarray:
    return (rng.standard_normal((N, C, B, B)) * mask).astype(np.float32)


def f32(*shape: int, scale: float = 0.3) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def conv(cin: int, cout: int, k: int = 3) -> Conv:
    return Conv("c", f32(k, k, cin, cout), (1, 1))


def norm(c: int) -> Norm:
    return Norm("n", 1e-5, f32(c), (np.abs(f32(c)) + 0.5).astype(np.float32),
                (f32(c) + 1).astype(np.float32), f32(c))


def run(block: Any, x: np.ndarray, mask: np.ndarray, tip: Any = None) -> np.ndarray:
    model = block_graph(block, x.shape[1], B, tip=tip)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"X": x, "Mask": mask})[0]


# --- numpy references ---------------------------------------------------------------------

def np_conv(x: np.ndarray, c: Conv) -> np.ndarray:
    k = c.weights.shape[0]
    pad = k // 2
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = np.zeros((x.shape[0], c.weights.shape[3], x.shape[2], x.shape[3]), dtype=np.float64)
    for dy in range(k):
        for dx in range(k):
            patch = xp[:, :, dy:dy + x.shape[2], dx:dx + x.shape[3]]
            out += np.einsum("nchw,co->nohw", patch, c.weights[dy, dx])
    return out


def np_norm(x: np.ndarray, n: Norm) -> np.ndarray:
    scale = n.scale if n.scale is not None else 1.0
    bias = n.bias if n.bias is not None else 0.0
    shape = (1, -1, 1, 1)
    return ((x - n.mean.reshape(shape)) * np.reshape(scale, shape)
            / np.sqrt(n.variance.reshape(shape) + n.epsilon) + np.reshape(bias, shape))


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1 + np.exp(-x))


def np_gpool(x: np.ndarray, mask: np.ndarray, max_shift: bool = True) -> np.ndarray:
    area = mask.sum(axis=(2, 3))  # [N,1]
    mean = x.sum(axis=(2, 3)) / area
    mx = (x + (mask - 1) if max_shift else x).max(axis=(2, 3))
    return np.concatenate([mean, mean * (np.sqrt(area) - 14) / 10, mx], axis=1)


def np_tnorm(x: np.ndarray, n: TransformerNorm, mask_seq: np.ndarray) -> np.ndarray:
    return x / np.sqrt((x * x).mean(axis=2, keepdims=True) + n.epsilon) * n.weight * mask_seq


def np_rope(t: np.ndarray, b: AttentionBlock, kv_head_of: np.ndarray, interleaved: bool = True) -> np.ndarray:
    """t: [N, heads, S, d]. Rotates pairs (2p, 2p+1) by the position's angle."""
    pairs = b.q_head_dim // 2
    ys, xs = np.divmod(np.arange(B * B), B)
    out = np.empty_like(t)
    for h in range(t.shape[1]):
        kvh = kv_head_of[h]
        for p in range(pairs):
            if b.rope == "learnable":
                assert b.rope_freqs is not None
                angle = xs * b.rope_freqs[kvh, p, 0] + ys * b.rope_freqs[kvh, p, 1]
            else:
                half = pairs // 2
                q = p if p < half else p - half
                freq = 1.0 / b.rope_theta ** (2 * q / (b.q_head_dim // 2))
                angle = (ys if p < half else xs) * freq
            i, j = (2 * p, 2 * p + 1) if interleaved else (p, p + pairs)
            c, s = np.cos(angle), np.sin(angle)
            out[:, h, :, i] = t[:, h, :, i] * c - t[:, h, :, j] * s
            out[:, h, :, j] = t[:, h, :, j] * c + t[:, h, :, i] * s
    return out


def np_attention(x: np.ndarray, mask: np.ndarray, b: AttentionBlock, interleaved: bool = True,
                 use_key_mask: bool = True) -> np.ndarray:
    seq = x.reshape(N, C, -1).transpose(0, 2, 1)  # [N,S,C]
    mask_seq = mask.reshape(N, 1, -1).transpose(0, 2, 1)
    h = np_tnorm(seq, b.norm, mask_seq)

    def split(t: np.ndarray, heads: int, d: int) -> np.ndarray:
        return t.reshape(N, -1, heads, d).transpose(0, 2, 1, 3)

    q = split(h @ b.q.weights, b.heads, b.q_head_dim)
    k = split(h @ b.k.weights, b.kv_heads, b.q_head_dim)
    v = split(h @ b.v.weights, b.kv_heads, b.v_head_dim)
    group = b.heads // b.kv_heads
    if b.rope != "none":
        q = np_rope(q, b, np.arange(b.heads) // group, interleaved)
        k = np_rope(k, b, np.arange(b.kv_heads), interleaved)
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(b.q_head_dim)
    if use_key_mask:
        scores = scores + (mask.reshape(N, 1, 1, -1) - 1) * 3e4
    weights = np.exp(scores - scores.max(axis=3, keepdims=True))
    weights /= weights.sum(axis=3, keepdims=True)
    out = (weights @ v).transpose(0, 2, 1, 3).reshape(N, -1, b.heads * b.v_head_dim)
    out = (out @ b.out.weights) * mask_seq
    return x + out.transpose(0, 2, 1).reshape(N, C, B, B)


# --- tests ----------------------------------------------------------------------------------

def _close(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.max(np.abs(a - b)) < 1e-4 * max(1.0, float(np.max(np.abs(b)))))


def test_ordinary_block_conv_and_batchnorm() -> None:
    mask = _mask()
    x = _x(mask)
    b = OrdinaryBlock("o", norm(C), "relu", conv(C, C), norm(C), "relu", conv(C, C))
    ref = x + np_conv(relu(np_norm(np_conv(relu(np_norm(x, b.pre_norm)) * mask, b.conv1),
                                   b.mid_norm)) * mask, b.conv2)
    assert _close(run(b, x, mask), ref)
    # Negative control: forgetting the mask after an activation changes the result.
    wrong = x + np_conv(relu(np_norm(np_conv(relu(np_norm(x, b.pre_norm)), b.conv1),
                                     b.mid_norm)) * mask, b.conv2)
    assert not _close(run(b, x, mask), wrong)


def test_gpool_block() -> None:
    mask = _mask()
    x = _x(mask)
    g = 4
    b = GPoolBlock("g", norm(C), "relu", conv(C, C), conv(C, g), norm(g), "relu",
                   MatMul("m", f32(3 * g, C)), norm(C), "relu", conv(C, C))

    def act(kind: str, v: np.ndarray) -> np.ndarray:
        return relu(v) if kind == "relu" else v

    def ref(max_shift: bool) -> np.ndarray:
        a = act(b.pre_act, np_norm(x, b.pre_norm)) * mask
        regular = np_conv(a, b.regular_conv)
        pooled = np_gpool(act(b.gpool_act, np_norm(np_conv(a, b.gpool_conv), b.gpool_norm)) * mask,
                          mask, max_shift)
        regular = regular + (pooled @ b.gpool_to_bias.weights)[:, :, None, None]
        return x + np_conv(relu(np_norm(regular, b.mid_norm)) * mask, b.final_conv)

    got = run(b, x, mask)
    assert _close(got, ref(True))
    # Negative control: the max must ignore off-board points, whose activations are 0 — a
    # max over the whole buffer sees those zeros where every on-board value is negative.
    neg = (-np.abs(x) - 0.5) * mask
    b.pre_norm = Norm("n", 1e-5, np.zeros(C, np.float32), np.ones(C, np.float32) - 1e-5, None, None)
    b.pre_act = "identity"
    b.gpool_norm = Norm("n", 1e-5, np.zeros(g, np.float32), np.ones(g, np.float32) - 1e-5, None, None)
    b.gpool_act = "identity"
    b.gpool_conv = Conv("c", -np.abs(f32(3, 3, C, g)), (1, 1))  # negative weights on positive...
    x = (-neg).astype(np.float32)  # ...inputs: every on-board gpool value is negative
    got = run(b, x, mask)
    assert _close(got, ref(True)) and not _close(got, ref(False))


def test_nested_bottleneck_block() -> None:
    mask = _mask()
    x = _x(mask)
    mid = 4
    inner = OrdinaryBlock("i", norm(mid), "silu", conv(mid, mid), norm(mid), "silu", conv(mid, mid))
    b = NestedBottleneckBlock("nb", norm(C), "silu", conv(C, mid, 1), [inner], norm(mid), "silu",
                              conv(mid, C, 1))
    y = np_conv(silu(np_norm(x, b.pre_norm)) * mask, b.pre_conv)
    y = y + np_conv(silu(np_norm(np_conv(silu(np_norm(y, inner.pre_norm)) * mask, inner.conv1),
                                 inner.mid_norm)) * mask, inner.conv2)
    ref = x + np_conv(silu(np_norm(y, b.post_norm)) * mask, b.post_conv)
    assert _close(run(b, x, mask), ref)
    assert not _close(run(b, x, mask), ref - x)  # negative control: the residual is there


def _attention(rope: str, heads: int, kv: int, dq: int, dv: int) -> AttentionBlock:
    b = AttentionBlock("a", heads, kv, dq, dv, rope, TransformerNorm("n", 1e-6, f32(C) + 1),
                       MatMul("q", f32(C, heads * dq)), MatMul("k", f32(C, kv * dq)),
                       MatMul("v", f32(C, kv * dv)), MatMul("o", f32(heads * dv, C)))
    if rope == "learnable":
        b.rope_freqs = f32(kv, dq // 2, 2, scale=0.8)
    elif rope == "fixed":
        b.rope_theta = 100.0
    return b


@pytest.mark.parametrize("rope, heads, kv, dq, dv", [
    ("fixed", 2, 2, 8, 8),        # b7c96h3tfrs: fixed-theta RoPE
    ("learnable", 4, 2, 8, 4),    # b7c96h6kv3...: grouped heads, dq != dv, learnable RoPE
    ("none", 2, 1, 4, 4),
])
def test_attention_block(rope: str, heads: int, kv: int, dq: int, dv: int) -> None:
    mask = _mask()
    x = _x(mask)
    b = _attention(rope, heads, kv, dq, dv)
    got = run(b, x, mask)
    assert _close(got, np_attention(x, mask, b))
    # Negative controls: the 5x5 board must not attend to off-board keys; RoPE rotates
    # interleaved pairs (2p, 2p+1), not the two halves.
    assert not _close(got, np_attention(x, mask, b, use_key_mask=False))
    if rope != "none":
        assert not _close(got, np_attention(x, mask, b, interleaved=False))


def test_ffn_block() -> None:
    mask = _mask()
    x = _x(mask)
    f = 12
    b = FFNBlock("f", C, f, True, TransformerNorm("n", 1e-6, f32(C) + 1), MatMul("1", f32(C, f)),
                 MatMul("g", f32(C, f)), MatMul("2", f32(f, C)))
    seq = x.reshape(N, C, -1).transpose(0, 2, 1)
    mask_seq = mask.reshape(N, 1, -1).transpose(0, 2, 1)
    h = np_tnorm(seq, b.norm, mask_seq)
    assert b.gate is not None
    out = ((silu(h @ b.linear1.weights) * (h @ b.gate.weights)) @ b.linear2.weights) * mask_seq
    ref = x + out.transpose(0, 2, 1).reshape(N, C, B, B)
    assert _close(run(b, x, mask), ref)
    wrong = x + (((relu(h @ b.linear1.weights) * (h @ b.gate.weights)) @ b.linear2.weights)
                 * mask_seq).transpose(0, 2, 1).reshape(N, C, B, B)
    assert not _close(run(b, x, mask), wrong)  # negative control: SwiGLU uses SiLU


@pytest.mark.parametrize("spatial", [True, False])
def test_rmsnorm_trunk_tip(spatial: bool) -> None:
    mask = _mask()
    x = _x(mask) * 3
    n = RMSNorm("t", 1e-6, spatial, f32(C) + 1, f32(C))
    tip = SimpleNamespace(trunk=SimpleNamespace(tip_norm=n, tip_act="silu"))
    if spatial:  # one RMS per sample, over channels and on-board points only
        ms = (x * x * mask).sum(axis=(1, 2, 3), keepdims=True) / (C * mask.sum(axis=(1, 2, 3), keepdims=True))
    else:
        ms = (x * x).mean(axis=1, keepdims=True)
    ref = silu(x / np.sqrt(ms + n.epsilon) * n.gamma.reshape(1, -1, 1, 1)
               + n.beta.reshape(1, -1, 1, 1)) * mask
    got = run(None, x, mask, tip=tip)
    assert _close(got, ref)
    # Negative control: the spatial RMS over the whole buffer (off-board zeros included)
    # gives a different scale on the 5x5 board.
    whole = (x * x).mean(axis=(1, 2, 3), keepdims=True)
    other = ms if not spatial else whole
    wrong = silu(x / np.sqrt(other + n.epsilon) * n.gamma.reshape(1, -1, 1, 1)
                 + n.beta.reshape(1, -1, 1, 1)) * mask
    if spatial:
        assert not _close(got, wrong)


def test_validate_accepts_katagos_own_export_layout() -> None:
    """KataGo's emitter takes InputMask and [N,19,1,1] globals and gives [N,C,1,1] outputs."""
    from katapool.models.validate import _feeds, _squeeze

    def item(name: str, rank: int) -> SimpleNamespace:
        return SimpleNamespace(name=name, shape=[None] * rank)

    engine_style = SimpleNamespace(get_inputs=lambda: [item("InputMask", 4), item("InputSpatial", 4),
                                                       item("InputGlobal", 4)])
    spatial = np.ones((1, 22, 19, 19), dtype=np.float32)
    feeds = _feeds(engine_style, spatial, np.zeros((1, 19), dtype=np.float32), 0)
    assert feeds["InputMask"].shape == (1, 1, 19, 19) and feeds["InputGlobal"].shape == (1, 19, 1, 1)
    ours = SimpleNamespace(get_inputs=lambda: [item("InputSpatial", 4), item("InputGlobal", 2)])
    assert _feeds(ours, spatial, np.zeros((1, 19), dtype=np.float32), 0)["InputGlobal"].shape == (1, 19)
    assert _squeeze(np.zeros((2, 3, 1, 1))).shape == (2, 3)
    assert _squeeze(np.zeros((2, 1, 19, 19))).shape == (2, 1, 19, 19)
    strange = SimpleNamespace(get_inputs=lambda: [item("Board", 4)])
    with pytest.raises(Exception, match="does not know: Board"):
        _feeds(strange, spatial, np.zeros((1, 19), dtype=np.float32), 0)
