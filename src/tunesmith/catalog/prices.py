"""GPU prices as data: who rents which GPU for how many dollars an hour, as of when, says who.

Prices come from sources registered in `PRICE_SOURCES`; `load_prices` concatenates them:

- ``builtin``: ``prices.json``, shipped with tunesmith. Only prices with a checkable source
  ship there (the guide's mid-2026 market ranges; AWS's L4 and A10G instances, the GPUs the
  guide names for inference, read from SkyPilot's public catalog), never prices from memory.
- ``csv``: your own file, ``tunesmith gpus --prices FILE.csv`` (format below).
- ``skypilot``: SkyPilot's offline catalog, read from disk where SkyPilot has written it
  (``~/.sky/catalogs/<version>/<cloud>/vms.csv``); nothing is imported or fetched.
- ``skypilot-snapshot``: ``skypilot_snapshot.csv``, shipped with tunesmith: the rows of SkyPilot's
  public catalog (skypilot-org/skypilot-catalog) that price whole catalog GPUs, one per (cloud,
  instance type, region), with per cloud the file, the commit and the day it was read
  (``skypilot_snapshot.json``). ``scripts/refresh_skypilot_snapshot.py`` rewrites both.

Per cloud, SkyPilot's own file is used when its date (mtime) is newer than the day the snapshot
read that cloud, else the snapshot's rows: one or the other, never both. Either way each row goes
through `skypilot_offer` (which GPU, whole GPUs only, spot-only clouds, rows whose spot price is above
their on-demand price left out) and each (cloud, GPU, GPUs per machine) gets one Price: the instance
price over its GPU count, in the cheapest region on demand and the cheapest for spot.

Machine size: a Price says how many of its GPUs the machine it prices has (``gpus_per_machine``), or
None for any machine. A per-GPU price is only true of its machine: Prime Intellect rents one L40S for
$0.26 an hour on spot, but no 4 x L40S machine at that rate, and SkyPilot, asked for ``L40S:4``, prices
real machines with exactly 4. So `cheapest` with a count takes only the offers for that count or any
count. The guide's market ranges are for any machine; the built-in AWS prices are 1-GPU instances.

A plugin adds a source with ``PRICE_SOURCES["name"] = fn``, where ``fn()`` takes no
arguments and returns ``list[Price]``.

The ``--prices`` CSV
--------------------
One offer per row, US dollars per GPU-hour (not per instance)::

    provider,gpu,on_demand,spot,as_of,source,region
    my-cloud,H100,2.80-3.20,,2026-05-01,our contract of 2026-04,us-east
    my-cloud,A100-80GB,2.10,1.20,2026-05,price page checked 2026-05-02,

- ``provider``, ``gpu``, ``as_of``, ``source``: required. ``region``, ``note`` and ``gpus_per_machine``:
  optional columns.
- ``gpu``: a name from the GPU catalog (``tunesmith gpus``), any case, spaces, ``-`` or ``_``
  ignored; also the aliases in ``GPU_ALIASES`` (``H100`` and ``H100-SXM5`` are ``H100-SXM``,
  ``A6000`` is ``RTX-A6000``). A bare ``A100`` is refused as ambiguous (write ``A100-40GB`` or
  ``A100-80GB``), and an ``A10G`` is not an ``A10``.
- ``on_demand``, ``spot``: a price above 0 (``2.49``, ``$2.49``) or a range (``2.00-3.00``);
  either may be empty, not both.
- ``as_of``: ``YYYY-MM-DD`` or ``YYYY-MM``.
- ``gpus_per_machine``: the number of these GPUs on the machine the price is for (``8`` for a contract
  for 8-GPU nodes): plan then prices only options of that many GPUs with it. Empty, or no such column:
  the price holds for a machine of any size.

Any bad row stops with a UsageError naming ``file:line``, the column, the value and what is
expected.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import asdict, dataclass, replace
from datetime import date
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

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
    # How many of the GPU the priced machine has; None: any. A per-GPU price read off a 1-GPU machine
    # says nothing about what a 4-GPU machine costs per GPU.
    gpus_per_machine: int | None = None

    def covers(self, count: int | None) -> bool:
        """Whether this price holds for a machine of `count` GPUs (None: any machine will do)."""
        return count is None or self.gpus_per_machine is None or self.gpus_per_machine == count

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
              as_of=e["as_of"], source=e["source"], region=e.get("region"), note=e.get("note"),
              gpus_per_machine=e.get("gpus_per_machine"))
        for e in data["prices"]
    ]


def _pair(value: list[float] | None) -> Range | None:
    return None if value is None else (float(value[0]), float(value[1]))


# ---------------------------------------------------------------- --prices FILE.csv

CSV_COLUMNS = ("provider", "gpu", "on_demand", "spot", "as_of", "source")
CSV_OPTIONAL = ("region", "note", "gpus_per_machine")
CSV_HEADER = ",".join(CSV_COLUMNS) + "[,region][,note][,gpus_per_machine]"

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
                 region=cells.get("region") or None, note=cells.get("note") or None,
                 gpus_per_machine=_parse_gpu_count(cells.get("gpus_per_machine", ""), where))


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


def _parse_gpu_count(text: str, where: str) -> int | None:
    if not text:
        return None
    if not re.fullmatch(r"[0-9]+", text) or int(text) < 1:
        raise UsageError(f"{where}: column gpus_per_machine = {text!r} is not a number of GPUs; expected a whole "
                         "number above 0 (8 for an 8-GPU machine), or empty for a machine of any size")
    return int(text)


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
SKYPILOT_REPOSITORY = "skypilot-org/skypilot-catalog"

# SkyPilot accelerator name (upper case) -> catalog GPU, only where it is the same chip.
SKYPILOT_GPUS = {
    "A100": "A100-40GB",  # SkyPilot's bare A100 is the 40 GB part (fetch_lambda_cloud GPU_TO_MEMORY); see _a100
    "A100-80GB": "A100-80GB",  # on RunPod the PCIe card: same chip and memory, ~5% less bandwidth
    "A100-80GB-SXM": "A100-80GB",
    "A100_80G": "A100-80GB",  # Shadeform's spelling
    "H100": "H100-SXM",  # except the PCIe and NVL parts sorted out in _h100
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
# Clouds whose own fetcher writes a bare "A100" for the 40 GB part only. Elsewhere (Cudo, Seeweb,
# Shadeform, Prime Intellect, Vast, Mithril) a bare "A100" is also the 80 GB card, so the instance
# name must say which (Prime Intellect's 1xA100_80GB, Mithril's a100-80gb.sxm.8x) or the row is left out.
_A100_IS_40GB = {"aws", "azure", "gcp", "lambda"}
# Clouds whose bare "H100" is the SXM part: AWS p5, GCP a3, Lambda (its PCIe types say pcie),
# Azure ND (its NVL types, NC, are left out), Hyperbolic (GPU info 'NVIDIA-H100-80GB-HBM3': HBM3 is
# the SXM part). Marketplaces and resellers (Shadeform, Prime Intellect, Seeweb, ...) use one name for
# SXM, PCIe and NVL cards: there the instance name must say sxm or pcie.
_H100_IS_SXM = {"aws", "azure", "gcp", "hyperbolic", "lambda"}
# The memory must follow "a100" in the name: Cudo's _1x12v24gb is the VM's memory, not the GPU's.
_A100_MEMORY = re.compile(r"a100[^0-9]*(40|80)g", re.IGNORECASE)
# NVL cards (H100 NVL 94 GB, H200 NVL) are no catalog GPU; "NVLINK" in a name is the SXM/PCIe board's link.
_NVL = re.compile(r"nvl(?!ink)", re.IGNORECASE)
# Spot rows that SkyPilot writes as their own instance type with the spot price in the Price column
# (Prime Intellect: datacrunch__1xH100_80GB__30__120__SPOT).
_SPOT_TYPE = re.compile(r"_spot$", re.IGNORECASE)
# Clouds that sell GPUs only by spot auction and whose catalog writes the auction's minimum price
# in both columns (fetch_mithril: the same `price` as Price and SpotPrice): a spot price, a floor
# rather than a quote, and no on-demand price.
_SPOT_ONLY = {"mithril": "Mithril sells by spot auction; SkyPilot writes the auction's minimum price "
                         "as both Price and SpotPrice: kept as a spot price (a floor), no on-demand price"}
# A spot price above on-demand is a row that contradicts itself (RunPod's L40S: spot 0.86, on-demand
# 0.43 in every zone): neither column can be trusted. AWS writes spot with 4 decimals and on-demand
# with 5, so a spot price one rounding step above on-demand (g5.48xlarge 20.028100 vs 20.02809) is equal.
_SPOT_ABOVE_ON_DEMAND = 1.001


@dataclass(frozen=True)
class Offer:
    """One row of a SkyPilot vms.csv that prices whole catalog GPUs, after the rules above."""
    cloud: str
    instance_type: str
    accelerator: str  # SkyPilot's name, as written
    count: float
    gpu: str  # the catalog name
    region: str
    on_demand: float | None  # $ per instance-hour
    spot: float | None


def skypilot_offer(cloud: str, row: Mapping[str, str | None]) -> Offer | None:
    """The offer in one vms.csv row, or None when it prices no whole catalog GPU.

    The one place that reads a SkyPilot row: SkyPilot's own catalog on disk, the snapshot tunesmith
    ships and the script that refreshes it all go through here."""
    instance_type = (row.get("InstanceType") or "").strip()
    accelerator = (row.get("AcceleratorName") or "").strip()
    gpu = _skypilot_gpu(cloud, accelerator, instance_type)
    count = _positive(row.get("AcceleratorCount"))
    # A count below 1 is a slice of a GPU (Azure's 1/6 A10): its price scaled up is not what a
    # whole GPU costs. A fractional count above 1 is no machine a whole-GPU option can be priced by.
    if gpu is None or count is None or count < 1 or not count.is_integer():
        return None
    on_demand, spot = _positive(row.get("Price")), _positive(row.get("SpotPrice"))
    if _SPOT_TYPE.search(instance_type):
        on_demand, spot = None, spot or on_demand
    if cloud in _SPOT_ONLY:
        on_demand, spot = None, spot or on_demand
    if on_demand is not None and spot is not None and spot > on_demand * _SPOT_ABOVE_ON_DEMAND:
        return None
    if on_demand is None and spot is None:
        return None
    return Offer(cloud=cloud, instance_type=instance_type, accelerator=accelerator, count=count, gpu=gpu,
                 region=(row.get("Region") or "").strip(), on_demand=on_demand, spot=spot)


def _skypilot_gpu(cloud: str, accelerator: str, instance_type: str) -> str | None:
    # Rows without an instance type price a GPU alone: GCP bills its GPUs apart from the VM they
    # attach to (a2, a3 and g2 VMs are listed without their GPUs), and SkyPilot adds the two itself.
    # Divided, such a row would understate the cost.
    if not instance_type:
        return None
    name = accelerator.upper()
    if name in ("H100", "H200") and _NVL.search(instance_type):
        return None
    if name == "H100":
        return _h100(cloud, instance_type)
    if name == "A100":
        return _a100(cloud, instance_type)
    return SKYPILOT_GPUS.get(name)


def _h100(cloud: str, instance_type: str) -> str | None:
    # SkyPilot's "H100" is not always the SXM part: Lambda's gpu_1x_h100_pcie, and RunPod's H100
    # PCIe (renamed "H100" by fetch_runpod, its SXM card is "H100-SXM") are PCIe; Azure's NC H100 v5
    # is an H100 NVL.
    lowered = instance_type.lower()
    if "pcie" in lowered or cloud == "runpod":
        return "H100-PCIe"
    if "sxm" in lowered:
        return "H100-SXM"
    if cloud == "azure" and instance_type.startswith("Standard_NC"):
        return None
    return "H100-SXM" if cloud in _H100_IS_SXM else None


def _a100(cloud: str, instance_type: str) -> str | None:
    memory = _A100_MEMORY.search(instance_type)
    if memory:
        return f"A100-{memory.group(1)}GB"
    return "A100-40GB" if cloud in _A100_IS_40GB else None


def _positive(text: str | None) -> float | None:
    """A finite price or count above 0, else None (Azure writes 0 for H100s without a price,
    Vast 0.00 for a spot price it has not got)."""
    try:
        value = float(text or "")
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


MachineSize = tuple[str, int]  # (catalog GPU, how many of it one machine has)


def _cheapest_per_machine_size(cloud: str, offers: Iterable[Offer], as_of: str, source: str,
                               note: str | None = None) -> list[Price]:
    """One Price per (GPU, GPUs per machine): the cheapest region per GPU-hour on demand, and the
    cheapest for spot. Sizes stay apart: a 1-GPU machine's rate is no price for 4 GPUs on one machine."""
    # kind -> size -> ($ per GPU-hour rounded, the regions at that price): clouds that price every region
    # alike (Lambda, RunPod) would otherwise name whichever region sorts first as "the cheapest".
    best: dict[str, dict[MachineSize, tuple[float, set[str]]]] = {"on_demand": {}, "spot": {}}
    for offer in offers:
        size = (offer.gpu, int(offer.count))  # skypilot_offer keeps whole counts only
        for kind, cheapest_by_size in best.items():
            price = getattr(offer, kind)
            if price is None:
                continue
            per_gpu = round(price / offer.count, 4)
            kept = cheapest_by_size.get(size)
            if kept is None or per_gpu < kept[0]:
                cheapest_by_size[size] = (per_gpu, {offer.region})
            elif per_gpu == kept[0]:
                kept[1].add(offer.region)
    prices = []
    for gpu, count in sorted(best["on_demand"].keys() | best["spot"].keys()):
        on_demand, spot = best["on_demand"].get((gpu, count)), best["spot"].get((gpu, count))
        prices.append(Price(
            provider=cloud, gpu=gpu,
            on_demand=None if on_demand is None else (on_demand[0],) * 2,
            spot=None if spot is None else (spot[0],) * 2,
            as_of=as_of, source=source,
            region=_regions(on_demand and _listed(on_demand[1]), spot and _listed(spot[1])), note=note,
            gpus_per_machine=count,
        ))
    return prices


def _listed(regions: set[str], most: int = 3) -> str:
    """'us-east-1, us-east-2, us-west-2'; past `most`, how many more ('..., +14 more'). A name with a
    comma in it (Vast's "Texas, US, NA") is quoted."""
    names = sorted(f'"{r}"' if "," in r else r for r in regions if r)
    shown = ", ".join(names[:most])
    return f"{shown}, +{len(names) - most} more" if len(names) > most else shown


def _regions(on_demand: str | None, spot: str | None) -> str | None:
    if not spot or spot == on_demand:
        return on_demand or None
    return f"{on_demand}; spot: {spot}" if on_demand else f"spot: {spot}"


def skypilot_catalog_dir(root: Path = SKYPILOT_CATALOGS) -> Path | None:
    """The newest schema folder SkyPilot has written (~/.sky/catalogs/v8), or None."""
    root = root.expanduser()
    if not root.is_dir():
        return None
    versions = [p for p in root.iterdir() if p.is_dir() and re.fullmatch(r"v\d+", p.name)]
    return max(versions, key=lambda p: int(p.name[1:]), default=None)


def skypilot_prices(catalog_dir: Path | None = None) -> list[Price]:
    """Per-GPU prices from SkyPilot's vms.csv files, one Price per (cloud, GPU, GPUs per machine): the
    cheapest region on demand and the cheapest for spot. No catalog on disk: no prices, no error."""
    catalog_dir = skypilot_catalog_dir() if catalog_dir is None else Path(catalog_dir).expanduser()
    if catalog_dir is None or not catalog_dir.is_dir():
        return []
    return [price for path in sorted(catalog_dir.glob("*/vms.csv")) for price in _skypilot_cloud(path)]


def _skypilot_cloud(path: Path) -> list[Price]:
    cloud = path.parent.name
    try:
        with path.open(encoding="utf-8", newline="") as f:
            offers = [o for o in (skypilot_offer(cloud, row) for row in csv.DictReader(f)) if o]
        as_of = date.fromtimestamp(path.stat().st_mtime).isoformat()
    except (OSError, UnicodeDecodeError, csv.Error):
        return []  # SkyPilot's file, not the user's: a broken one must not stop the planner
    return _cheapest_per_machine_size(cloud, offers, as_of, f"SkyPilot catalog {path}", _SPOT_ONLY.get(cloud))


# ---------------------------------------------------------------- the shipped snapshot of SkyPilot's catalog

# skypilot_snapshot.csv: the rows of SkyPilot's public catalog that price catalog GPUs, one per
# (cloud, instance type, region) at its cheapest zone, in SkyPilot's column meanings after the rules
# of skypilot_offer (a _SPOT type's price and Mithril's auction price are in SpotPrice).
# skypilot_snapshot.json: per cloud, the file and commit it was read from and the day it was read.
# Both written by scripts/refresh_skypilot_snapshot.py.
SNAPSHOT_CSV = "skypilot_snapshot.csv"
SNAPSHOT_JSON = "skypilot_snapshot.json"
SNAPSHOT_COLUMNS = ("cloud", "InstanceType", "AcceleratorName", "AcceleratorCount", "Region", "Price", "SpotPrice")
_PROVENANCE_FIELDS = ("path", "commit", "read")


@dataclass(frozen=True)
class Snapshot:
    repository: str
    clouds: dict[str, dict[str, Any]]  # cloud -> {"path", "commit", "read", "rows", ["note"]}
    offers: list[Offer]

    def prices(self) -> list[Price]:
        prices = []
        for cloud, about in sorted(self.clouds.items()):
            source = f"{self.repository} {about['path']} at commit {about['commit']}, read {about['read']}"
            prices += _cheapest_per_machine_size(cloud, (o for o in self.offers if o.cloud == cloud), about["read"],
                                        source, _SPOT_ONLY.get(cloud))
        return prices


def filter_skypilot_catalog(cloud: str, rows: Iterable[Mapping[str, str | None]]) -> list[dict[str, str]]:
    """The snapshot rows for one cloud's vms.csv rows: the rows that price whole catalog GPUs
    (skypilot_offer), one per (instance type, region) with the cheapest zone's prices."""
    best: dict[tuple[str, str], Offer] = {}
    for offer in filter(None, (skypilot_offer(cloud, row) for row in rows)):
        key = (offer.instance_type, offer.region)
        if key in best:
            kept = best[key]
            offer = replace(kept, on_demand=_lowest(kept.on_demand, offer.on_demand),
                            spot=_lowest(kept.spot, offer.spot))
        best[key] = offer
    return [_snapshot_row(offer) for _, offer in sorted(best.items())]


def _lowest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _snapshot_row(offer: Offer) -> dict[str, str]:
    # repr: the shortest text that reads back as the same float, so a refresh of the same input
    # writes the same bytes.
    return {"cloud": offer.cloud, "InstanceType": offer.instance_type, "AcceleratorName": offer.accelerator,
            "AcceleratorCount": repr(offer.count), "Region": offer.region,
            "Price": "" if offer.on_demand is None else repr(offer.on_demand),
            "SpotPrice": "" if offer.spot is None else repr(offer.spot)}


def snapshot_csv_text(rows: Iterable[Mapping[str, str]]) -> str:
    """The snapshot CSV for rows from filter_skypilot_catalog, sorted by cloud, instance type, region."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=SNAPSHOT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda r: (r["cloud"], r["InstanceType"], r["Region"])))
    return out.getvalue()


def _snapshot_paths(csv_path: Path | None, json_path: Path | None) -> tuple[Any, Any]:
    folder = resources.files("tunesmith.catalog")
    return (folder / SNAPSHOT_CSV if csv_path is None else Path(csv_path),
            folder / SNAPSHOT_JSON if json_path is None else Path(json_path))


def load_snapshot(csv_path: Path | None = None, json_path: Path | None = None) -> Snapshot:
    """The snapshot (default: the one shipped in tunesmith.catalog). A malformed file is a
    UsageError naming file:line and the field: this file is ours, a bad one is a bug to fix."""
    csv_file, json_file = _snapshot_paths(csv_path, json_path)
    provenance = _snapshot_provenance(json_file)
    return Snapshot(repository=provenance["repository"], clouds=provenance["clouds"],
                    offers=_snapshot_offers(csv_file, provenance["clouds"]))


def _snapshot_provenance(json_file: Any) -> dict[str, Any]:
    try:
        data = json.loads(json_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{json_file}: cannot read the snapshot's provenance ({e})") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"{json_file}:{e.lineno}: not JSON ({e.msg})") from None
    clouds = data.get("clouds") if isinstance(data, dict) else None
    if not isinstance(data, dict) or not isinstance(data.get("repository"), str) or not isinstance(clouds, dict):
        raise UsageError(f"{json_file}: expected an object with 'repository' (text) and 'clouds' "
                         "({cloud: {path, commit, read}})")
    for cloud, about in clouds.items():
        for field in _PROVENANCE_FIELDS:
            if not isinstance(about, dict) or not isinstance(about.get(field), str) or not about[field]:
                raise UsageError(f"{json_file}: clouds.{cloud}.{field} is missing; every cloud needs "
                                 "path, commit and read (YYYY-MM-DD)")
        try:
            date.fromisoformat(about["read"])
        except ValueError:
            raise UsageError(f"{json_file}: clouds.{cloud}.read = {about['read']!r} is not a date; "
                             "expected YYYY-MM-DD") from None
    return data


def _snapshot_offers(csv_file: Any, clouds: Mapping[str, Any]) -> list[Offer]:
    try:
        text = csv_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{csv_file}: cannot read the snapshot ({e})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        if tuple(reader.fieldnames or ()) != SNAPSHOT_COLUMNS:
            raise UsageError(f"{csv_file}:1: header {','.join(reader.fieldnames or ())!r}; "
                             f"expected {','.join(SNAPSHOT_COLUMNS)}")
        return [_snapshot_offer(row, f"{csv_file}:{reader.line_num}", clouds) for row in reader]
    except csv.Error as e:
        raise UsageError(f"{csv_file}:{reader.line_num}: not a CSV row ({e})") from None


def _snapshot_offer(row: dict[Any, Any], where: str, clouds: Mapping[str, Any]) -> Offer:
    if None in row or None in row.values():
        raise UsageError(f"{where}: expected {len(SNAPSHOT_COLUMNS)} values ({','.join(SNAPSHOT_COLUMNS)})")
    if row["cloud"] not in clouds:
        raise UsageError(f"{where}: cloud = {row['cloud']!r} has no provenance in {SNAPSHOT_JSON}")
    for field in ("AcceleratorCount", "Price", "SpotPrice"):
        if row[field] and _positive(row[field]) is None:
            raise UsageError(f"{where}: {field} = {row[field]!r} is not a number above 0")
    offer = skypilot_offer(row["cloud"], row)
    if offer is None:
        raise UsageError(f"{where}: InstanceType = {row['InstanceType']!r}, AcceleratorName = "
                         f"{row['AcceleratorName']!r}: not a whole catalog GPU with a price; refresh the "
                         "snapshot with scripts/refresh_skypilot_snapshot.py")
    return offer


def snapshot_prices(csv_path: Path | None = None, json_path: Path | None = None) -> list[Price]:
    """Per-GPU prices from the snapshot of SkyPilot's public catalog shipped with tunesmith, one
    Price per (cloud, GPU, GPUs per machine), by the same rules as SkyPilot's catalog on disk."""
    return load_snapshot(csv_path, json_path).prices()


def newest_per_cloud(on_disk: list[Price], snapshot: list[Price]) -> list[Price]:
    """SkyPilot's own catalog for a cloud when its file is newer than the snapshot's reading of
    that cloud, else the snapshot: one of the two per cloud, never both. (A newer file with no
    catalog GPU in it leaves the snapshot's prices in place.)"""
    read = {p.provider: p.as_of for p in snapshot}
    newer = {p.provider for p in on_disk if p.provider not in read or p.as_of > read[p.provider]}
    return [p for p in on_disk if p.provider in newer] + [p for p in snapshot if p.provider not in newer]


# ---------------------------------------------------------------- registry and queries

PriceSource = Callable[..., list[Price]]
PRICE_SOURCES: dict[str, PriceSource] = {
    "builtin": builtin_prices,
    "csv": csv_prices,
    "skypilot": skypilot_prices,
    "skypilot-snapshot": snapshot_prices,
}


def load_prices(csv_path: Path | None = None, *, skypilot: bool = True, snapshot: bool = True,
                skypilot_dir: Path | None = None) -> list[Price]:
    """Every price tunesmith knows: built-in, then your CSV, then SkyPilot's catalog per cloud
    (its own files on disk when newer, `skypilot_dir` overrides where, else the shipped snapshot),
    then any source a plugin registered."""
    prices = list(PRICE_SOURCES["builtin"]())
    if csv_path is not None:
        prices += PRICE_SOURCES["csv"](csv_path)
    on_disk = PRICE_SOURCES["skypilot"](skypilot_dir) if skypilot else []
    prices += newest_per_cloud(on_disk, PRICE_SOURCES["skypilot-snapshot"]() if snapshot else [])
    for name, source in PRICE_SOURCES.items():
        if name not in ("builtin", "csv", "skypilot", "skypilot-snapshot"):
            prices += source()
    return prices


def cheapest(prices: Iterable[Price], gpu: str, count: int | None = None) -> dict[str, Price | None]:
    """The lowest on-demand and the lowest spot offer for a GPU: {"on_demand": Price | None,
    "spot": Price | None}. With `count`, only offers for a machine of `count` of them (or of any
    size); without, any machine's. Ranges compare by their midpoint, so a wide range does not beat
    a firm price on its best case alone."""
    name = resolve_gpu(gpu)
    offers = [p for p in prices if p.gpu == name and p.covers(count)]
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
