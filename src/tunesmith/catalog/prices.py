"""GPU prices as data: who rents which GPU for how many dollars an hour, as of when, says who.

Prices come from sources registered in `PRICE_SOURCES`; `load_prices` concatenates them:

- ``builtin``: ``prices.json``, shipped with tunesmith. Only prices with a checkable source
  ship there (the guide's mid-2026 market ranges; AWS's L4 and A10G instances, the GPUs the
  guide names for inference, read from SkyPilot's public catalog), never prices from memory.
- ``csv``: your own file, ``tunesmith gpus --prices FILE.csv`` (format below).
- ``skypilot``: SkyPilot's offline catalog, read from disk where SkyPilot has written it
  (``~/.sky/catalogs/<version>/<cloud>/vms.csv``); nothing is imported or fetched.

A plugin adds a source with ``PRICE_SOURCES["name"] = fn``, where ``fn()`` takes no
arguments and returns ``list[Price]``.

The ``--prices`` CSV
--------------------
One offer per row, US dollars per GPU-hour (not per instance)::

    provider,gpu,on_demand,spot,as_of,source,region
    my-cloud,H100,2.80-3.20,,2026-05-01,our contract of 2026-04,us-east
    my-cloud,A100-80GB,2.10,1.20,2026-05,price page checked 2026-05-02,

- ``provider``, ``gpu``, ``as_of``, ``source``: required. ``region`` and ``note``: optional columns.
- ``gpu``: a name from the GPU catalog (``tunesmith gpus``), any case, spaces, ``-`` or ``_``
  ignored; also the aliases in ``GPU_ALIASES`` (``H100`` and ``H100-SXM5`` are ``H100-SXM``,
  ``A6000`` is ``RTX-A6000``). A bare ``A100`` is refused as ambiguous (write ``A100-40GB`` or
  ``A100-80GB``), and an ``A10G`` is not an ``A10``.
- ``on_demand``, ``spot``: a price above 0 (``2.49``, ``$2.49``) or a range (``2.00-3.00``);
  either may be empty, not both.
- ``as_of``: ``YYYY-MM-DD`` or ``YYYY-MM``.

Any bad row stops with a UsageError naming ``file:line``, the column, the value and what is
expected.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import asdict, dataclass
from datetime import date
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable

from tunesmith.catalog.gpu import load_gpus
from tunesmith.errors import UsageError
from tunesmith.io import read_utf8

Range = tuple[float, float]  # (low, high) $ per GPU-hour; a single price has low == high


@dataclass(frozen=True)
class Price:
    provider: str
    gpu: str  # a name from gpus.json
    on_demand: Range | None
    spot: Range | None
    as_of: str
    source: str
    region: str | None = None
    note: str | None = None

    @property
    def on_demand_mid(self) -> float | None:
        return mid(self.on_demand)

    @property
    def spot_mid(self) -> float | None:
        return mid(self.spot)


def mid(price_range: Range | None) -> float | None:
    """The midpoint of a (low, high) range; None for no price."""
    return None if price_range is None else (price_range[0] + price_range[1]) / 2


def format_range(price_range: Range | None) -> str:
    """(2.5, 3.5) -> "$2.50-3.50"; (2.99, 2.99) -> "$2.99"; None -> ""."""
    if price_range is None:
        return ""
    low, high = price_range
    return f"${low:.2f}" if low == high else f"${low:.2f}-{high:.2f}"


# ---------------------------------------------------------------- GPU names

# Other spellings of catalog GPUs. Keys are compared like catalog names: lower case, without
# spaces, "-" or "_" (so "H100 SXM5", "h100_sxm5" and "H100-SXM5" are one key).
GPU_ALIASES = {
    "h100": "H100-SXM",  # the H100 people rent for training; the PCIe part must say so
    "h100sxm5": "H100-SXM",
    "h200sxm": "H200",
    "a6000": "RTX-A6000",
    "4090": "RTX-4090",
}
# Names that look like a catalog GPU but are not one, refused with the reason: pricing one as
# the other would put the wrong speed or memory behind a cost estimate.
NOT_IN_CATALOG = {
    "a100": "ambiguous: write A100-40GB or A100-80GB",
}


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name.lower())


@lru_cache(maxsize=1)
def _catalog_names() -> dict[str, str]:
    return {_key(g.name): g.name for g in load_gpus()}


def _lookup_gpu(name: str) -> tuple[str | None, str]:
    """(catalog name, "") or (None, why not)."""
    key = _key(name)
    found = _catalog_names().get(key) or GPU_ALIASES.get(key)
    if found:
        return found, ""
    why = NOT_IN_CATALOG.get(key, "unknown GPU")
    return None, f"{why}; the catalog has {', '.join(_catalog_names().values())}"


def resolve_gpu(name: str) -> str:
    """The catalog name for a GPU name or alias ("h100" -> "H100-SXM"); UsageError if none."""
    found, why = _lookup_gpu(name)
    if found is None:
        raise UsageError(f"GPU {name!r}: {why}")
    return found


# ---------------------------------------------------------------- built-in prices


def builtin_prices() -> list[Price]:
    """The prices shipped in prices.json (each with its source and as-of date)."""
    data = json.loads((resources.files("tunesmith.catalog") / "prices.json").read_text(encoding="utf-8"))
    return [
        Price(provider=e["provider"], gpu=e["gpu"], on_demand=_pair(e["on_demand"]), spot=_pair(e["spot"]),
              as_of=e["as_of"], source=e["source"], region=e.get("region"), note=e.get("note"))
        for e in data["prices"]
    ]


def _pair(value: list[float] | None) -> Range | None:
    return None if value is None else (float(value[0]), float(value[1]))


# ---------------------------------------------------------------- --prices FILE.csv

CSV_COLUMNS = ("provider", "gpu", "on_demand", "spot", "as_of", "source")
CSV_OPTIONAL = ("region", "note")
CSV_HEADER = ",".join(CSV_COLUMNS) + "[,region][,note]"

_NUMBER = r"\d+(?:\.\d*)?|\.\d+"
_PRICE = re.compile(rf"\$?\s*({_NUMBER})\s*(?:-\s*\$?\s*({_NUMBER}))?")
_AS_OF = re.compile(r"(\d{4})-(\d{2})(?:-(\d{2}))?")
_EXPECTED_PRICE = "expected $ per GPU-hour above 0, as a number (2.49) or a range (2.00-3.00)"


def csv_prices(path: Path) -> list[Price]:
    """Read a --prices CSV (format in the module docstring); UsageError on the first bad row,
    and for a path that is not a readable UTF-8 file."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise UsageError(f"{path}: prices file not found (expected a CSV with header {CSV_HEADER})")
    text = read_utf8(  # a byte-order mark, which spreadsheets often save before the header, is fine
        path, "prices file (CSV)", "save the file as UTF-8 (\"CSV UTF-8\" in a spreadsheet) and try again")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = [(name or "").strip().lower() for name in reader.fieldnames or []]
        missing = [c for c in CSV_COLUMNS if c not in header]
        unknown = [c for c in header if c not in CSV_COLUMNS + CSV_OPTIONAL]
        if missing or unknown:
            problem = (f"missing column(s) {', '.join(missing)}" if missing else
                       f"unknown column(s) {', '.join(repr(c) for c in unknown)}")
            raise UsageError(f"{path}:1: {problem}; expected the header {CSV_HEADER}")
        reader.fieldnames = header
        # line_num is the line the row ends on, so quoted values over several lines still point right.
        return [_csv_row(row, f"{path}:{reader.line_num}") for row in reader]
    except csv.Error as e:  # a NUL byte, a quote left open at the end of the file
        raise UsageError(f"{path}:{reader.line_num}: not a CSV row the reader can parse ({e}); "
                         f"expected {CSV_HEADER}") from None


def _csv_row(row: dict[Any, Any], where: str) -> Price:
    if None in row:  # DictReader files values beyond the header under the key None
        raise UsageError(f"{where}: {len(row[None])} value(s) more than the header's columns; "
                         f"expected {CSV_HEADER} (quote values that contain a comma)")
    cells = {k: (v or "").strip() for k, v in row.items()}
    for column in ("provider", "gpu", "as_of", "source"):
        if not cells[column]:
            raise UsageError(f"{where}: column {column} is empty; every price needs a provider, a GPU, "
                             "an as-of date and a source")
    gpu, why = _lookup_gpu(cells["gpu"])
    if gpu is None:
        raise UsageError(f"{where}: column gpu = {cells['gpu']!r}: {why}")
    on_demand = _parse_price(cells["on_demand"], "on_demand", where)
    spot = _parse_price(cells["spot"], "spot", where)
    if on_demand is None and spot is None:
        raise UsageError(f"{where}: columns on_demand and spot are both empty; {_EXPECTED_PRICE} in at least one")
    return Price(provider=cells["provider"], gpu=gpu, on_demand=on_demand, spot=spot,
                 as_of=_parse_as_of(cells["as_of"], where), source=cells["source"],
                 region=cells.get("region") or None, note=cells.get("note") or None)


def _parse_price(text: str, column: str, where: str) -> Range | None:
    if not text:
        return None
    match = _PRICE.fullmatch(text)
    if match is None:
        negative = text.startswith("-") and _PRICE.fullmatch(text[1:].strip()) is not None
        what = "is negative" if negative else "is not a price"
        raise UsageError(f"{where}: column {column} = {text!r} {what}; {_EXPECTED_PRICE}")
    low = float(match.group(1))
    high = float(match.group(2)) if match.group(2) else low
    if low <= 0:
        raise UsageError(f"{where}: column {column} = {text!r} is zero; {_EXPECTED_PRICE}")
    if low > high:
        raise UsageError(f"{where}: column {column} = {text!r}: the low end is above the high end; "
                         "expected low-high, e.g. 2.00-3.00")
    return (low, high)


def _parse_as_of(text: str, where: str) -> str:
    match = _AS_OF.fullmatch(text)
    try:
        if match is None:
            raise ValueError
        date(int(match.group(1)), int(match.group(2)), int(match.group(3) or 1))
    except ValueError:
        raise UsageError(f"{where}: column as_of = {text!r} is not a date; expected YYYY-MM-DD or YYYY-MM") from None
    return text


# ---------------------------------------------------------------- SkyPilot's catalog

# Where SkyPilot keeps its catalog: sky/skylet/constants.py CATALOG_DIR = '~/.sky/catalogs', one
# folder per schema version (CATALOG_SCHEMA_VERSION, 'v5' ... 'v8'), one folder per cloud with a
# vms.csv: InstanceType, AcceleratorName, AcceleratorCount, Region, Price, SpotPrice, ... in an
# order that differs by cloud (skypilot-org/skypilot-catalog README), hence read by header.
SKYPILOT_CATALOGS = Path("~/.sky/catalogs")

# SkyPilot accelerator name (upper case) -> catalog GPU, only where it is the same chip.
SKYPILOT_GPUS = {
    "A100": "A100-40GB",  # SkyPilot's bare A100 is the 40 GB part (fetch_lambda_cloud GPU_TO_MEMORY)
    "A100-80GB": "A100-80GB",  # on RunPod the PCIe card: same chip and memory, ~5% less bandwidth
    "A100-80GB-SXM": "A100-80GB",
    "H100": "H100-SXM",  # except the PCIe and NVL parts sorted out in _skypilot_gpu
    "H100-SXM": "H100-SXM",
    "H100-MEGA": "H100-SXM",  # GCP a3-megagpu: H100 SXM with more network
    "H200": "H200",
    "H200-SXM": "H200",
    "L40S": "L40S",
    "L4": "L4",
    "A10": "A10",
    "A10G": "A10G",  # AWS's part (g5): not an A10, less tensor compute
    "A6000": "RTX-A6000",
    "RTXA6000": "RTX-A6000",
    "RTX4090": "RTX-4090",
}


def skypilot_catalog_dir(root: Path = SKYPILOT_CATALOGS) -> Path | None:
    """The newest schema folder SkyPilot has written (~/.sky/catalogs/v8), or None."""
    root = root.expanduser()
    if not root.is_dir():
        return None
    versions = [p for p in root.iterdir() if p.is_dir() and re.fullmatch(r"v\d+", p.name)]
    return max(versions, key=lambda p: int(p.name[1:]), default=None)


def skypilot_prices(catalog_dir: Path | None = None) -> list[Price]:
    """Per-GPU prices from SkyPilot's vms.csv files, one Price per (cloud, GPU): the cheapest
    region on demand and the cheapest for spot. No catalog on disk: no prices, no error."""
    catalog_dir = skypilot_catalog_dir() if catalog_dir is None else Path(catalog_dir).expanduser()
    if catalog_dir is None or not catalog_dir.is_dir():
        return []
    return [price for path in sorted(catalog_dir.glob("*/vms.csv")) for price in _skypilot_cloud(path)]


def _skypilot_cloud(path: Path) -> list[Price]:
    cloud = path.parent.name
    best: dict[str, dict[str, tuple[float, str]]] = {"Price": {}, "SpotPrice": {}}  # column -> gpu -> ($, region)
    try:
        with path.open(encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                gpu = _skypilot_gpu(cloud, row.get("AcceleratorName") or "", row.get("InstanceType") or "")
                count = _positive(row.get("AcceleratorCount"))
                # A count below 1 is a slice of a GPU (Azure's 1/6 A10): its price scaled up
                # is not what a whole GPU costs.
                if gpu is None or count is None or count < 1:
                    continue
                for column, cheapest_by_gpu in best.items():
                    price = _positive(row.get(column))
                    if price is not None and (gpu not in cheapest_by_gpu or price / count < cheapest_by_gpu[gpu][0]):
                        cheapest_by_gpu[gpu] = (price / count, row.get("Region") or "")
        as_of = date.fromtimestamp(path.stat().st_mtime).isoformat()
    except (OSError, UnicodeDecodeError, csv.Error):
        return []  # SkyPilot's file, not the user's: a broken one must not stop the planner
    prices = []
    for gpu in sorted(best["Price"].keys() | best["SpotPrice"].keys()):
        on_demand, spot = best["Price"].get(gpu), best["SpotPrice"].get(gpu)
        prices.append(Price(
            provider=cloud, gpu=gpu,
            on_demand=None if on_demand is None else (round(on_demand[0], 4),) * 2,
            spot=None if spot is None else (round(spot[0], 4),) * 2,
            as_of=as_of, source=f"SkyPilot catalog {path}",
            region=_regions(on_demand and on_demand[1], spot and spot[1]),
        ))
    return prices


def _skypilot_gpu(cloud: str, accelerator: str, instance_type: str) -> str | None:
    # Rows without an instance type price a GPU alone: GCP bills its GPUs apart from the VM they
    # attach to, and SkyPilot adds that VM's price itself. Divided, they would understate the cost.
    if not instance_type:
        return None
    accelerator = accelerator.strip().upper()
    if accelerator == "H100":
        # SkyPilot's "H100" is not always the SXM part: Lambda's gpu_1x_h100_pcie, and RunPod's
        # H100 PCIe (renamed "H100" by fetch_runpod) are PCIe; Azure's NC H100 v5 is an H100 NVL.
        if "pcie" in instance_type.lower() or cloud == "runpod":
            return "H100-PCIe"
        if cloud == "azure" and instance_type.startswith("Standard_NC"):
            return None
    return SKYPILOT_GPUS.get(accelerator)


def _positive(text: str | None) -> float | None:
    """A finite price or count above 0, else None (Azure writes 0 for H100s without a price)."""
    try:
        value = float(text or "")
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def _regions(on_demand: str | None, spot: str | None) -> str | None:
    if not spot or spot == on_demand:
        return on_demand or None
    return f"{on_demand}; spot: {spot}" if on_demand else f"spot: {spot}"


# ---------------------------------------------------------------- registry and queries

PriceSource = Callable[..., list[Price]]
PRICE_SOURCES: dict[str, PriceSource] = {
    "builtin": builtin_prices,
    "csv": csv_prices,
    "skypilot": skypilot_prices,
}


def load_prices(csv_path: Path | None = None, *, skypilot: bool = True,
                skypilot_dir: Path | None = None) -> list[Price]:
    """Every price tunesmith knows: built-in, then your CSV, then SkyPilot's catalog (when on
    disk; `skypilot_dir` overrides where), then any source a plugin registered."""
    prices = list(PRICE_SOURCES["builtin"]())
    if csv_path is not None:
        prices += PRICE_SOURCES["csv"](csv_path)
    if skypilot:
        prices += PRICE_SOURCES["skypilot"](skypilot_dir)
    for name, source in PRICE_SOURCES.items():
        if name not in ("builtin", "csv", "skypilot"):
            prices += source()
    return prices


def cheapest(prices: Iterable[Price], gpu: str) -> dict[str, Price | None]:
    """The lowest on-demand and the lowest spot offer for a GPU: {"on_demand": Price | None,
    "spot": Price | None}. Ranges compare by their midpoint, so a wide range does not beat a
    firm price on its best case alone."""
    name = resolve_gpu(gpu)
    offers = [p for p in prices if p.gpu == name]
    return {
        "on_demand": min((p for p in offers if p.on_demand), key=lambda p: mid(p.on_demand) or 0.0, default=None),
        "spot": min((p for p in offers if p.spot), key=lambda p: mid(p.spot) or 0.0, default=None),
    }


def gpu_price_catalog(prices: Iterable[Price]) -> dict[str, Any]:
    """`tunesmith gpus --json`: every catalog GPU with its specs and all its prices.
    The top-level as_of is the GPU specs' date; each price carries its own."""
    prices = list(prices)
    specs = json.loads((resources.files("tunesmith.catalog") / "gpus.json").read_text(encoding="utf-8"))
    return {
        "as_of": specs["as_of"],
        "gpus": [
            {"name": g.name, "memory_gb": g.memory_gb, "bf16_tflops": g.bf16_tflops,
             "bandwidth_gbps": g.bandwidth_gbps, "source": g.source,
             "prices": [_price_dict(p) for p in prices if p.gpu == g.name]}
            for g in load_gpus()
        ],
    }


def _price_dict(price: Price) -> dict[str, Any]:
    data = asdict(price)
    del data["gpu"]  # listed under its GPU
    return {key: list(value) if isinstance(value, tuple) else value for key, value in data.items()}
