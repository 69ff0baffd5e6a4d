"""Compute devices on this machine: NVIDIA GPUs, OpenCL devices (as KataGo numbers them), CPU."""

from katapool.devices.discover import discover_devices, parse_device_spec
from katapool.devices.model import Device, DeviceKind, DeviceReport
from katapool.devices.spec import DeviceRef, parse_devices

__all__ = ["Device", "DeviceKind", "DeviceRef", "DeviceReport", "discover_devices", "parse_device_spec",
           "parse_devices"]
