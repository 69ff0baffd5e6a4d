"""Reading KataGo model files: the real networks parse to the last byte with the engine's
own parameter counts; a small text model exercises .txt/.txt.gz; bad files get clear errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import G170, MODELS, TRANSFORMER, TRANSFORMER_KV, Katapool
from katapool.errors import ModelError
from katapool.models import load_model, summarize

# name: (version, parameters as KataGo counts them, floats stored, blocks by kind, tip, activations)
EXPECTED = {
    G170.name: (8, 1_027_911, 1_030_599, {"ordinary": 4, "gpool": 2}, "batch norm", {"relu": 19}),
    TRANSFORMER.name: (17, 818_953, 819_145, {"attention": 7, "ffn": 7}, "RMSNorm (per position)",
                       {"silu": 6}),
    TRANSFORMER_KV.name: (17, 851_881, 852_265, {"attention": 7, "ffn": 7}, "batch norm",
                          {"relu": 6}),
    "b10c384h6nbttflrs.bin.gz": (15, 10_545_753, 10_557_657,
                                 {"nested_bottleneck": 10, "attention": 20, "ffn": 20},
                                 "RMSNorm (spatial)", {"silu": 26}),
}


@pytest.fixture(scope="module")
def b10(kp: Katapool) -> Path:
    record = kp.manifest()["engines"][0]  # type: ignore[index]
    return Path(record["model"])  # type: ignore[index]


@pytest.mark.engine
@pytest.mark.parametrize("name", list(EXPECTED))
def test_real_networks(name: str, b10: Path) -> None:
    path = b10 if name.startswith("b10") else MODELS / name
    version, params, floats, kinds, tip, acts = EXPECTED[name]
    info = summarize(load_model(path))
    assert info["model_version"] == version and info["parameters"] == params
    assert info["floats_stored"] == floats
    assert info["trunk"]["blocks_by_kind"] == kinds and info["trunk"]["tip"] == tip
    assert info["trunk"]["activations"] == acts
    assert info["inputs"] == {"spatial": 22, "global": 19, "meta": 0}
    assert len(info["sha256"]) == 64 and info["size_bytes"] == path.stat().st_size


def test_attention_details() -> None:
    kv = summarize(load_model(TRANSFORMER_KV))["trunk"]["attention"]
    assert kv == [{"heads": 6, "kv_heads": 3, "q_head_dim": 32, "v_head_dim": 16, "rope": "learnable"}]
    fixed = load_model(TRANSFORMER).trunk.blocks[0]
    assert fixed.kind == "attention" and fixed.rope == "fixed" and fixed.rope_theta > 0  # type: ignore[union-attr]
    g170 = load_model(G170)
    assert g170.postprocess == (20.0, 20.0, 20.0, 20.0, 40.0, 0.25, 30.0)  # defaults before v13
    assert load_model(TRANSFORMER).postprocess[-1] == 150.0
    assert g170.policy.out_channels == 1 and g170.score_channels == 4
    assert g170.trunk.initial_conv.weights.shape == (5, 5, 22, 96)


def _tiny_text_model(rng: np.random.Generator, version: int = 8) -> str:
    """A small, valid v8 network written in KataGo's text format: 1 ordinary block."""
    out: list[str] = []

    def floats(n: int) -> None:
        out.extend(f"{x:.6f}" for x in rng.standard_normal(n))

    def conv(name: str, k: int, cin: int, cout: int) -> None:
        out.extend([name, str(k), str(k), str(cin), str(cout), "1", "1"])
        floats(k * k * cin * cout)

    def bn(name: str, c: int) -> None:
        out.extend([name, str(c), "1e-5", "1", "1"])
        out.extend(["0"] * c)
        out.extend(["1"] * c)
        floats(2 * c)

    def act(name: str) -> None:
        out.append(name)

    def mat(name: str, cin: int, cout: int) -> None:
        out.extend([name, str(cin), str(cout)])
        floats(cin * cout)

    def bias(name: str, c: int) -> None:
        out.extend([name, str(c)])
        floats(c)

    out += ["tiny-net", str(version), "22", "19"]
    out += ["trunk", "1", "8", "8", "8", "8", "4"]
    conv("conv1", 3, 22, 8)
    mat("ginputs", 19, 8)
    out += ["ordinary_block", "block0"]
    bn("b0/norm1", 8)
    act("b0/act1")
    conv("b0/w1", 3, 8, 8)
    bn("b0/norm2", 8)
    act("b0/act2")
    conv("b0/w2", 3, 8, 8)
    bn("trunk/norm", 8)
    act("trunk/act")
    out += ["policyhead"]
    conv("p1", 1, 8, 4)
    conv("g1", 1, 8, 4)
    bn("g1/norm", 4)
    act("g1/act")
    mat("gpool2bias", 12, 4)
    bn("p1/norm", 4)
    act("p1/act")
    conv("p2", 1, 4, 1)
    mat("gpool2pass", 12, 1)
    out += ["valuehead"]
    conv("v1", 1, 8, 4)
    bn("v1/norm", 4)
    act("v1/act")
    mat("v2", 12, 6)
    bias("v2/b", 6)
    act("v2/act")
    mat("v3", 6, 3)
    bias("v3/b", 3)
    mat("sv3", 6, 4)
    bias("sv3/b", 4)
    conv("vown", 1, 4, 1)
    return "\n".join(out) + "\n"


def test_text_formats(tmp_path: Path) -> None:
    text = _tiny_text_model(np.random.default_rng(1))
    plain = tmp_path / "tiny.txt"
    plain.write_text(text)
    packed = tmp_path / "tiny.txt.gz"
    packed.write_bytes(gzip.compress(text.encode()))
    a, b = load_model(plain), load_model(packed)
    assert a.name == b.name == "tiny-net" and a.version == 8
    assert np.array_equal(a.trunk.initial_conv.weights, b.trunk.initial_conv.weights)
    assert a.trunk.blocks[0].kind == "ordinary"
    mult, offset = a.trunk.blocks[0].pre_norm.merged()  # type: ignore[union-attr]
    assert mult.shape == (8,) and np.isfinite(offset).all()


@pytest.mark.parametrize("damage, message", [
    (lambda t: t[: len(t) // 2], "found the end of the file"),
    (lambda t: t.replace("tiny-net\n8", "tiny-net\n99", 1), "model version 99 is not supported"),
    (lambda t: t.replace("ordinary_block", "mystery_block", 1), "unknown block kind 'mystery_block'"),
    (lambda t: t.replace("trunk\n1\n8", "trunk\n1\n9", 1), "input layers do not match"),
    (lambda t: t.replace("0.", "x.", 1), "(a number)"),
    (lambda t: t + "extra\n", "data after the value head"),
])
def test_damaged_files_fail_clearly(tmp_path: Path, damage: object, message: str) -> None:
    text = _tiny_text_model(np.random.default_rng(2))
    bad = tmp_path / "bad.txt"
    bad.write_text(damage(text))  # type: ignore[operator]
    with pytest.raises(ModelError) as info:
        load_model(bad)
    assert message in str(info.value) and str(bad) in str(info.value)


def test_corrupt_binary_files(tmp_path: Path) -> None:
    data = G170.read_bytes()
    cut = tmp_path / "cut.bin.gz"
    cut.write_bytes(gzip.compress(gzip.decompress(data)[:2_000_000]))
    with pytest.raises(ModelError, match="cut short"):
        load_model(cut)
    garbage = tmp_path / "garbage.bin.gz"
    garbage.write_bytes(b"not gzip at all")
    with pytest.raises(ModelError, match="not a readable gzip file"):
        load_model(garbage)
    with pytest.raises(ModelError, match="ends in .bin.gz"):
        load_model(tmp_path / "net.onnx")


def test_header_check_knows_a_network_by_its_start(tmp_path: Path) -> None:
    """The cheap check on networks the user names: a network (any format KataGo loads, even
    one cut short past its header: only the header is read) passes; anything else is one
    line saying why it is no network."""
    from katapool.models.reader import check_network_file

    text = _tiny_text_model(np.random.default_rng(3))
    good = {"tiny.txt": text.encode(), "tiny.txt.gz": gzip.compress(text.encode()),
            "tiny.gz": gzip.compress(text.encode()),
            "cut.bin.gz": gzip.compress(gzip.decompress(G170.read_bytes())[:50_000])}
    for name, data in good.items():
        (tmp_path / name).write_bytes(data)
        assert check_network_file(tmp_path / name).name in ("tiny-net", G170.name[:-7]), name
    assert check_network_file(G170).version == 8
    assert check_network_file(TRANSFORMER_KV).version == 17
    bad = {
        "notes.txt": (b"meeting notes\n", "expected the model version (an integer), found 'notes'"),
        "empty.bin.gz": (b"", "the file is empty"),
        "noise.bin.gz": (bytes(range(256)) * 4, "not gzip-compressed, as its name says"),
        "broken.bin.gz": (b"\x1f\x8b" + bytes(64),
                          "not a readable gzip file (Unknown compression method)"),
        "packed-noise.bin.gz": (gzip.compress(bytes(range(256)) * 4),
                                "it starts with binary data, not a network's name"),
        "old.txt": (b"ancient 2 22 19\n", "model version 2 (KataGo reads 3 and later)"),
        "net.onnx": (b"x", "KataGo loads only .bin.gz, .bin, .txt.gz, .txt or .gz files"),
    }
    for name, (data, why) in bad.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ModelError) as info:
            check_network_file(tmp_path / name)
        assert str(info.value) == f"{tmp_path / name} is not a KataGo network: {why}", name


def test_cli_inspect(fresh_kp: Katapool, tmp_path: Path) -> None:
    proc = fresh_kp.run("model", "inspect", str(TRANSFORMER_KV), "--json", check=True)
    info = json.loads(proc.stdout)
    assert info["name"] == "b7c96h6kv3qk32v16tflrs-fson-bnh" and info["parameters"] == 851_881
    table = fresh_kp.run("model", "inspect", str(G170), check=True).stdout
    assert "1,027,911" in table and "4 ordinary, 2 gpool" in table
    missing = fresh_kp.run("model", "inspect", str(tmp_path / "none.bin.gz"))
    assert missing.returncode == 1 and missing.stderr.startswith("error: cannot read")
