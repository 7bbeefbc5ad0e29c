"""A run is priced as the device it really runs on, with one warning line when the YAML says otherwise."""
from __future__ import annotations

import pytest

from replicate.config import parse_pipeline
from replicate.cost import catalog


@pytest.mark.parametrize("device, key", [
    ("NVIDIA H200", "h200"), ("NVIDIA H100 80GB HBM3", "h100-sxm"), ("NVIDIA H100 PCIe", "h100-pcie"),
    ("NVIDIA A100-SXM4-40GB", "a100-40gb"), ("NVIDIA A100-SXM4-80GB", "a100-80gb"), ("NVIDIA A10G", "a10g"),
    ("NVIDIA A10", "a10"), ("NVIDIA L4", "l4"), ("NVIDIA L40S", None), ("NVIDIA GeForce RTX 4090", "rtx-4090"),
    ("cpu: AMD EPYC 9R14 (2 cores)", "cpu"),
])
def test_detected_device_names_map_to_catalog_keys(device, key):
    assert catalog.detected_key(device) == key


def test_a_cpu_pipeline_on_a_gpu_is_priced_as_the_gpu_with_one_warning():
    key, usd, warning = catalog.priced_device("cpu", "NVIDIA H200", 2026)
    assert key == "h200" and usd == catalog.usd_per_device_hour("h200", 2026)
    assert warning.startswith("hardware.gpu is 'cpu' but this runs on 'NVIDIA H200': priced as h200")
    assert "\n" not in warning
    assert catalog.priced_device("h200", "NVIDIA H200", 2026)[2] is None  # as declared: silent
    key, usd, warning = catalog.priced_device("h100-sxm", "NVIDIA B300", 2026)
    assert key == "h100-sxm" and "does not list: priced as h100-sxm" in warning


def test_finetune_prices_this_machine_not_the_yaml(caplog):
    """On this CPU machine a pipeline that says h100-sxm is priced as the CPU it runs on."""
    pytest.importorskip("torch")
    from replicate import log
    from replicate.finetune.train import device_info

    cfg = parse_pipeline({"name": "p", "teacher": {"model": "packaged:smollm2-135m-instruct"},
                          "student": {"model": "packaged:gemma-3-270m"},
                          "finetune": {"hardware": {"gpu": "h100-sxm", "count": 1}}})
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU machine: the CPU case does not apply")
    log.setup(log.NORMAL)
    logger = log.get()
    logger.propagate = True
    try:
        with caplog.at_level("WARNING", logger="replicate"):
            price, peak = device_info(cfg)
    finally:
        logger.propagate = False
    assert price == catalog.usd_per_device_hour("cpu", cfg.prices)
    assert peak == catalog.hardware("cpu").peak_flops
    assert any("hardware.gpu is 'h100-sxm' but this runs on 'cpu: " in r.getMessage() for r in caplog.records)
