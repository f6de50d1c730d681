"""The snapshot of SkyPilot's public catalog that tunesmith ships: what it holds and where it was
read, the prices it gives (the same rules as SkyPilot's catalog on disk), which of the two wins per
cloud, the filter that makes it, a malformed one refused by file:line, and the refresh script's
offline path."""

import csv
import importlib.util
import io
import json
import os
import re
from datetime import datetime
from pathlib import Path

import pytest

from tunesmith.catalog.gpu import load_gpus
from tunesmith.catalog.prices import (
    SNAPSHOT_COLUMNS, builtin_prices, cheapest, filter_skypilot_catalog, load_prices, load_snapshot, newest_per_cloud,
    skypilot_prices, snapshot_csv_text, snapshot_prices,
)
from tunesmith.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOT = ROOT / "src" / "tunesmith" / "catalog" / "skypilot_snapshot.csv"
READ = "2026-11-30"
CLOUDS = {"aws", "cudo", "gcp", "hyperbolic", "lambda", "mithril", "nebius", "primeintellect", "runpod", "seeweb",
          "shadeform", "simplepod", "vast"}


@pytest.fixture(autouse=True)
def no_real_skypilot(tmp_path, monkeypatch):
    """A HOME without ~/.sky: a SkyPilot install on the test machine changes nothing here."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def stored_rows(cloud: str) -> list[dict[str, str]]:
    with SNAPSHOT.open(encoding="utf-8", newline="") as f:
        return [row for row in csv.DictReader(f) if row["cloud"] == cloud]


def by_machine(prices):
    """(cloud, GPU, GPUs per machine) -> its Price: one per machine size."""
    return {(p.provider, p.gpu, p.gpus_per_machine): p for p in prices}


# ---------------------------------------------------------------- what ships


def test_every_cloud_names_the_file_commit_and_day_it_was_read():
    snapshot = load_snapshot()
    assert snapshot.repository == "skypilot-org/skypilot-catalog"
    assert set(snapshot.clouds) == CLOUDS  # no azure: catalogs/v7/azure/vms.csv was not to be had
    for cloud, about in snapshot.clouds.items():
        assert about["path"] == f"catalogs/v7/{cloud}/vms.csv" and about["read"] == READ
        assert re.fullmatch(r"[0-9a-f]{40}", about["commit"])
        assert about["rows"] == len(stored_rows(cloud)) == sum(o.cloud == cloud for o in snapshot.offers)
    assert snapshot.clouds["aws"]["commit"] == "27f67dd4e1bc0d35fa0ec075180ad54b230882c4"
    # GCP prices its GPUs apart from the VMs: no row can be kept, and the provenance says why.
    assert snapshot.clouds["gcp"]["rows"] == 0 and "without an instance type" in snapshot.clouds["gcp"]["note"]
    assert SNAPSHOT.stat().st_size < 100_000


def test_the_stored_rows_are_what_the_filter_keeps_of_them():
    """The file is a fixed point of filter_skypilot_catalog: the refresh script, fed these rows,
    would write them back unchanged, and no row was typed in past the filter."""
    with SNAPSHOT.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    kept = [r for cloud in sorted(CLOUDS) for r in filter_skypilot_catalog(cloud, [x for x in rows if x["cloud"] == cloud])]
    assert snapshot_csv_text(kept) == SNAPSHOT.read_text(encoding="utf-8")


def test_the_snapshot_prices_every_catalog_gpu():
    prices = snapshot_prices()
    assert {p.gpu for p in prices} == {g.name for g in load_gpus()}
    assert {p.provider for p in prices} == CLOUDS - {"gcp"}
    assert all(p.as_of == READ and p.source.startswith("skypilot-org/skypilot-catalog catalogs/v7/") for p in prices)


def test_aws_h100_per_gpu_hour_is_the_cheapest_stored_row_over_its_8_gpus():
    rows = [r for r in stored_rows("aws") if r["AcceleratorName"] == "H100"]
    assert {r["InstanceType"] for r in rows} == {"p5.48xlarge"}
    on_demand = min(float(r["Price"]) for r in rows if r["Price"]) / 8
    spot = min(float(r["SpotPrice"]) for r in rows if r["SpotPrice"]) / 8
    aws = by_machine(snapshot_prices())[("aws", "H100-SXM", 8)]
    assert aws.on_demand == (round(on_demand, 4),) * 2 == (12.29, 12.29)  # p5.48xlarge $98.32
    assert aws.spot == (round(spot, 4),) * 2 == (1.5149, 1.5149)  # $12.1195 in us-east-2
    assert aws.region == "us-east-1, us-east-2, us-west-2; spot: us-east-2"
    assert aws.source == ("skypilot-org/skypilot-catalog catalogs/v7/aws/vms.csv at commit "
                          "27f67dd4e1bc0d35fa0ec075180ad54b230882c4, read 2026-11-30")


def test_lambda_mithril_and_prime_intellect_by_their_own_rules():
    found = by_machine(snapshot_prices())
    # Lambda: the 8-GPU instance ($23.92, $2.99 per GPU) and the 1-GPU one ($3.29) are two prices, each
    # the same in all 17 regions; no spot.
    lam = found[("lambda", "H100-SXM", 8)]
    assert (lam.on_demand, lam.spot) == ((2.99, 2.99), None)
    assert lam.region == "asia-northeast-1, asia-northeast-2, asia-south-1, +14 more"
    assert found[("lambda", "H100-SXM", 1)].on_demand == (3.29, 3.29)
    # Mithril's auction floor is a spot price, with a note saying what it is; no on-demand. It rents
    # 8-GPU machines only.
    mithril = found[("mithril", "H100-SXM", 8)]
    assert (mithril.on_demand, mithril.spot) == (None, (1.0, 1.0)) and "floor" in mithril.note
    assert [k for k in found if k[:2] == ("mithril", "H100-SXM")] == [("mithril", "H100-SXM", 8)]
    # Prime Intellect's __SPOT instance types are spot prices, next to the same type on demand.
    prime = found[("primeintellect", "A100-40GB", 1)]
    assert (prime.on_demand, prime.spot, prime.region) == ((0.72, 0.72), (0.18, 0.18), "FI")
    # Vast writes 0.00 for a spot price it has not got: no spot, not a free GPU.
    assert all(p.spot is None for p in snapshot_prices() if p.provider == "vast")
    # RunPod's L40S rows give a spot price above on-demand in every zone: left out.
    assert not [k for k in found if k[:2] == ("runpod", "L40S")]


def cheapest_stored(rows, column: str, count: float) -> tuple[float, str]:
    """($ per GPU-hour, cloud) of the cheapest stored row of a machine of `count` GPUs."""
    return min((round(float(r[column]) / count, 4), r["cloud"]) for r in rows
               if r[column] and float(r["AcceleratorCount"]) == count)


def test_four_l40s_on_one_machine_are_priced_by_machines_with_four():
    """Regression: plan priced 4 x L40S at Prime Intellect's $0.26 spot, the rate of a 1-GPU
    machine: no 4 x L40S machine is offered at it, and SkyPilot, asked for L40S:4, prices real ones."""
    with SNAPSHOT.open(encoding="utf-8", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["AcceleratorName"].upper() == "L40S"]
    four, one, any_size = (cheapest(snapshot_prices(), "L40S", n) for n in (4, 1, None))
    # AWS g6e.12xlarge (4 x L40S) at $2.9366 in ap-northeast-2 on spot; Prime Intellect's
    # massedcompute 4xL40S at $2.60 on demand.
    assert (four["spot"].spot[0], four["spot"].provider) == cheapest_stored(rows, "SpotPrice", 4) == (0.7341, "aws")
    assert (four["on_demand"].on_demand[0], four["on_demand"].provider) == cheapest_stored(rows, "Price", 4) == (
        0.65, "primeintellect")
    assert four["spot"].gpus_per_machine == four["on_demand"].gpus_per_machine == 4
    # One L40S: Prime Intellect's datacrunch 1xL40S spot type, $0.26, which is also the cheapest of any size.
    assert (one["spot"].spot[0], one["spot"].provider) == cheapest_stored(rows, "SpotPrice", 1) == (0.26, "primeintellect")
    assert any_size["spot"] == one["spot"]


def test_h100_sxm_on_one_gpu_and_on_eight():
    stored = {(r["cloud"], r["InstanceType"], r["Region"]): r
              for c in ("hyperbolic", "mithril", "runpod") for r in stored_rows(c)}
    assert stored[("hyperbolic", "1x-H100-28-271", "default")]["Price"] == "1.29"
    assert stored[("hyperbolic", "8x-H100-224-2165", "default")]["Price"] == "10.32"  # 8 x $1.29
    assert stored[("mithril", "h100-80gb.sxm.8x", "us-central1-b")]["SpotPrice"] == "8.0"  # the auction floor, 8 x $1.00
    assert stored[("runpod", "1x_H100-SXM_SECURE", "CA")]["SpotPrice"] == "2.69"
    one, eight = cheapest(snapshot_prices(), "H100-SXM", 1), cheapest(snapshot_prices(), "H100-SXM", 8)
    assert [(o.provider, o.on_demand) for o in (one["on_demand"], eight["on_demand"])] == [
        ("hyperbolic", (1.29, 1.29)), ("hyperbolic", (1.29, 1.29))]
    # Mithril's $1.00 spot is for 8-GPU machines only: one H100 on spot is RunPod's $2.69.
    assert (eight["spot"].provider, eight["spot"].spot, eight["spot"].gpus_per_machine) == ("mithril", (1.0, 1.0), 8)
    assert (one["spot"].provider, one["spot"].spot, one["spot"].gpus_per_machine) == ("runpod", (2.69, 2.69), 1)


# ---------------------------------------------------------------- SkyPilot's own catalog, when newer, wins

LAMBDA_LIVE = """InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,Price,Region,GpuInfo,SpotPrice
gpu_8x_h100_sxm5,H100,8.0,208.0,1800.0,20.0,us-east-1,,
"""
AZURE_LIVE = """InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region,Generation
Standard_NV36ads_A10_v5,A10,1,36.0,440.0,A10,3.0,,eastus,V2
"""
CPU_ONLY = """InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region,AvailabilityZone
m5.large,,,2.0,8.0,,0.1,0.04,us-east-1,use1-az1
"""


def catalog_dated(root: Path, files: dict[str, str], day: str) -> Path:
    stamp = datetime.fromisoformat(day + "T12:00").timestamp()
    for cloud, text in files.items():
        path = write(root / cloud / "vms.csv", text)
        os.utime(path, (stamp, stamp))
    return root


def skypilot_share(prices):
    """provider -> set of where its SkyPilot prices came from ('disk' or 'snapshot'); the built-in
    prices (AWS's L4 and A10G, also read from SkyPilot's catalog) are not counted."""
    where: dict[str, set[str]] = {}
    for p in (p for p in prices if p not in builtin_prices()):
        if p.source.startswith("SkyPilot catalog "):
            where.setdefault(p.provider, set()).add("disk")
        elif p.source.startswith("skypilot-org/skypilot-catalog catalogs/v7/"):
            where.setdefault(p.provider, set()).add("snapshot")
    return where


def test_a_newer_skypilot_file_replaces_that_clouds_snapshot_rows_only(tmp_path):
    catalog = catalog_dated(tmp_path / "v8", {"lambda": LAMBDA_LIVE}, "2026-12-05")
    prices = load_prices(skypilot_dir=catalog)
    where = skypilot_share(prices)
    assert where["lambda"] == {"disk"}  # not both
    assert all(where[c] == {"snapshot"} for c in CLOUDS - {"gcp", "lambda"})
    lam = [p for p in prices if p.provider == "lambda"]
    assert [(p.gpu, p.gpus_per_machine, p.on_demand, p.as_of) for p in lam] == [("H100-SXM", 8, (2.5, 2.5), "2026-12-05")]


@pytest.mark.parametrize("day", ["2026-11-01", READ])
def test_an_older_or_same_day_skypilot_file_leaves_the_snapshot_in_place(tmp_path, day):
    catalog = catalog_dated(tmp_path / "v8", {"lambda": LAMBDA_LIVE}, day)
    prices = load_prices(skypilot_dir=catalog)
    assert skypilot_share(prices)["lambda"] == {"snapshot"}
    assert by_machine(prices)[("lambda", "H100-SXM", 8)].on_demand == (2.99, 2.99)


def test_a_cloud_the_snapshot_lacks_comes_from_disk_whatever_its_date(tmp_path):
    catalog = catalog_dated(tmp_path / "v8", {"azure": AZURE_LIVE}, "2025-01-01")
    assert skypilot_share(load_prices(skypilot_dir=catalog))["azure"] == {"disk"}


def test_a_newer_file_without_catalog_gpus_does_not_empty_the_cloud(tmp_path):
    catalog = catalog_dated(tmp_path / "v8", {"aws": CPU_ONLY}, "2027-01-01")
    assert skypilot_share(load_prices(skypilot_dir=catalog))["aws"] == {"snapshot"}


def test_newest_per_cloud_compares_days(tmp_path):
    disk = catalog_dated(tmp_path / "v8", {"lambda": LAMBDA_LIVE}, "2026-12-01")
    on_disk, snapshot = skypilot_prices(disk), snapshot_prices()
    chosen = newest_per_cloud(on_disk, snapshot)
    assert [p for p in chosen if p.provider == "lambda"] == on_disk
    assert [p for p in chosen if p.provider != "lambda"] == [p for p in snapshot if p.provider != "lambda"]


def test_without_the_snapshot_only_skypilots_own_files(tmp_path):
    catalog = catalog_dated(tmp_path / "v8", {"lambda": LAMBDA_LIVE}, "2026-01-01")
    assert skypilot_share(load_prices(skypilot_dir=catalog, snapshot=False)) == {"lambda": {"disk"}}
    assert skypilot_share(load_prices(skypilot=False, snapshot=False)) == {}


# ---------------------------------------------------------------- the filter

# Rows in SkyPilot's own layouts (headers as its catalogs write them); prices made up for the test.
AWS_ROWS = """InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region,AvailabilityZone
p5.48xlarge,H100,8.0,192.0,2048.0,,98.32,30.0,us-east-1,use1-az1
p5.48xlarge,H100,8.0,192.0,2048.0,,98.32,20.0,us-east-1,use1-az2
p5.48xlarge,H100,8.0,192.0,2048.0,,98.32,25.0,us-east-1,use1-az4
p5.48xlarge,H100,8.0,192.0,2048.0,,110.0,,eu-west-2,euw2-az1
g4dn.xlarge,T4,1.0,4.0,16.0,,0.526,0.2,us-east-1,use1-az1
m5.large,,,2.0,8.0,,0.1,0.04,us-east-1,use1-az1
"""
GCP_ROWS = """InstanceType,vCPUs,MemoryGiB,AcceleratorName,AcceleratorCount,GpuInfo,Region,AvailabilityZone,Price,SpotPrice
a2-highgpu-1g,12.0,85.0,,,,us-central1,us-central1-a,0.7,0.3
,,,A100,1,A100,us-central1,us-central1-a,2.9,1.1
"""
AZURE_ROWS = """InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region,Generation
Standard_NV6ads_A10_v5,A10,0.167,6.0,55.0,A10,0.5,0.1,eastus,V2
Standard_NC40ads_H100_v5,H100,1,40.0,320.0,H100,7.0,3.0,eastus,V2
"""
SHADEFORM_ROWS = """InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region
hyperstack_A100_80G,A100_80G,1,28,120,,1.35,,canada-1
massedcompute_A100,A100,1,12,64,,1.10,,us-central
paperspace_H100,H100,1,16,80,,2.24,,ny2
lambdalabs_H100_sxm5x8,H100,8,208,1800,,23.92,,us-east-1
voltage_H100_NVL,H100,1,16,96,,2.10,,us-east
"""
PRIME_ROWS = """InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region,AvailabilityZone
datacrunch__1xH200_141GB__44__182,H200,1,44,182,,2.61,,FI,FIN-01
datacrunch__1xH200_141GB__44__182__SPOT,H200,1,44,182,,0.99,,FI,FIN-01
"""
RUNPOD_ROWS = """InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region,AvailabilityZone
1x_L40S_SECURE,L40S,1,16,62,,0.43,0.86,CA,CA-MTL-1
1x_RTX4090_SECURE,RTX4090,1,16,41,,0.69,0.34,CA,CA-MTL-1
"""
VAST_ROWS = """InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region
1x-RTX_4090-32-65536,RTX4090,1,32,64,,0.44,0.00,"California, US, NA"
"""
MITHRIL_ROWS = """InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region,AvailabilityZone
h100-80gb.sxm.8x,H100,8,208,1800,,8.0,8.0,us-central1-b,us-central1-b
"""


def rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def kept(cloud: str, text: str) -> list[tuple[str, ...]]:
    return [tuple(r[c] for c in SNAPSHOT_COLUMNS) for r in filter_skypilot_catalog(cloud, rows(text))]


def test_the_filter_keeps_the_cheapest_zone_per_instance_and_region_and_drops_what_is_no_catalog_gpu():
    # Three zones of us-east-1 become one row with the cheapest spot; the T4 is not in the catalog;
    # the CPU VM has no GPU.
    assert kept("aws", AWS_ROWS) == [("aws", "p5.48xlarge", "H100", "8.0", "eu-west-2", "110.0", ""),
                                     ("aws", "p5.48xlarge", "H100", "8.0", "us-east-1", "98.32", "20.0")]


def test_the_filter_drops_gpu_only_rows_fractions_and_nvl_cards():
    assert kept("gcp", GCP_ROWS) == []  # a GPU priced apart from its VM would understate the cost
    assert kept("azure", AZURE_ROWS) == []  # 1/6 of an A10; the NC H100 v5 is an H100 NVL


def test_the_filter_on_resellers_wants_the_instance_name_to_say_which_card():
    # A bare A100 or H100 at a reseller is any of several cards; A100_80G, sxm5 and NVL say which.
    assert kept("shadeform", SHADEFORM_ROWS) == [
        ("shadeform", "hyperstack_A100_80G", "A100_80G", "1.0", "canada-1", "1.35", ""),
        ("shadeform", "lambdalabs_H100_sxm5x8", "H100", "8.0", "us-east-1", "23.92", "")]


def test_the_filter_on_spot_rows():
    # Prime Intellect's __SPOT type: its price is a spot price.
    assert kept("primeintellect", PRIME_ROWS) == [
        ("primeintellect", "datacrunch__1xH200_141GB__44__182", "H200", "1.0", "FI", "2.61", ""),
        ("primeintellect", "datacrunch__1xH200_141GB__44__182__SPOT", "H200", "1.0", "FI", "", "0.99")]
    # RunPod's spot (interruptible) price is kept, except where it is above on-demand.
    assert kept("runpod", RUNPOD_ROWS) == [("runpod", "1x_RTX4090_SECURE", "RTX4090", "1.0", "CA", "0.69", "0.34")]
    assert kept("vast", VAST_ROWS) == [("vast", "1x-RTX_4090-32-65536", "RTX4090", "1.0", "California, US, NA", "0.44", "")]
    assert kept("mithril", MITHRIL_ROWS) == [("mithril", "h100-80gb.sxm.8x", "H100", "8.0", "us-central1-b", "", "8.0")]


# ---------------------------------------------------------------- a malformed snapshot

PROVENANCE = {"repository": "skypilot-org/skypilot-catalog",
              "clouds": {"aws": {"path": "catalogs/v7/aws/vms.csv", "commit": "abc", "read": "2026-11-30"}}}
GOOD = ("cloud,InstanceType,AcceleratorName,AcceleratorCount,Region,Price,SpotPrice\n"
        "aws,p5.48xlarge,H100,8.0,us-east-1,98.32,20.0\n")


def snapshot_files(tmp_path: Path, text: str, provenance: object = PROVENANCE) -> tuple[Path, Path]:
    return (write(tmp_path / "s.csv", text),
            write(tmp_path / "s.json", provenance if isinstance(provenance, str) else json.dumps(provenance)))


def test_a_good_snapshot_file_loads(tmp_path):
    [price] = snapshot_prices(*snapshot_files(tmp_path, GOOD))
    assert (price.provider, price.gpu, price.on_demand, price.spot) == ("aws", "H100-SXM", (12.29, 12.29), (2.5, 2.5))
    assert price.gpus_per_machine == 8
    assert price.source == "skypilot-org/skypilot-catalog catalogs/v7/aws/vms.csv at commit abc, read 2026-11-30"


@pytest.mark.parametrize("row, message", [
    ("aws,p5.48xlarge,H100,8.0,us-east-1,free,20.0", ":3: Price = 'free' is not a number above 0"),
    ("aws,p5.48xlarge,H100,eight,us-east-1,98.32,", ":3: AcceleratorCount = 'eight' is not a number above 0"),
    ("aws,p5.48xlarge,H100,8.0,us-east-1", ":3: expected 7 values"),
    ("lambda,gpu_1x_h100_pcie,H100,1.0,us-east-1,2.49,", ":3: cloud = 'lambda' has no provenance"),
    ("aws,g4dn.xlarge,T4,1.0,us-east-1,0.526,",
     ":3: InstanceType = 'g4dn.xlarge', AcceleratorName = 'T4': not a whole catalog GPU"),
])
def test_a_bad_snapshot_row_names_file_line_and_field(tmp_path, row, message):
    csv_path, json_path = snapshot_files(tmp_path, GOOD + row + "\n")
    with pytest.raises(UsageError, match=re.escape(f"{csv_path}{message}")):
        load_snapshot(csv_path, json_path)


def test_a_bad_snapshot_header_or_provenance_is_named(tmp_path):
    csv_path, json_path = snapshot_files(tmp_path, GOOD.replace("SpotPrice", "Spot"))
    with pytest.raises(UsageError, match=re.escape(f"{csv_path}:1: header")):
        load_snapshot(csv_path, json_path)
    csv_path, json_path = snapshot_files(tmp_path, GOOD, '{"repository": "x",\n "clouds": }')
    with pytest.raises(UsageError, match=re.escape(f"{json_path}:2: not JSON")):
        load_snapshot(csv_path, json_path)
    no_commit = {"repository": "x", "clouds": {"aws": {"path": "p", "read": "2026-11-30"}}}
    csv_path, json_path = snapshot_files(tmp_path, GOOD, no_commit)
    with pytest.raises(UsageError, match=re.escape(f"{json_path}: clouds.aws.commit is missing")):
        load_snapshot(csv_path, json_path)
    bad_day = {"repository": "x", "clouds": {"aws": {"path": "p", "commit": "c", "read": "30/11/2026"}}}
    csv_path, json_path = snapshot_files(tmp_path, GOOD, bad_day)
    with pytest.raises(UsageError, match=re.escape(f"{json_path}: clouds.aws.read = '30/11/2026' is not a date")):
        load_snapshot(csv_path, json_path)


# ---------------------------------------------------------------- the refresh script, offline


def refresh_script():
    spec = importlib.util.spec_from_file_location("refresh_skypilot_snapshot",
                                                  ROOT / "scripts" / "refresh_skypilot_snapshot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def refresh(source: Path, out: Path, *clouds: str) -> int:
    return refresh_script().main(["--from", str(source), "--clouds", *clouds, "--commit", "aws=" + "a" * 40,
                                  "--commit", "vast=" + "b" * 40, "--read", READ,
                                  "--csv", str(out / "s.csv"), "--json", str(out / "s.json")])


def test_the_refresh_script_from_local_files_writes_the_filtered_snapshot(tmp_path):
    source = tmp_path / "catalogs"
    write(source / "aws" / "vms.csv", AWS_ROWS)
    write(source / "vast" / "vms.csv", VAST_ROWS)
    assert refresh(source, tmp_path / "one", "aws", "vast") == 0
    snapshot = load_snapshot(tmp_path / "one" / "s.csv", tmp_path / "one" / "s.json")
    assert snapshot.clouds["aws"] == {"path": "catalogs/v7/aws/vms.csv", "commit": "a" * 40, "read": READ, "rows": 2}
    expected = filter_skypilot_catalog("aws", rows(AWS_ROWS)) + filter_skypilot_catalog("vast", rows(VAST_ROWS))
    assert (tmp_path / "one" / "s.csv").read_text(encoding="utf-8") == snapshot_csv_text(expected)
    # The same input writes the same bytes, in another place and again in the same one.
    assert refresh(source, tmp_path / "two", "aws", "vast") == 0
    assert refresh(source, tmp_path / "one", "aws", "vast") == 0
    for name in ("s.csv", "s.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_the_refresh_script_keeps_the_clouds_it_does_not_refresh(tmp_path, capsys):
    source = tmp_path / "catalogs"
    write(source / "aws" / "vms.csv", AWS_ROWS)
    write(source / "vast" / "vms.csv", VAST_ROWS)
    assert refresh(source, tmp_path / "out", "aws", "vast") == 0
    before = (tmp_path / "out" / "s.csv").read_text(encoding="utf-8")
    (source / "vast" / "vms.csv").unlink()
    assert refresh(source, tmp_path / "out", "vast") == 1  # not there: reported, kept as it was
    assert "vast: not refreshed" in capsys.readouterr().err
    assert (tmp_path / "out" / "s.csv").read_text(encoding="utf-8") == before
