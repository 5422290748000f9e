"""What the launchers ask of a CUDA device (compute capability, SM count), looked up once per device:
torch's own lookup costs a few microseconds per call on the host, and a call asks several times."""

import functools

import torch


@functools.lru_cache(maxsize=None)
def _properties(index: int):
    return torch.cuda.get_device_properties(index)


def _index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def capability(device: torch.device) -> tuple:
    """(major, minor) of a CUDA device; (0, 0) for any other device."""
    if device.type != "cuda":
        return (0, 0)
    properties = _properties(_index(device))
    return properties.major, properties.minor


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device."""
    return _properties(_index(device)).multi_processor_count
