import sys

import pytest
import torch

from tunesmith.train.lean import return_freed_memory


def test_fixes_malloc_thresholds_on_a_linux_cpu_only():
    assert return_freed_memory(torch.device("cuda")) is False
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    assert return_freed_memory(torch.device("cpu")) is True
