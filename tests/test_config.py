import subprocess
import sys

import pytest

from tunesmith.config import build_config, load_config, parse_overrides
from tunesmith.errors import UsageError


def test_defaults_follow_the_guide():
    cfg = build_config({})
    assert (cfg.method.name, cfg.method.r, cfg.method.alpha, cfg.method.dropout) == ("lora", 16, 32, 0.05)
    assert cfg.method.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert cfg.train.lr == 2e-4


def test_lr_and_alpha_depend_on_other_fields():
    assert build_config({"method": "full"}).train.lr == 2e-5
    assert build_config({}, ["method.r=8"]).method.alpha == 16
    assert build_config({"method": {"r": 8, "alpha": 8}}).method.alpha == 8


def test_overrides_parse_yaml_scalars_and_numbers():
    assert parse_overrides(["train.lr=1e-4", "train.packing=false", "method=qlora"]) == {
        "train": {"lr": 1e-4, "packing": False},
        "method": "qlora",
    }
    assert build_config({}, ["train.lr=1e-4"]).train.lr == 1e-4


@pytest.mark.parametrize(
    "override, expected",
    [
        (["train.bogus=1"], "unknown field 'train.bogus'; allowed in train: lr,"),
        (["bogus.x=1"], "unknown field 'bogus'; allowed: model, data, clean, method, train, eval, output"),
        (["method.name=dora"], "method.name = 'dora' is not allowed; choose one of 'lora', 'qlora' or 'full'"),
        (["train.lr=fast"], "train.lr = 'fast': input should be a valid number"),
        (["train.micro_batch=0"], "train.micro_batch = 0: input should be greater than or equal to 1"),
        (["train"], "expected section.key=value"),
    ],
)
def test_wrong_field_is_one_line_naming_field_value_and_allowed(override, expected):
    with pytest.raises(UsageError) as info:
        build_config({}, override)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    assert info.value.exit_code == 2


def test_bad_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: [1e-4\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"run\.yaml:3:1: not valid YAML"):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(UsageError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_config_show_prints_every_default_and_exits_2_on_error(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("method: full\ntrain:\n  epochs: 2\n", encoding="utf-8")
    cli = [sys.executable, "-m", "tunesmith.cli", "config", "show", str(path)]
    shown = subprocess.run(cli, capture_output=True, text=True, check=True).stdout
    resolved = build_config(__import__("yaml").safe_load(shown))
    assert resolved.method.name == "full" and resolved.train.epochs == 2 and resolved.train.lr == 2e-5
    assert "max_grad_norm: 1.0" in shown
    bad = subprocess.run(cli + ["--set", "train.scheduler=wavy"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "train.scheduler = 'wavy' is not allowed" in bad.stderr
