"""Model FLOPs utilisation: the share of a device's peak a training run's arithmetic uses.

FLOPs per trained token come from `lmlm.train.models.flops_per_token` (6 N + 12 L d T, PaLM appendix
B). MFU = FLOPs per token x tokens per second per device / the device's peak. The peak comes from
`PretrainConfig.peak_tflops` when set, else from the dense bfloat16 tensor-core peak of the GPU
named below; a CPU has no table entry (no MFU unless `peak_tflops` says its peak).
"""
from __future__ import annotations

# Dense (no sparsity) peak TFLOP/s, bfloat16 tensor cores, from the vendors' data sheets; matched on
# the CUDA device name, longest key first.
PEAK_BF16_TFLOPS = {
    "H200": 989.4, "H100": 989.4, "H100 NVL": 835.0, "H100 PCIe": 756.0, "GH200": 989.4,  # "NVIDIA H100 80GB HBM3": SXM
    "B200": 2250.0, "A100": 312.0, "A800": 312.0, "L40S": 362.1, "L40": 181.0, "L4": 121.0, "A10G": 70.0,
    "A10": 125.0, "RTX 6000 Ada": 364.2, "A6000": 154.8,
}


def peak_flops(device_name: str, peak_tflops: float = 0.0) -> float | None:
    """Peak FLOP/s of one device: `peak_tflops` when > 0, else the table's entry for `device_name`."""
    if peak_tflops > 0:
        return peak_tflops * 1e12
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if key.lower() in device_name.lower():
            return PEAK_BF16_TFLOPS[key] * 1e12
    return None


def mfu(tokens_per_s_per_device: float, per_token: float, peak: float | None) -> float | None:
    """The share of `peak` FLOP/s used; None without a peak."""
    return None if not peak else tokens_per_s_per_device * per_token / peak
