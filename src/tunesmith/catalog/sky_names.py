"""How SkyPilot names what tunesmith's catalog names: accelerators, and the names it accepts
for jobs and services. Shared by `tunesmith deploy --target sky` and `tunesmith launch`."""

from __future__ import annotations

import re

# Catalog GPU -> SkyPilot accelerator name (the names in SkyPilot's catalog vms.csv files).
# A catalog GPU missing here has no single SkyPilot name (the H100 PCIe is "H100" on some
# clouds and the SXM part on others), so it is never asked for by name.
SKY_ACCELERATORS = {
    "H200": "H200", "H100-SXM": "H100", "A100-80GB": "A100-80GB", "A100-40GB": "A100", "L40S": "L40S",
    "A10": "A10", "A10G": "A10G", "L4": "L4", "RTX-4090": "RTX4090", "RTX-A6000": "RTXA6000",
}


def sky_name(run_name: str) -> str:
    """A name SkyPilot accepts for a job or a service (lower case letters, digits and dashes,
    starting with a letter) made from the run folder's name: "My_Run.2" -> "my-run-2"."""
    name = re.sub(r"[^a-z0-9]+", "-", run_name.lower()).strip("-")
    return name if name[:1].isalpha() else f"run-{name}".rstrip("-")
