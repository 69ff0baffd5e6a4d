"""``katapool ray head`` and ``katapool ray worker``: machines for a Ray cluster."""

from __future__ import annotations

import argparse
import subprocess
import sys

from katapool.cli.common import err
from katapool.cli.shared_options import add_device, add_model, gpu_indices
from katapool.cluster.nodes import DEFAULT_PORT, NodePlan, head_argv, prepare_argv, worker_argv
from katapool.errors import KatapoolError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("ray", help="make this machine a Ray cluster node for katapool",
                       description="Join machines to a Ray cluster that `katapool start --ray` "
                                   "runs its members on (see docs/cluster.md).")
    rsub = p.add_subparsers(dest="ray_command", required=True, metavar="COMMAND")

    head = rsub.add_parser("head", help="start a Ray head here (for users without a cluster)")
    head.add_argument("--port", type=_port, default=DEFAULT_PORT)
    _node_args(head, default_cpu_members=0)
    head.set_defaults(func=cmd_head)

    worker = rsub.add_parser("worker", help="prepare this machine and join it to a cluster")
    worker.add_argument("--address", required=True, type=_address, metavar="HOST:PORT",
                        help="the head's address")
    _node_args(worker, default_cpu_members=None)
    add_model(worker, "network to prepare for (default: the engine's bundled one)")
    worker.add_argument("--no-prepare", action="store_true", help="skip engine install and "
                        "`katapool prepare` (an image that already has them)")
    worker.add_argument("--fast", action="store_true", help="OpenCL: reference tuning now, "
                        "full tune later (see katapool prepare --fast)")
    worker.set_defaults(func=cmd_worker)


def _port(text: str) -> int:
    # Checked here: Ray itself answers a bad port with an assertion's traceback.
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1 to 65535)")
    return port


def _address(text: str) -> str:
    """HOST:PORT, checked before the minutes of engine install and tuning that precede the join."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"{text!r}: expected the head's HOST:PORT, e.g. "
                                         f"10.0.0.5:{DEFAULT_PORT}")
    try:
        _port(port)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    return text


def _node_args(p: argparse.ArgumentParser, default_cpu_members: int | None) -> None:
    add_device(p, "GPUs this node offers to members, one each (default: "
               + ("none" if default_cpu_members == 0 else "every NVIDIA GPU found") + ")")
    p.add_argument("--cpu-members", type=int, default=default_cpu_members, metavar="N",
                   help="CPU members this node hosts (the katapool_cpu resource; default: "
                   + ("0" if default_cpu_members == 0 else "1 without GPUs, else 0") + ")")
    p.add_argument("--block", action="store_true", help="stay in the foreground (containers, "
                   "systemd)")


def _plan(args: argparse.Namespace, find_gpus: bool) -> NodePlan:
    gpus = gpu_indices(args, "katapool ray")
    if gpus is None and find_gpus:
        from katapool.devices.nvidia import list_nvidia_gpus

        found, _ = list_nvidia_gpus()
        gpus = [d.index for d in found]
    gpus = gpus or []
    cpu_members = args.cpu_members
    if cpu_members is None:
        cpu_members = 0 if gpus else 1
    if cpu_members < 0:
        raise KatapoolError(f"--cpu-members must be 0 or more (got {cpu_members})")
    return NodePlan(gpus, cpu_members)


def _run(argv: list[str], plan: NodePlan, what: str) -> None:
    err.print(f"katapool: {what}: {' '.join(argv)}")
    code = subprocess.call(argv, env=plan.env())
    if code != 0:
        raise KatapoolError(f"{what} failed (exit {code})")


def cmd_head(args: argparse.Namespace) -> int:
    plan = _plan(args, find_gpus=False)
    _run(head_argv(plan, args.port, args.block), plan, "starting the Ray head")
    if not args.block:
        err.print(f"katapool: head started; workers join with `katapool ray worker --address "
                  f"<this host>:{args.port}`; the daemon with `katapool start --ray auto`")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    plan = _plan(args, find_gpus=True)
    if not args.no_prepare:
        from katapool.engine.discovery import resolve_engine
        from katapool.errors import EngineNotFoundError

        try:
            resolve_engine(None)
        except EngineNotFoundError:
            _run([sys.executable, "-m", "katapool", "engine", "install"], plan,
                 "installing the engine")
        _run(prepare_argv(plan, args.model, args.fast), plan, "preparing this node")
    _run(worker_argv(args.address, plan, args.block), plan, "joining the cluster")
    err.print(f"katapool: joined {args.address} with {len(plan.gpus)} GPU(s) and "
              f"{plan.cpu_members} CPU member(s)")
    return 0
