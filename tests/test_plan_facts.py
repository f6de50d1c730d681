"""Model facts from every kind of source, with no download; the catalog's configs count to
the published sizes."""

import json

import pytest

from test_plan_arch import real_count
from tunesmith.errors import UsageError
from tunesmith.plan.arch import ModelFacts, count_params
from tunesmith.plan.facts import catalog_aliases, catalog_entry, model_facts

GUIDE_MODELS = {"llama-3.1-8b", "mistral-7b-v0.3", "qwen2.5-14b", "llama-3.1-70b", "mixtral-8x22b"}


def test_catalog_has_the_guides_models_and_common_small_ones():
    aliases = set(catalog_aliases())
    assert GUIDE_MODELS <= aliases
    assert {"smollm2-135m", "qwen2.5-0.5b", "llama-3.2-1b", "gemma-2-2b", "llama-2-7b"} <= aliases


@pytest.mark.parametrize("alias", catalog_aliases())
def test_catalog_config_counts_exactly_what_transformers_builds(alias):
    entry = catalog_entry(alias)
    counted = count_params(ModelFacts.from_config(entry["config"]))["total"]
    assert counted == real_count(entry["config"])
    assert abs(counted / 1e9 - entry["published_params_b"]) / entry["published_params_b"] < 0.01


def test_llama_3_1_8b_facts_and_exact_count():
    facts, where = model_facts("llama-3.1-8b")
    assert where == "catalog:llama-3.1-8b"
    assert (facts.layers, facts.hidden, facts.intermediate, facts.heads, facts.kv_heads, facts.vocab) == (
        32, 4096, 14336, 32, 8, 128256)
    assert count_params(facts)["total"] == 8_030_261_248


def test_local_folder_and_missing_sources(tiny_model_dir, tmp_path):
    facts, where = model_facts(str(tiny_model_dir))
    assert where.endswith("config.json") and facts.layers == 2 and facts.hidden == 64
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="has no config.json"):
        model_facts(str(tmp_path / "empty"))
    with pytest.raises(UsageError, match="not in the local HF cache"):
        model_facts("some-org/not-cached-model")


@pytest.mark.slow
def test_gguf_alias_reads_the_same_architecture_as_the_catalog():
    from tunesmith.models.source import alias_gguf_path

    gguf_facts, _ = model_facts(str(alias_gguf_path("smollm2-135m-instruct")))
    catalog_facts, _ = model_facts("smollm2-135m")
    assert count_params(gguf_facts)["total"] == count_params(catalog_facts)["total"]
