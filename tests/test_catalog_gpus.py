"""The GPU catalog agrees with the peaks the planner is validated against (ANCHORS: dense
bf16 A100 312, H100 SXM 989, H200 989 TFLOP/s) and every entry names its source."""

import pytest

from tunesmith.catalog.gpu import gpu, load_gpus
from tunesmith.errors import UsageError


def test_published_dense_bf16_peaks():
    assert (gpu("A100-80GB").bf16_tflops, gpu("h100-sxm").bf16_tflops, gpu("H200").bf16_tflops) == (312, 989, 989)
    assert gpu("H200").memory_gb == 141 and gpu("A100-40GB").memory_gb == 40


def test_every_entry_is_complete_and_names_its_source():
    gpus = load_gpus()
    assert len({g.name for g in gpus}) == len(gpus) >= 8
    for g in gpus:
        assert g.memory_gb > 0 and g.bf16_tflops > 0 and g.bandwidth_gbps > 0
        assert "datasheet" in g.source or "whitepaper" in g.source


def test_unknown_gpu_lists_the_catalog():
    with pytest.raises(UsageError, match="unknown GPU 'B300'; the catalog has H200, H100-SXM"):
        gpu("B300")
