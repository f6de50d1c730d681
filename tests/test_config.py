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
        (["bogus.x=1"], "unknown field 'bogus'; allowed: model, data, clean, method, train, distributed, eval, track, output"),
        (["method.name=dora"], "--set method.name=dora: not allowed; choose one of 'lora', 'qlora' or 'full'"),
        (["method=dora"], "--set method=dora: method.name: not allowed; choose one of 'lora', 'qlora' or 'full'"),
        (["train.lr=fast"], "--set train.lr=fast: expected a number"),
        (["train.micro_batch=0"], "--set train.micro_batch=0: must be greater than or equal to 1"),
        (["train"], "expected section.key=value"),
        (["train.lr=inf"], "--set train.lr=inf: expected a finite number (not inf or nan)"),
        (["train.epochs=1e400"], "--set train.epochs=1e400: expected a finite number"),  # YAML reads it as inf
        (["train.lr=nan"], "--set train.lr=nan: expected a finite number"),
        (["train.lr=2"], "--set train.lr=2: must be less than 1"),
        (["clean.pii=yes"], "--set clean.pii=yes: not allowed; choose one of 'redact'"),  # not "True"
        (["train=null"], "--set train=null: expected a section of fields (name: value): lr, epochs,"),
        (["method.r=1.5"], "--set method.r=1.5: expected a whole number"),
        (["clean.drop=[bogus]"], "--set clean.drop=[bogus]: unknown code 'bogus'; allowed: bom,"),
        (["clean.keep=[pii]"], "PII is set with clean.pii (redact, report or drop)"),
        (["clean.pii_types=[NAME]"], "unknown type 'NAME'; allowed: EMAIL,"),
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


def test_missing_config_file_names_a_command_that_writes_one(tmp_path):
    """Regression: the hint named configs/demo.yaml, which does not exist."""
    with pytest.raises(UsageError, match=r"config file not found; `tunesmith config show > nope.yaml` writes one"):
        load_config(tmp_path / "nope.yaml")
    defaults = subprocess.run([sys.executable, "-m", "tunesmith.cli", "config", "show"], capture_output=True,
                              text=True, check=True).stdout
    assert build_config(__import__("yaml").safe_load(defaults)) == build_config({})


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
    assert "--set train.scheduler=wavy: not allowed; choose one of" in bad.stderr


def test_messages_never_name_python_types():
    """Regression: `--set train=` said "input should be a valid dictionary or instance of
    trainconfig" and a null said "NoneType"."""
    for override in (["train=null"], ["model.source=null"], ["method.target_modules=3"], ["train.packing=maybe"]):
        with pytest.raises(UsageError) as info:
            build_config({}, override)
        message = str(info.value)
        for python_word in ("NoneType", "instance of", "dict", "str", "trainconfig"):
            assert python_word not in message, message


def test_an_empty_value_is_refused_for_every_field():
    """Regression: `--set train.lr=` silently reset lr to its default while `--set
    model.source=` was an error; both now say there is no value."""
    for override in ("train.lr=", "model.source=", "data.val= "):
        with pytest.raises(UsageError, match=r"no value given; write the value, or null to use the default"):
            build_config({}, [override])
    assert build_config({}, ["train.lr=null"]).train.lr == 2e-4  # null is how to ask for the default


def test_a_flag_is_blamed_by_its_own_name():
    with pytest.raises(UsageError) as info:
        build_config({}, ["train.epochs=inf"], flags={"train.epochs": "--epochs"})
    assert str(info.value) == "--epochs inf: train.epochs: expected a finite number (not inf or nan)"


def test_errors_in_a_file_name_its_line_and_overrides_are_not_blamed_on_it(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  source: x\ntrain:\n  epochs: 2\n  lr: .inf\n", encoding="utf-8")
    with pytest.raises(UsageError) as info:
        load_config(path)
    assert str(info.value) == f"{path}:5: train.lr = .inf: expected a finite number (not inf or nan)"
    path.write_text("train:\n  epochs: 2\n", encoding="utf-8")
    with pytest.raises(UsageError) as info:
        load_config(path, ["train.micro_batch=-1"])
    assert str(info.value).startswith("--set train.micro_batch=-1: must be greater than")
    path.write_text("train:\n  epochs: 2\n  bogus: 1\n", encoding="utf-8")
    with pytest.raises(UsageError, match=rf"{path}:3: unknown field 'train.bogus'"):
        load_config(path)


def test_duplicate_keys_are_refused_with_both_lines(tmp_path):
    """Regression: PyYAML keeps the last of two equal keys, so a second `lr:` silently won."""
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: 1.0e-4\n  epochs: 2\n  lr: 3.0e-4\n", encoding="utf-8")
    with pytest.raises(UsageError) as info:
        load_config(path)
    assert str(info.value) == f"{path}:4: key 'lr' is given twice (first on line 2); keep one"
    path.write_text("train: {}\nmethod: lora\ntrain: {}\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r":3: key 'train' is given twice \(first on line 1\)"):
        load_config(path)


def test_a_config_that_is_not_utf8_names_line_and_column(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_bytes(b"train:\n  lr: 1e-4 # caf\xe9\n")
    with pytest.raises(UsageError) as info:
        load_config(path)
    assert str(info.value) == f"{path}:2:17: not UTF-8 text (byte 0xe9); save the file as UTF-8"
    path.write_bytes(b"\xef\xbb\xbftrain:\n  epochs: 2\n")  # a BOM is fine
    assert load_config(path).train.epochs == 2


@pytest.mark.parametrize("text, found", [("- a\n- b\n", "a list"), ("just text\n", "text"), ("3\n", "a number")])
def test_a_config_that_is_not_a_mapping(tmp_path, text, found):
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UsageError, match=f"expected a mapping with sections model, data, clean, method, train, distributed, eval, "
                                         f"track, output; found {found}"):
        load_config(path)


def test_a_config_path_that_is_a_folder_or_a_link_loop(tmp_path):
    with pytest.raises(UsageError, match="is a folder, expected a config file"):
        load_config(tmp_path)
    loop = tmp_path / "loop.yaml"
    loop.symlink_to(loop)
    with pytest.raises(UsageError, match="symbolic link loop"):
        load_config(loop)


def test_config_show_rejects_what_data_check_rejects(tmp_path):
    """Regression: `config show --set clean.drop=[bogus]` printed a config that `data check`
    then refused; the codes are validated with the config now."""
    cli = [sys.executable, "-m", "tunesmith.cli", "config", "show", "--set", "clean.drop=[bogus]"]
    bad = subprocess.run(cli, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown code 'bogus'" in bad.stderr and "Traceback" not in bad.stderr
