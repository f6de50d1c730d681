"""Model facts from every kind of source, with no download; the catalog's configs count to
the published sizes."""

import json

import pytest

from test_model_arch import real_count
from tunesmith.errors import UsageError
from tunesmith.models.arch import ModelFacts, UnsupportedModel, count_params
from tunesmith.catalog.model_configs import catalog_aliases, catalog_entry
from tunesmith.models.aliases import ALIASES, Alias, find_alias
from tunesmith.models.facts import model_facts

SMALL_LLAMA = {"model_type": "llama", "vocab_size": 1000, "hidden_size": 64, "intermediate_size": 176,
               "num_hidden_layers": 2, "num_attention_heads": 8}
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


def test_one_alias_table_for_sources_and_facts():
    """A built-in alias is planned from its catalog entry; a catalog alias names its hub id."""
    for name, alias in ALIASES.items():
        assert alias.package and alias.gguf and alias.install and alias.catalog in catalog_aliases()
        assert model_facts(name)[1] == f"catalog:{alias.catalog}"
    for name in catalog_aliases():
        if name not in ALIASES:
            assert find_alias(name) == Alias(hub_id=catalog_entry(name)["hub_id"], catalog=name)
    assert find_alias("some-org/some-model") is None


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ALIASES))
def test_gguf_alias_reads_the_same_architecture_as_the_catalog(name):
    from tunesmith.models.source import alias_gguf_path

    gguf_facts, _ = model_facts(str(alias_gguf_path(name)))
    catalog_facts, _ = model_facts(ALIASES[name].catalog)
    assert count_params(gguf_facts)["total"] == count_params(catalog_facts)["total"]


# ---------------------------------------------------------------- malformed sources

BROKEN_CONFIGS = {
    "binary": (bytes(range(120, 256)), r"config\.json:1: not UTF-8 text"),
    "not_json": (b'{"model_type": "llama",\n oops}', r"config\.json:2:2: not valid JSON"),
    "a_list": (b"[1, 2]", r"config\.json: expected a JSON object of model settings, found a list"),
    "missing_fields": (b'{"model_type": "llama", "hidden_size": 64}',
                       r"config\.json: a llama config needs num_hidden_layers, intermediate_size, num_attention_heads"),
    "zero_heads": (json.dumps({**SMALL_LLAMA, "num_attention_heads": 0}).encode(),
                   r"config\.json: num_attention_heads = 0 is not a positive whole number"),
    "text_size": (json.dumps({**SMALL_LLAMA, "hidden_size": "big"}).encode(),
                  r'config\.json: hidden_size = "big" is not a positive whole number'),
}


@pytest.mark.parametrize("name", sorted(BROKEN_CONFIGS))
def test_a_broken_config_json_is_one_usage_error_naming_the_file(tmp_path, name):
    """Regression: a binary config.json crashed `plan` with UnicodeDecodeError, a non-JSON one
    with JSONDecodeError, a JSON list with AttributeError, missing fields with KeyError
    'num_attention_heads'. Each is a UsageError naming the file, and not UnsupportedModel
    (the pre-flight must stop on it, not skip it)."""
    content, message = BROKEN_CONFIGS[name]
    (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(UsageError, match=message) as caught:
        model_facts(str(tmp_path))
    assert str(tmp_path / "config.json") in str(caught.value)
    assert not isinstance(caught.value, UnsupportedModel)


def test_a_file_that_is_not_gguf_is_one_usage_error(tmp_path):
    """Regression: a .gguf that was not one raised ValueError about magic bytes (a bug report)."""
    fake = tmp_path / "model.gguf"
    fake.write_text("not a gguf")
    with pytest.raises(UsageError, match=r"model\.gguf: not a GGUF file \(it does not start with the bytes GGUF\)"):
        model_facts(str(fake))
    fake.write_bytes(b"GGUF\x03\x00\x00\x00truncated")
    with pytest.raises(UsageError, match=r"model\.gguf: cannot read its GGUF metadata .*download it again"):
        model_facts(str(fake))
    with pytest.raises(UsageError, match=r"missing\.gguf: GGUF file not found"):
        model_facts(str(tmp_path / "missing.gguf"))


def test_an_unsupported_architecture_names_the_file_and_is_its_own_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**SMALL_LLAMA, "model_type": "gpt_neox"}))
    with pytest.raises(UnsupportedModel, match=rf"{tmp_path / 'config.json'}: model architecture \(model_type\) "
                                               r"'gpt_neox' is not supported by the planner"):
        model_facts(str(tmp_path))
    with pytest.raises(UnsupportedModel, match="not in the local HF cache"):
        model_facts("some-org/not-cached-model")


def test_the_preflight_skips_a_model_it_cannot_read_but_stops_on_a_broken_one(tmp_path):
    """Training loads the model itself, so an architecture the planner does not count must not
    block it; a config.json that is not JSON would stop the loader too, so it stops here."""
    from tunesmith.config import build_config
    from tunesmith.plan.device import Device
    from tunesmith.plan.preflight import preflight

    cpu = Device(type="cpu", name="test CPU", memory_gb=16, available_gb=8)
    (tmp_path / "config.json").write_text(json.dumps({**SMALL_LLAMA, "model_type": "gpt_neox"}))
    check = preflight(build_config({"model": {"source": str(tmp_path)}}), cpu)
    assert check["fits"] is None and check["reason"].startswith("pre-flight skipped: ")
    assert "gpt_neox" in check["reason"]
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UsageError, match="not valid JSON"):
        preflight(build_config({"model": {"source": str(tmp_path)}}), cpu)


def test_malformed_model_through_the_cli_is_exit_2_without_a_traceback(tmp_path):
    from test_train_cli import tunesmith

    (tmp_path / "config.json").write_bytes(b"\xff\xfe\x00garbage")
    result = tunesmith("plan", "--model", tmp_path, "--tokens", "1M", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "this is a bug" not in result.stderr
    assert f"{tmp_path / 'config.json'}:1: not UTF-8 text" in " ".join(result.stderr.split())


# KerasHub's Qwen3 presets state these counts: an independent check of the q/k norms, head_dim
# and the tied heads of the small ones.
KERAS_QWEN3 = {"qwen3-0.6b": 596_049_920, "qwen3-1.7b": 1_720_574_976, "qwen3-4b": 4_022_468_096,
               "qwen3-8b": 8_190_735_360, "qwen3-14b": 14_768_307_200, "qwen3-32b": 32_762_123_264}


@pytest.mark.parametrize("alias", sorted(KERAS_QWEN3))
def test_qwen3_counts_what_its_publishers_state_to_the_parameter(alias):
    facts, _ = model_facts(alias)
    assert (facts.head_dim, facts.qk_norm) == (128, True)
    assert count_params(facts)["total"] == KERAS_QWEN3[alias]


@pytest.mark.parametrize("alias", [a for a in catalog_aliases() if "published_active_params_b" in catalog_entry(a)])
def test_catalog_moe_active_params_match_the_published_figure(alias):
    """Model cards round the active count to two figures (Qwen3-30B-A3B: 3.35B is stated as
    "3.3B activated"), hence 2%."""
    entry = catalog_entry(alias)
    active = count_params(ModelFacts.from_config(entry["config"]))["active"]
    assert abs(active / 1e9 - entry["published_active_params_b"]) / entry["published_active_params_b"] < 0.02


def test_qwen3_30b_a3b_counts_128_experts_of_width_768_eight_per_token():
    facts, _ = model_facts("qwen3-30b-a3b")
    assert (facts.experts, facts.active_experts, facts.intermediate, facts.qk_norm) == (128, 8, 768, True)
    assert count_params(facts)["total"] == 30_532_122_624 and count_params(facts)["active"] == 3_353_032_704


def test_mistral_small_3_head_dim_is_explicit_and_its_count_matches_an_independent_one():
    """Mistral Small 3's q is 32 x 128 = 4096 wide on a 5120 hidden size: a head_dim derived
    from hidden / heads (160) would overcount. 23,572,403,200 is a published meta-device count."""
    facts, _ = model_facts("mistral-small-3-24b")
    assert (facts.head_dim, facts.heads * facts.head_dim, facts.hidden) == (128, 4096, 5120)
    assert count_params(facts)["total"] == 23_572_403_200


def test_llama_3_3_70b_has_llama_3_1_70b_shape():
    assert model_facts("llama-3.3-70b")[0] == model_facts("llama-3.1-70b")[0]


def test_gemma_3_1b_counts_what_its_publishers_state_to_the_parameter():
    """KerasHub's gemma3_1b preset states 999,885,952 parameters: four norms and the q/k
    norms per layer, a tied head, no soft-capping."""
    facts, _ = model_facts("gemma-3-1b")
    assert (facts.norms_per_layer, facts.qk_norm, facts.tied_embeddings) == (4, True, True)
    assert (facts.attention_softcap, facts.logit_softcap) == (None, None)
    assert count_params(facts)["total"] == 999_885_952


def test_phi_4_fused_layers_count_as_separate_projections():
    """Phi-4 (phi3) fuses q/k/v and gate/up into one linear layer each: the parameters are
    those of the separate layers (transformers' own build agrees, in the catalog test)."""
    facts, _ = model_facts("phi-4")
    assert facts.fused_projections and (facts.heads, facts.kv_heads, facts.head_dim) == (40, 10, 128)
    assert count_params(facts)["total"] == 14_659_507_200
