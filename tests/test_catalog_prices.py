"""The price catalog: the guide's ranges ship with their source, your own CSV is read or refused
line by line, SkyPilot's offline catalog is read from disk in its real format, and
`tunesmith gpus` lists all of it."""

import csv
import json
import os
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunesmith.catalog.gpu import load_gpus
from tunesmith.catalog.prices import (
    CSV_HEADER, PRICE_SOURCES, Price, builtin_prices, cheapest, csv_prices, format_range, load_prices, mid,
    resolve_gpu, skypilot_catalog_dir, skypilot_prices, snapshot_prices,
)
from tunesmith.cli import app
from tunesmith.errors import UsageError

GUIDE = "market range (guide)"
BUILTIN_AWS = "AWS (SkyPilot catalog)"


@pytest.fixture(autouse=True)
def no_real_skypilot(tmp_path, monkeypatch):
    """A HOME without ~/.sky, so a SkyPilot install on the test machine changes nothing here,
    and a wide terminal, so Rich does not wrap table cells."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COLUMNS", "200")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- built-in


def test_guide_ranges_ship_with_gpu_names_numbers_and_source():
    by_gpu = {p.gpu: p for p in builtin_prices() if p.provider == GUIDE}
    assert set(by_gpu) == {"A100-80GB", "H100-SXM", "L40S"}
    assert (by_gpu["A100-80GB"].on_demand, by_gpu["A100-80GB"].spot) == ((2.5, 3.5), (1.5, 2.5))
    assert (by_gpu["H100-SXM"].on_demand, by_gpu["H100-SXM"].spot) == ((3.0, 4.0), (2.0, 3.0))
    # The guide gives the L40S one range, not split: on-demand, no spot, and a note saying so.
    assert (by_gpu["L40S"].on_demand, by_gpu["L40S"].spot) == ((1.0, 1.5), None)
    assert "not split" in by_gpu["L40S"].note
    catalog = {g.name for g in load_gpus()}
    for p in by_gpu.values():
        assert p.gpu in catalog and p.provider == GUIDE and p.as_of == "2026-06"
        assert "guide to fine-tuning on cloud GPUs" in p.source and "mid-2026" in p.source
    assert by_gpu["H100-SXM"].on_demand_mid == 3.5 and mid(None) is None
    assert (format_range((2.5, 3.5)), format_range((2.99, 2.99)), format_range(None)) == ("$2.50-3.50", "$2.99", "")


def test_inference_gpus_ship_with_aws_prices_read_from_skypilots_catalog():
    """L4 and A10G, the GPUs the guide names for inference: the smallest AWS instance with one
    (g6.xlarge, g5.xlarge), its on-demand price in the cheapest US regions, the file and commit read."""
    aws = {p.gpu: p for p in builtin_prices() if p.provider == BUILTIN_AWS}
    assert set(aws) == {"L4", "A10G"}
    assert (aws["L4"].on_demand, aws["A10G"].on_demand) == ((0.8048, 0.8048), (1.006, 1.006))
    # The instance has one GPU: its price says nothing about a 4-GPU machine. The guide's ranges hold for any.
    assert aws["L4"].gpus_per_machine == aws["A10G"].gpus_per_machine == 1
    assert {p.gpus_per_machine for p in builtin_prices() if p.provider == GUIDE} == {None}
    for p, instance in ((aws["L4"], "g6.xlarge (1 x L4"), (aws["A10G"], "g5.xlarge (1 x A10G")):
        assert p.spot is None and p.as_of == "2026-11-29" and p.region == "us-east-1, us-east-2, us-west-2"
        assert p.source.startswith("skypilot-org/skypilot-catalog catalogs/v7/aws/vms.csv at commit 001367d2")
        assert instance in p.source and "CPUs and memory included" in p.note
    assert {p.gpu for p in builtin_prices()} <= {g.name for g in load_gpus()}


# ---------------------------------------------------------------- GPU names


@pytest.mark.parametrize("name, expected", [
    ("H100", "H100-SXM"), ("H100-SXM5", "H100-SXM"), ("h100 sxm5", "H100-SXM"), ("h100_sxm", "H100-SXM"),
    ("H100 PCIe", "H100-PCIe"), ("a100-80gb", "A100-80GB"), ("A100 40GB", "A100-40GB"),
    ("A6000", "RTX-A6000"), ("rtx 4090", "RTX-4090"), ("H200-SXM", "H200"), ("l40s", "L40S"), ("A10", "A10"),
    ("a10g", "A10G"),  # AWS's part, its own catalog entry: never priced as an A10
])
def test_gpu_aliases(name, expected):
    assert resolve_gpu(name) == expected


@pytest.mark.parametrize("name, message", [
    ("A100", "'A100': ambiguous: write A100-40GB or A100-80GB"),
    ("B300", "'B300': unknown GPU; the catalog has H200, H100-SXM, H100-PCIe"),
])
def test_names_that_are_not_catalog_gpus_are_refused_with_the_reason(name, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        resolve_gpu(name)


# ---------------------------------------------------------------- --prices FILE.csv


def test_csv_round_trip(tmp_path):
    prices = [
        Price("my-cloud", "H100-SXM", (2.8, 3.2), None, "2026-05-01", "our contract, 2026-04", "us-east"),
        Price("my-cloud", "A100-80GB", (2.1, 2.1), (1.2, 1.2), "2026-05", "price page checked 2026-05-02"),
        Price("other", "L4", None, (0.3, 0.4), "2026-04-30", "quote #12", note="spot only"),
        Price("my-cloud", "H200", (2.0, 2.0), None, "2026-05", "contract for 8-GPU nodes", gpus_per_machine=8),
    ]
    path = tmp_path / "prices.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["provider", "gpu", "on_demand", "spot", "as_of", "source", "region", "note", "gpus_per_machine"])
        for p in prices:
            writer.writerow([p.provider, p.gpu, format_range(p.on_demand), format_range(p.spot), p.as_of, p.source,
                             p.region or "", p.note or "", p.gpus_per_machine or ""])
    assert csv_prices(path) == prices


def test_csv_accepts_aliases_spreadsheet_bom_and_upper_case_header(tmp_path):
    path = tmp_path / "prices.csv"
    path.write_bytes("\ufeffProvider,GPU,On_Demand,Spot,As_Of,Source\r\nx,h100 sxm5, 3 - 3.5 ,,2026-05,\"a, b\"\r\n"
                     .encode("utf-8"))
    assert csv_prices(path) == [Price("x", "H100-SXM", (3.0, 3.5), None, "2026-05", "a, b")]


GOOD = "my-cloud,H100,3.00,2.00,2026-05-01,quote"


@pytest.mark.parametrize("row, message", [
    ("my-cloud,H100,abc,,2026-05-01,quote", "column on_demand = 'abc' is not a price; expected $ per GPU-hour"),
    ("my-cloud,H100,-2.5,,2026-05-01,quote", "column on_demand = '-2.5' is negative; expected $ per GPU-hour"),
    ("my-cloud,H100,3.00,0,2026-05-01,quote", "column spot = '0' is zero; expected $ per GPU-hour above 0"),
    ("my-cloud,H100,4-3,,2026-05-01,quote", "column on_demand = '4-3': the low end is above the high end"),
    ("my-cloud,,3.00,,2026-05-01,quote", "column gpu is empty"),
    ("my-cloud,B300,3.00,,2026-05-01,quote", "column gpu = 'B300': unknown GPU; the catalog has H200, H100-SXM"),
    ("my-cloud,A100,1.00,,2026-05-01,quote", "column gpu = 'A100': ambiguous: write A100-40GB or A100-80GB"),
    ("my-cloud,H100,3.00,,June 2026,quote", "column as_of = 'June 2026' is not a date; expected YYYY-MM-DD or YYYY-MM"),
    ("my-cloud,H100,3.00,,2026-13,quote", "column as_of = '2026-13' is not a date"),
    ("my-cloud,H100,3.00,,2026-05-01,", "column source is empty"),
    ("my-cloud,H100,,,2026-05-01,quote", "columns on_demand and spot are both empty"),
    ("my-cloud,H100,3.00,,2026-05-01,quote,us,note,extra", "1 value(s) more than the header's columns"),
])
def test_each_bad_row_names_file_line_column_and_what_is_expected(tmp_path, row, message):
    path = write(tmp_path / "prices.csv", f"provider,gpu,on_demand,spot,as_of,source,region,note\n{GOOD}\n{row}\n")
    with pytest.raises(UsageError) as caught:
        csv_prices(path)
    assert str(caught.value).startswith(f"{path}:3: ")
    assert message in str(caught.value)


@pytest.mark.parametrize("value", ["0", "2.5", "eight", "-8", "\u00b2"])
def test_a_bad_gpus_per_machine_is_refused(tmp_path, value):
    path = write(tmp_path / "prices.csv", f"provider,gpu,on_demand,spot,as_of,source,gpus_per_machine\n{GOOD},8\n"
                                          f"{GOOD},{value}\n")
    with pytest.raises(UsageError, match=re.escape(f"{path}:3: column gpus_per_machine = {value!r} is not a number of "
                                                   "GPUs; expected a whole number above 0")):
        csv_prices(path)


def test_bad_header_and_missing_file_say_what_is_expected(tmp_path):
    missing_column = write(tmp_path / "a.csv", "provider,gpu,on_demand,spot,as_of\nx,H100,3,,2026-05\n")
    with pytest.raises(UsageError, match=re.escape(f"a.csv:1: missing column(s) source; expected the header {CSV_HEADER}")):
        csv_prices(missing_column)
    typo = write(tmp_path / "b.csv", "provider,gpu,ondemand,spot,as_of,source\n")
    with pytest.raises(UsageError, match=r"b.csv:1: missing column\(s\) on_demand"):
        csv_prices(typo)
    extra = write(tmp_path / "c.csv", "provider,gpu,on_demand,spot,as_of,source,zone\n")
    with pytest.raises(UsageError, match=r"c.csv:1: unknown column\(s\) 'zone'"):
        csv_prices(extra)
    with pytest.raises(UsageError, match="none.csv: prices file not found"):
        csv_prices(tmp_path / "none.csv")


def test_a_quoted_value_over_two_lines_does_not_shift_line_numbers(tmp_path):
    path = write(tmp_path / "p.csv", 'provider,gpu,on_demand,spot,as_of,source\nx,H100,3,,2026-05,"two\nlines"\n'
                                     "x,H100,oops,,2026-05,s\n")
    with pytest.raises(UsageError, match=r"p.csv:4: column on_demand = 'oops'"):
        csv_prices(path)


# ---------------------------------------------------------------- SkyPilot


# Headers exactly as SkyPilot writes them (column order differs by cloud): AWS and GCP from
# skypilot-org/skypilot-catalog catalogs/v7/{aws,gcp}/vms.csv, Lambda from fetch_lambda_cloud.py,
# Azure from fetch_azure.py USEFUL_COLUMNS. The prices are made up for the test.
AWS = """InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region,AvailabilityZone
p4de.24xlarge,A100-80GB,8.0,96.0,1152.0,"{'Gpus': [{'Name': 'A100-80GB', 'Manufacturer': 'NVIDIA', 'Count': 8}]}",40.0,16.0,us-east-1,use1-az1
p4de.24xlarge,A100-80GB,8.0,96.0,1152.0,,40.0,12.0,us-east-1,use1-az2
p4de.24xlarge,A100-80GB,8.0,96.0,1152.0,,32.0,20.0,us-west-2,usw2-az1
g5.xlarge,A10G,1.0,4.0,16.0,,1.0,0.4,us-east-1,use1-az1
m5.large,,,2.0,8.0,,0.1,0.04,us-east-1,use1-az1
"""
LAMBDA = """InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,Price,Region,GpuInfo,SpotPrice
gpu_1x_h100_pcie,H100,1.0,26.0,200.0,2.5,us-east-1,,
gpu_8x_h100_sxm5,H100,8.0,208.0,1800.0,24.0,us-east-1,,
gpu_8x_h100_sxm5,H100,8.0,208.0,1800.0,28.0,us-west-1,,
"""
AZURE = """InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region,Generation
Standard_ND96isr_H100_v5,H100,8,96.0,1900.0,H100,0.0,0.0,eastus,V2
Standard_NC40ads_H100_v5,H100,1,40.0,320.0,H100,7.0,3.0,eastus,V2
Standard_NV6ads_A10_v5,A10,0.167,6.0,55.0,A10,0.5,0.1,eastus,V2
Standard_NV36ads_A10_v5,A10,1,36.0,440.0,A10,3.0,,eastus,V2
"""
GCP = """InstanceType,vCPUs,MemoryGiB,AcceleratorName,AcceleratorCount,GpuInfo,Region,AvailabilityZone,Price,SpotPrice
a2-highgpu-1g,12.0,85.0,,,,us-central1,us-central1-a,0.7,0.3
,,,A100,1,A100,us-central1,us-central1-a,2.9,1.1
"""


def write_catalog(root: Path) -> Path:
    catalog = root / "v8"
    for cloud, text in (("aws", AWS), ("lambda", LAMBDA), ("azure", AZURE), ("gcp", GCP)):
        path = write(catalog / cloud / "vms.csv", text)
        stamp = datetime(2026, 3, 4, 12).timestamp()
        os.utime(path, (stamp, stamp))
    return catalog


def test_skypilot_catalog_per_gpu_cheapest_region_and_names(tmp_path):
    catalog = write_catalog(tmp_path)
    found = {(p.provider, p.gpu): p for p in skypilot_prices(catalog)}
    # AWS: instance price / 8 GPUs; on-demand cheapest in us-west-2, spot cheapest in us-east-1
    # (another zone than the first row); the A10G is its own GPU, not an A10; the CPU VM has no GPU.
    a100 = found[("aws", "A100-80GB")]
    assert (a100.on_demand, a100.spot) == ((4.0, 4.0), (1.5, 1.5))
    assert a100.region == "us-west-2; spot: us-east-1"
    assert a100.as_of == "2026-03-04" and a100.source == f"SkyPilot catalog {catalog / 'aws' / 'vms.csv'}"
    # Lambda names its PCIe and SXM cards both "H100": the instance type tells them apart. No spot.
    assert found[("lambda", "H100-PCIe")].on_demand == (2.5, 2.5)
    assert (found[("lambda", "H100-SXM")].on_demand, found[("lambda", "H100-SXM")].spot) == ((3.0, 3.0), None)
    assert found[("lambda", "H100-SXM")].region == "us-east-1"
    # Azure: an H100 NVL (NC series) is not an SXM, $0 means "no price", 1/6 of an A10 is not an A10.
    assert found[("azure", "A10")].on_demand == (3.0, 3.0) and found[("azure", "A10")].spot is None
    assert not {key for key in found if key[0] == "azure" and key[1] != "A10"}
    # GCP prices its GPUs apart from the VM they attach to: such rows would understate the cost.
    assert found[("aws", "A10G")].on_demand == (1.0, 1.0)
    assert set(found) == {("aws", "A100-80GB"), ("aws", "A10G"), ("lambda", "H100-PCIe"), ("lambda", "H100-SXM"),
                          ("azure", "A10")}
    # Each price names the size of the machine it is for.
    assert {key: p.gpus_per_machine for key, p in found.items()} == {
        ("aws", "A100-80GB"): 8, ("aws", "A10G"): 1, ("lambda", "H100-PCIe"): 1, ("lambda", "H100-SXM"): 8,
        ("azure", "A10"): 1}


def test_skypilot_machine_sizes_are_priced_apart(tmp_path):
    """Regression: one price per (cloud, GPU), the cheapest per GPU over all sizes, let plan price
    4 x L40S at the rate of a 1-GPU machine that no 4-GPU machine is offered at."""
    catalog = tmp_path / "v8"
    write(catalog / "lambda" / "vms.csv", LAMBDA.splitlines()[0] + "\n"
          "gpu_1x_h100_sxm5,H100,1.0,26.0,225.0,3.29,us-east-1,,\n"
          "gpu_8x_h100_sxm5,H100,8.0,208.0,1800.0,24.0,us-east-1,,\n"
          "gpu_8x_h100_sxm5,H100,8.0,208.0,1800.0,23.92,us-west-1,,\n"
          "odd_h100_sxm5,H100,1.5,26.0,225.0,1.0,us-east-1,,\n")  # no machine of whole GPUs: left out
    found = [(p.gpu, p.gpus_per_machine, p.on_demand, p.region) for p in skypilot_prices(catalog)]
    assert found == [("H100-SXM", 1, (3.29, 3.29), "us-east-1"), ("H100-SXM", 8, (2.99, 2.99), "us-west-1")]


def test_skypilot_default_location_is_the_newest_schema_under_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    write_catalog(home / ".sky" / "catalogs")
    write(home / ".sky" / "catalogs" / "v10" / "lambda" / "vms.csv", LAMBDA)  # newer than v8 (not by string order)
    assert skypilot_catalog_dir() == home / ".sky" / "catalogs" / "v10"
    assert {p.provider for p in load_prices(snapshot=False)} == {GUIDE, BUILTIN_AWS, "lambda"}
    assert {p.provider for p in load_prices(skypilot=False, snapshot=False)} == {GUIDE, BUILTIN_AWS}


def test_no_skypilot_catalog_means_no_skypilot_prices_and_no_error(tmp_path):
    assert skypilot_catalog_dir() is None  # HOME has no ~/.sky
    assert skypilot_prices() == [] and skypilot_prices(tmp_path / "nowhere") == []
    # Without SkyPilot on disk the shipped snapshot prices SkyPilot's clouds; without it too, only the built-in.
    assert load_prices(snapshot=False) == builtin_prices()
    assert load_prices() == builtin_prices() + snapshot_prices()


# ---------------------------------------------------------------- cheapest


def test_cheapest_compares_ranges_by_midpoint_and_keeps_spot_apart(tmp_path):
    path = write(tmp_path / "p.csv", "provider,gpu,on_demand,spot,as_of,source\n"
                                     "firm,H100,3.40,,2026-05,q\nsteep,H100,3.60,2.60,2026-05,q\n")
    # The built-in prices and this file alone: the snapshot's real offers would undercut both.
    best = cheapest(load_prices(path, snapshot=False), "h100")
    # 3.40 beats the guide's 3.00-4.00 (mid 3.50); 3.60 would not. The guide's spot (mid 2.50) beats 2.60.
    assert best["on_demand"].provider == "firm" and best["spot"].provider == GUIDE
    assert cheapest(load_prices(snapshot=False), "L40S")["spot"] is None
    assert cheapest(load_prices(snapshot=False), "H200") == {"on_demand": None, "spot": None}


def test_cheapest_for_a_count_takes_offers_for_that_machine_size_or_any(tmp_path):
    path = write(tmp_path / "p.csv", "provider,gpu,on_demand,spot,as_of,source,gpus_per_machine\n"
                                     "eights,H100,1.00,,2026-05,q,8\nany,H100,3.30,,2026-05,q,\n")
    prices = load_prices(path, snapshot=False)
    assert cheapest(prices, "H100", 8)["on_demand"].provider == "eights"
    # Not for 1 or 4 GPUs, nor for any count: the guide's range (any machine) or the file's other row.
    assert cheapest(prices, "H100", 4)["on_demand"].provider == "any"
    assert cheapest(prices, "H100", 1)["spot"].provider == GUIDE
    assert cheapest(prices, "H100")["on_demand"].provider == "eights"
    # AWS's built-in L4 price is a 1-GPU instance's: nothing prices 4 L4s on one machine here.
    assert cheapest(prices, "L4", 1)["on_demand"].provider == BUILTIN_AWS
    assert cheapest(prices, "L4", 4) == {"on_demand": None, "spot": None}


# ---------------------------------------------------------------- tunesmith gpus


def test_gpus_json_lists_every_gpu_with_its_prices(tmp_path):
    path = write(tmp_path / "p.csv", "provider,gpu,on_demand,spot,as_of,source,region\nmine,L4,0.50,,2026-05-02,q,eu\n")
    result = CliRunner().invoke(app, ["gpus", "--json", "--prices", str(path)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    gpus = {g["name"]: g for g in data["gpus"]}
    assert list(gpus) == [g.name for g in load_gpus()] and data["as_of"]
    assert gpus["H100-SXM"]["bf16_tflops"] == 989 and "datasheet" in gpus["H100-SXM"]["source"]
    assert gpus["H100-SXM"]["prices"][0] == {
        "provider": GUIDE, "on_demand": [3.0, 4.0], "spot": [2.0, 3.0], "as_of": "2026-06",
        "source": builtin_prices()[1].source, "region": None, "note": None, "gpus_per_machine": None}
    # Built-in first, then your file, then the snapshot of SkyPilot's catalog.
    assert gpus["L4"]["prices"][0]["provider"] == BUILTIN_AWS
    assert gpus["L4"]["prices"][1] == {"provider": "mine", "on_demand": [0.5, 0.5], "spot": None, "as_of": "2026-05-02",
                                       "source": "q", "region": "eu", "note": None, "gpus_per_machine": None}
    snapshot = gpus["L4"]["prices"][2:]
    assert snapshot and all(p["source"].startswith("skypilot-org/skypilot-catalog catalogs/v7/") for p in snapshot)
    # One entry per cloud and machine size: AWS's g6 family has 1, 4 and 8 L4s per machine.
    assert sorted(p["gpus_per_machine"] for p in snapshot if p["provider"] == "aws") == [1, 4, 8]
    # No built-in price for the H200: every one it has is the snapshot's, dated the day it was read.
    assert gpus["H200"]["prices"] and {p["as_of"] for p in gpus["H200"]["prices"]} == {"2026-11-30"}


def test_gpus_table_prices_every_gpu_from_the_snapshot_offline():
    result = CliRunner().invoke(app, ["gpus"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.strip()}
    for g in load_gpus():
        assert "$" in rows[g.name][4] and "2026-11-30" in rows[g.name], rows[g.name]
    assert "no price for" not in result.stdout
    # The cheapest per GPU-hour on any machine, with the machine's size: the L40S spot price is a
    # 1-GPU machine's, the H100-SXM's an 8-GPU one's.
    l40s, h100 = (" ".join(rows[name]) for name in ("L40S", "H100-SXM"))
    assert "$0.65 primeintellect (1x) $0.26 primeintellect (1x)" in l40s
    assert "$1.29 hyperbolic (1x) $1.00 mithril (8x)" in h100


def test_gpus_table_shows_cheapest_offers_and_where_prices_are_missing(tmp_path, monkeypatch):
    # The table's mechanics with the built-in prices and a file: without the snapshot, whose real
    # offers are cheaper and price the H200 too.
    monkeypatch.setitem(PRICE_SOURCES, "skypilot-snapshot", lambda: [])
    path = write(tmp_path / "p.csv", "provider,gpu,on_demand,spot,as_of,source\nmine,A100-80GB,2.10,1.20,2026-05-02,q\n")
    result = CliRunner().invoke(app, ["gpus", "--prices", str(path)])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert "$2.10 mine" in rows["A100-80GB"] and "$1.20 mine" in rows["A100-80GB"]
    assert "$3.00-4.00 market range (guide)" in rows["H100-SXM"] and "2026-06" in rows["H100-SXM"]
    assert "$1.00-1.50 market range (guide)" in rows["L40S"]
    assert rows["H200"].split()[4:] == ["-", "-"]
    assert "no price for H200" in " ".join(result.stdout.split()) and "--prices FILE.csv" in result.stdout
    bad = CliRunner().invoke(app, ["gpus", "--prices", str(tmp_path / "none.csv")])
    assert isinstance(bad.exception, UsageError) and "prices file not found" in str(bad.exception)


def test_gpus_through_the_installed_command(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "COLUMNS": "200"}
    command = Path(sys.executable).parent / "tunesmith"
    ok = subprocess.run([command, "gpus"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    h100 = next(line for line in ok.stdout.splitlines() if line.split()[:1] == ["H100-SXM"])
    assert "$" in h100 and "2026-11-30" in h100  # the shipped snapshot's prices, read from the installed package
    bad_csv = write(tmp_path / "bad.csv", "provider,gpu,on_demand,spot,as_of,source\nx,H100,free,,2026-05,q\n")
    bad = subprocess.run([command, "gpus", "--prices", bad_csv], capture_output=True, text=True, env=env)
    assert bad.returncode == 2
    assert f"{bad_csv}:2: column on_demand = 'free' is not a price" in " ".join(bad.stderr.split())


def test_a_prices_file_that_is_not_utf8_a_folder_or_missing_is_one_line(tmp_path):
    """Regression: a --prices file saved in Latin-1 crashed with UnicodeDecodeError, and a
    folder was reported as "not found"."""
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes(b"provider,gpu,on_demand,spot,as_of,source\nm\xfcnchen,H100,3,,2026-05,us\n")
    with pytest.raises(UsageError, match=re.escape(f"{latin1}:2: not UTF-8 text (byte 0xfc); save the file as UTF-8")):
        csv_prices(latin1)
    with pytest.raises(UsageError, match=re.escape(f"{tmp_path}: is a folder, expected a prices file (CSV)")):
        csv_prices(tmp_path)
    with pytest.raises(UsageError, match="none.csv: prices file not found"):
        load_prices(tmp_path / "none.csv")


def test_a_prices_file_that_is_not_utf8_through_the_cli(tmp_path):
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes(b"provider,gpu,on_demand,spot,as_of,source\nx,H100,3,,2026-05,caf\xe9\n")
    for command in (["gpus"], ["plan", "--model", "qwen2.5-0.5b"]):
        result = subprocess.run([sys.executable, "-m", "tunesmith.cli", *command, "--prices", str(latin1)],
                                capture_output=True, text=True)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert f"{latin1}:2: not UTF-8 text" in " ".join(result.stderr.split())
