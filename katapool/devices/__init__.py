"""Compute devices on this machine: NVIDIA GPUs, OpenCL devices (as KataGo numbers them), CPU."""

from katapool.devices.discover import discover_devices, parse_device_spec
from katapool.devices.model import Device, DeviceKind, DeviceReport

__all__ = ["Device", "DeviceKind", "DeviceReport", "discover_devices", "parse_device_spec"]
