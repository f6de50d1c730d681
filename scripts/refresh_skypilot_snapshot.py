"""Refresh the snapshot of SkyPilot's public catalog that tunesmith ships (offline GPU prices).

    python scripts/refresh_skypilot_snapshot.py                      # download every cloud (needs a network)
    python scripts/refresh_skypilot_snapshot.py --clouds aws lambda  # only these; the others stay as they are
    python scripts/refresh_skypilot_snapshot.py --from DIR --commit aws=SHA ...  # offline: DIR/<cloud>/vms.csv

For each cloud: the newest commit that touched catalogs/v7/<cloud>/vms.csv (GitHub API), that file
at that commit (raw.githubusercontent.com), filtered by tunesmith.catalog.prices.filter_skypilot_catalog,
the function the loader reads the snapshot and SkyPilot's own catalog with. Writes
src/tunesmith/catalog/skypilot_snapshot.csv and .json, each atomically. Clouds not refreshed keep
their rows and provenance; a cloud that fails to download is reported and kept as it was.
Standard library only (urllib); run it from the repository with tunesmith importable.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import urllib.request
from datetime import date
from pathlib import Path
from typing import Any

from tunesmith.catalog.prices import (
    SKYPILOT_REPOSITORY, SNAPSHOT_COLUMNS, filter_skypilot_catalog, snapshot_csv_text,
)
from tunesmith.io import write_json_atomic, write_text_atomic

CATALOG = Path(__file__).resolve().parent.parent / "src" / "tunesmith" / "catalog"
SCHEMA = "v7"  # the catalog version whose column meanings tunesmith reads
# The clouds with a catalogs/v7/<cloud>/vms.csv when this list was made (2026-11-30); no azure/vms.csv
# could be found there then. Add a cloud here when SkyPilot adds one.
CLOUDS = ("aws", "cudo", "gcp", "hyperbolic", "lambda", "mithril", "nebius", "primeintellect", "runpod",
          "seeweb", "shadeform", "simplepod", "vast")
NOTE = ("Rows of SkyPilot's public catalog that price whole GPUs of tunesmith's catalog (gpus.json), one per "
        "(cloud, instance type, region) with its cheapest zone's prices, $ per instance-hour, in SkyPilot's "
        "column meanings after tunesmith's reading rules (tunesmith.catalog.prices.skypilot_offer: a *_SPOT "
        "type's price and Mithril's auction price are spot prices; a row whose spot price is above its "
        "on-demand price is left out). Per cloud: the file, the commit and the day it was read. "
        "Refresh: scripts/refresh_skypilot_snapshot.py")
# What a reader of a cloud's provenance needs to know about it.
CLOUD_NOTES = {
    "gcp": ("no rows: GCP's catalog lists its GPU VMs (a2, a3, g2) without their GPUs and each GPU as a row "
            "without an instance type, priced apart; a GPU row alone understates the cost"),
    "mithril": ("Mithril sells by spot auction and SkyPilot writes the auction's minimum price as both Price "
                "and SpotPrice: kept as a spot price, a floor rather than a quote"),
}
API = "https://api.github.com/repos/{repo}/commits?path={path}&per_page=1"
RAW = "https://raw.githubusercontent.com/{repo}/{commit}/{path}"


def catalog_path(cloud: str) -> str:
    return f"catalogs/{SCHEMA}/{cloud}/vms.csv"


def read_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def download(cloud: str, timeout: float = 60) -> tuple[str, str]:
    """(newest commit of the cloud's vms.csv, its text at that commit)."""
    path = catalog_path(cloud)
    with urllib.request.urlopen(API.format(repo=SKYPILOT_REPOSITORY, path=path), timeout=timeout) as r:
        commits = json.load(r)
    if not commits:
        raise ValueError(f"no commit touches {path}")
    commit = commits[0]["sha"]
    with urllib.request.urlopen(RAW.format(repo=SKYPILOT_REPOSITORY, commit=commit, path=path), timeout=timeout) as r:
        return commit, r.read().decode("utf-8")


def local(folder: Path, cloud: str) -> str | None:
    path = folder / cloud / "vms.csv"
    return path.read_text(encoding="utf-8") if path.is_file() else None


def previous(csv_path: Path, json_path: Path) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The provenance and rows already there, to keep the clouds this run does not refresh."""
    if not (csv_path.is_file() and json_path.is_file()):
        return {}, []
    clouds = json.loads(json_path.read_text(encoding="utf-8")).get("clouds", {})
    with csv_path.open(encoding="utf-8", newline="") as f:
        return clouds, list(csv.DictReader(f))


def refresh(clouds: list[str], *, source: Path | None, commits: dict[str, str], read: str,
            csv_path: Path, json_path: Path) -> int:
    provenance, rows = previous(csv_path, json_path)
    failed = []
    for cloud in clouds:
        try:
            if source is None:
                commit, text = download(cloud)
            else:
                text, commit = local(source, cloud), commits.get(cloud, "unknown")
                if text is None:
                    raise FileNotFoundError(source / cloud / "vms.csv")
            kept = filter_skypilot_catalog(cloud, read_rows(text))
        except (OSError, ValueError, KeyError, csv.Error) as e:
            print(f"{cloud}: not refreshed ({e})", file=sys.stderr)
            failed.append(cloud)
            continue
        rows = [r for r in rows if r["cloud"] != cloud] + kept
        provenance[cloud] = {"path": catalog_path(cloud), "commit": commit, "read": read, "rows": len(kept)}
        if cloud in CLOUD_NOTES:
            provenance[cloud]["note"] = CLOUD_NOTES[cloud]
        print(f"{cloud}: {len(kept)} rows from {catalog_path(cloud)} at {commit}")
    write_text_atomic(csv_path, snapshot_csv_text(rows))
    write_json_atomic(json_path, {"repository": SKYPILOT_REPOSITORY, "note": NOTE,
                                  "columns": list(SNAPSHOT_COLUMNS), "clouds": dict(sorted(provenance.items()))})
    return 1 if failed else 0


def parse_commits(pairs: list[str]) -> dict[str, str]:
    commits = {}
    for pair in pairs:
        cloud, sep, commit = pair.partition("=")
        if not sep or not cloud or not commit:
            raise SystemExit(f"--commit {pair!r}: expected CLOUD=SHA")
        commits[cloud] = commit
    return commits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clouds", nargs="+", default=list(CLOUDS), help="clouds to refresh (default: all)")
    parser.add_argument("--from", dest="source", type=Path,
                        help="offline: read DIR/<cloud>/vms.csv instead of downloading")
    parser.add_argument("--commit", action="append", default=[], metavar="CLOUD=SHA",
                        help="with --from: the commit each file was read at (else 'unknown')")
    parser.add_argument("--read", default=date.today().isoformat(), help="the day read, YYYY-MM-DD (default: today)")
    parser.add_argument("--csv", type=Path, default=CATALOG / "skypilot_snapshot.csv")
    parser.add_argument("--json", type=Path, default=CATALOG / "skypilot_snapshot.json")
    args = parser.parse_args(argv)
    try:
        date.fromisoformat(args.read)
    except ValueError:
        parser.error(f"--read {args.read!r}: expected YYYY-MM-DD")
    return refresh(args.clouds, source=args.source, commits=parse_commits(args.commit), read=args.read,
                   csv_path=args.csv, json_path=args.json)


if __name__ == "__main__":
    sys.exit(main())
