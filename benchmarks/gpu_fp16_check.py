#!/usr/bin/env python3
"""FP16 arithmetic on a real GPU: katapool's FP16 files run with PyTorch on CUDA, compared with
the FP32 export under KataGo's FP16 limits, beside the CPU check `model quantize` uses.

Two steps, because the GPU machine has no KataGo:

    # here, with the engine: real positions (the engine's input tensors and legal moves)
    .venv/bin/python benchmarks/gpu_fp16_check.py dump --positions 200 -o positions.npz
    # on the GPU machine (PyTorch with CUDA, onnx, onnxruntime; katapool on PYTHONPATH)
    python3 benchmarks/gpu_fp16_check.py check positions.npz NET.bin.gz... [--json OUT]

`check` exports each network (FP32) and converts it with `to_fp16`, then evaluates the same
positions four ways: FP32 on ONNX Runtime's CPU provider (the reference: it equals the engine
to 1e-5, docs/models.md), FP32 on the GPU (TF32 off), FP16 on the GPU (the file's own types:
FP16 convolutions and products in cuDNN/cuBLAS, FP32 where katapool keeps FP32), and FP16 the
way `model quantize` checks it on a CPU. The GPU runs the ONNX graph through a small
interpreter over PyTorch operations (the ~20 operator types katapool's exports use).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from torch_onnx_ops import torch_op  # noqa: E402  (after the path it lives on)


def dump(args: argparse.Namespace) -> None:
    from katapool.config.build import build_config
    from katapool.config.settings import Mode
    from katapool.engine.discovery import resolve_engine
    from katapool.engine.probe import probe_version
    from katapool.models import load_model
    from katapool.models.validate import (
        RawNN,
        engine_inputs,
        sample_positions,
        with_explicit_rules,
    )

    g170 = ROOT.parent / "shared" / "models" / "g170-b6c96-s175395328-d26788732.bin.gz"
    games = sorted((ROOT.parent / "shared").glob("sgf/*/*.sgf"))
    info = probe_version(resolve_engine(None).path)
    load_model(g170)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "gtp.cfg"
        cfg.write_text(build_config(mode=Mode.GTP, info=info, model=g170, preset="desktop").text)
        every = [p for p in sample_positions(with_explicit_rules(games, Path(tmp)), 10**9)
                 if p.size == 19]
        random.Random(23).shuffle(every)  # sample_positions returns them in game order
        positions = every[:args.positions]
        raw = RawNN(info.path, cfg, g170)  # legal moves: where the engine's policy is a number
        spatial, global_, legal, black = [], [], [], []
        try:
            for pos in positions:
                s, g = engine_inputs(info.path, cfg, g170, pos, Path(tmp))
                spatial.append(s.astype(np.uint8))
                global_.append(g)
                legal.append(~np.isnan(raw.evaluate(pos).policy))
                black.append(pos.black_to_move)
        finally:
            raw.close()
    np.savez_compressed(args.output, spatial=np.concatenate(spatial),
                        global_=np.concatenate(global_), legal=np.array(legal),
                        black=np.array(black))
    print(f"wrote {args.output}: {len(positions)} positions")


class TorchGraph:
    """Runs an ONNX graph of katapool's operator set with PyTorch on one device, keeping every
    tensor in the type the file gives it."""

    def __init__(self, proto: Any, device: str) -> None:
        import torch
        from onnx import numpy_helper

        self.torch, self.proto, self.device = torch, proto, device
        self.consts = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()).to(device)
                       for i in proto.graph.initializer}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self.torch
        env: dict[str, Any] = dict(self.consts)
        env.update({k: torch.from_numpy(v).to(self.device) for k, v in feeds.items()})
        with torch.no_grad():
            for node in self.proto.graph.node:
                args = [env[i] if i else None for i in node.input]
                attrs = {a.name: (a.i if a.type == 2 else list(a.ints) if a.type == 7 else a.f)
                         for a in node.attribute}
                env[node.output[0]] = torch_op(node.op_type, args, attrs)
        return {o.name: env[o.name].float().cpu().numpy() for o in self.proto.graph.output}

def check(args: argparse.Namespace) -> None:
    import onnxruntime as ort
    import torch

    from katapool.models import load_model
    from katapool.models.export_onnx import export_onnx
    from katapool.models.quantize import to_fp16
    from katapool.models.validate import FP16_LIMITS, compare, onnx_session, postprocess

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    data = np.load(args.positions)
    spatial, global_ = data["spatial"].astype(np.float32), data["global_"].astype(np.float32)
    legal, black = data["legal"], data["black"]
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else args.device
    print(f"GPU: {gpu}; PyTorch {torch.__version__}; ONNX Runtime "
          f"{ort.__version__}; {len(spatial)} positions", flush=True)
    print("| network | how | winrate p99 / max | lead p99 / max | top policy p99 / max | "
          "policy KL p99 / max | ownership p99 / max | KataGo FP16 limits |")
    print("|---|---|---|---|---|---|---|---|")
    results = []
    for net in args.nets:
        model = load_model(Path(net))
        fp32 = export_onnx(model)
        fp16 = to_fp16(fp32)

        def evals(run: Any, model: Any = model) -> list[Any]:
            out = []
            for start in range(0, len(spatial), args.batch):
                chunk = slice(start, start + args.batch)
                got = run({"InputSpatial": spatial[chunk], "InputGlobal": global_[chunk]})
                for i in range(len(got["OutputValue"])):
                    one = {k: v[i:i + 1] for k, v in got.items()}
                    j = start + i
                    out.append(postprocess(model, one, bool(black[j]), legal[j], global_[j]))
            return out

        def ort_runner(session: Any) -> Any:
            names = [o.name for o in session.get_outputs()]
            return lambda feeds: dict(zip(names, session.run(None, feeds), strict=True))

        began = time.perf_counter()
        reference = evals(ort_runner(ort.InferenceSession(fp32.SerializeToString(),
                                                          providers=["CPUExecutionProvider"])))
        ways = {"FP32 on the GPU (TF32 off)": TorchGraph(fp32, args.device).run,
                "FP16 on the GPU": TorchGraph(fp16, args.device).run,
                "FP16 as `model quantize` checks it (CPU)":
                    ort_runner(onnx_session(fp16.SerializeToString()))}
        for label, run in ways.items():
            report = compare(evals(run), reference, FP16_LIMITS)
            results.append({"network": model.name, "way": label, **report.as_dict()})
            e = report.errors
            print(f"| {model.name} | {label} | " + " | ".join(
                f"{e[k]['p99']:.2g} / {e[k]['max']:.2g}"
                for k in ("winrate", "lead", "top_policy", "policy_kl", "ownership"))
                + f" | {'within' if report.passed else 'over'} |", flush=True)
        print(f"  ({model.name}: {time.perf_counter() - began:.0f} s)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="step", required=True)
    d = sub.add_parser("dump")
    d.add_argument("--positions", type=int, default=200)
    d.add_argument("-o", "--output", type=Path, required=True)
    c = sub.add_parser("check")
    c.add_argument("positions", type=Path)
    c.add_argument("nets", nargs="+")
    c.add_argument("--batch", type=int, default=25)
    c.add_argument("--json")
    c.add_argument("--device", default="cuda", help="cuda (default); cpu to try the script")
    args = ap.parse_args()
    (dump if args.step == "dump" else check)(args)


if __name__ == "__main__":
    main()
