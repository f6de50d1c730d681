"""The catalog's model configs (`catalog/models/*.json`: a real config.json per alias, its hub
id and published size): shared facts, so the model loader and the planner read one table."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any


def catalog_aliases() -> list[str]:
    folder = resources.files("tunesmith.catalog") / "models"
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def catalog_entry(alias: str) -> dict[str, Any]:
    path = resources.files("tunesmith.catalog") / "models" / f"{alias}.json"
    return json.loads(path.read_text(encoding="utf-8"))
