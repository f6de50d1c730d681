"""A model source that cannot be used is one line naming the file and the fix, never a
traceback, and a hub id without a network fails in seconds instead of retrying for ~50 s.

Everything here runs on real files in tmp_path through the real functions (and the real
CLI); the hub is never reached: the cached-model tests build a Hugging Face cache locally.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import order_rows, write_rows

from tunesmith.errors import UsageError
from tunesmith.models import aliases as aliases_module
from tunesmith.models.aliases import Alias
from tunesmith.models.load import load_model, load_tokenizer
from tunesmith.models.source import (
    check_model_source,
    hub_reachable,
    resolve_source,
)

CPU = torch.device("cpu")
REVISION = "0123456789abcdef0123456789abcdef01234567"


def copy_model(tiny_model_dir: Path, tmp_path: Path, name: str = "model") -> Path:
    folder = tmp_path / name
    shutil.copytree(tiny_model_dir, folder)
    return folder


def edit_config(folder: Path, **fields) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(fields)
    (folder / "config.json").write_text(json.dumps(config))


def closed_port() -> int:
    """A local port nothing listens on: bound, then released."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def usage_error(call, *args, **kwargs) -> str:
    with pytest.raises(UsageError) as caught:
        call(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and caught.value.exit_code == 2
    return message


# ---------------------------------------------------------------- broken config.json

def write_binary(folder: Path) -> None:
    (folder / "config.json").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe" * 4)


def write_text(folder: Path) -> None:
    (folder / "config.json").write_text("model_type: llama\n")


def write_list(folder: Path) -> None:
    (folder / "config.json").write_text("[1, 2, 3]")


def drop_model_type(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    del config["model_type"]
    (folder / "config.json").write_text(json.dumps(config))


BROKEN_CONFIGS = {
    "binary": (write_binary, "not a JSON file"),
    "yaml, not json": (write_text, "not a JSON file"),
    "a json list": (write_list, "holds a JSON list, not an object"),
    "no model_type": (drop_model_type, "has no model_type"),
    "a field of the wrong type": (lambda f: edit_config(f, hidden_size="big"),
                                  "transformers rejects this config"),
    "heads that do not divide the width": (lambda f: edit_config(f, num_attention_heads=5),
                                           "transformers rejects this config"),
    "an unknown model_type": (lambda f: edit_config(f, model_type="frobnicator"), "is unknown to transformers"),
    "remote code not trusted": (lambda f: edit_config(f, model_type="frobnicator",
                                                      auto_map={"AutoConfig": "conf.FrobConfig"}),
                                "set model.trust_remote_code: true only if you trust"),
}


@pytest.mark.parametrize("case", BROKEN_CONFIGS, ids=list(BROKEN_CONFIGS))
def test_a_broken_config_json_is_one_usage_error_naming_it(case, tiny_model_dir, tmp_path):
    """A binary or list config.json reached transformers and came back as a TypeError
    traceback (list) or an OSError without a fix (binary)."""
    breaks, expected = BROKEN_CONFIGS[case]
    folder = copy_model(tiny_model_dir, tmp_path)
    breaks(folder)
    for call in (check_model_source, resolve_source):
        message = usage_error(call, str(folder))
        assert str(folder / "config.json") in message and expected in message


def test_trusted_remote_code_is_not_run_by_the_check(tiny_model_dir, tmp_path):
    folder = copy_model(tiny_model_dir, tmp_path)
    edit_config(folder, model_type="frobnicator", auto_map={"AutoConfig": "conf.FrobConfig"})
    check_model_source(str(folder), trust_remote_code=True)  # conf.py does not exist: it must not be imported


def test_a_folder_without_config_json(tmp_path):
    message = usage_error(check_model_source, str(tmp_path))
    assert f"{tmp_path}: folder has no config.json" in message


# ---------------------------------------------------------------- missing or unsafe files

def test_a_folder_without_tokenizer_files(tiny_model_dir, tmp_path):
    """No tokenizer files gave ValueError "Couldn't instantiate the backend tokenizer",
    which nothing caught: a traceback from `data check --model`."""
    folder = copy_model(tiny_model_dir, tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    assert "has no tokenizer files" in usage_error(check_model_source, str(folder))
    path = resolve_source(str(folder))  # the config is fine: loading is what fails
    message = usage_error(load_tokenizer, path)
    assert message.startswith(f"{folder}: has no tokenizer files") and "original folder" in message


def test_a_folder_without_weights_still_serves_its_tokenizer(tiny_model_dir, tmp_path):
    folder = copy_model(tiny_model_dir, tmp_path)
    (folder / "model.safetensors").unlink()
    assert "has no weights (model.safetensors)" in usage_error(check_model_source, str(folder))
    check_model_source(str(folder), need_weights=False)
    assert load_tokenizer(resolve_source(str(folder))) is not None
    message = usage_error(load_model, str(folder), dtype=torch.float32, device=CPU)
    assert message.startswith(f"{folder}: has no weights")


def test_pickle_weights_are_refused_with_a_conversion_that_works(tiny_model_dir, tmp_path):
    """The .bin-only message must give a command that really turns the folder into one we load."""
    from safetensors.torch import load_file

    folder = copy_model(tiny_model_dir, tmp_path)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    message = usage_error(check_model_source, str(folder))
    assert "only pickle weights (pytorch_model.bin)" in message and "safetensors only" in message
    assert "only pickle weights" in usage_error(load_model, str(folder), dtype=torch.float32, device=CPU)

    command = message.split('python -c "', 1)[1].rsplit('"', 1)[0]
    subprocess.run([sys.executable, "-c", command], check=True, capture_output=True)
    check_model_source(str(folder))
    assert load_model(str(folder), dtype=torch.float32, device=CPU) is not None


def test_damaged_weights_and_tokenizer_files_are_usage_errors(tiny_model_dir, tmp_path):
    folder = copy_model(tiny_model_dir, tmp_path)
    (folder / "model.safetensors").write_bytes(b"not a safetensors file" * 4)
    (folder / "tokenizer.json").write_text("{not json")
    message = usage_error(load_model, str(folder), dtype=torch.float32, device=CPU)
    assert message.startswith(f"{folder}: a .safetensors weights file is damaged or incomplete")
    message = usage_error(load_tokenizer, str(folder))
    assert message.startswith(f"{folder}: cannot load the tokenizer") and "original folder" in message


def test_a_missing_shard_of_a_sharded_model(tiny_model_dir, tmp_path):
    folder = copy_model(tiny_model_dir, tmp_path)
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    message = usage_error(check_model_source, str(folder))
    assert "weight shard model-00002-of-00002.safetensors named in model.safetensors.index.json is missing" in message


# ---------------------------------------------------------------- GGUF and aliases

def test_a_gguf_that_is_not_gguf(tmp_path):
    """transformers' ValueError "does not start with the GGUF magic bytes" was a traceback."""
    fake = tmp_path / "model.gguf"
    fake.write_text("<html>404 not found</html>")
    for call in (check_model_source, resolve_source):
        message = usage_error(call, str(fake))
        assert message.startswith(f"model.source {fake}: not a GGUF file") and "download it again" in message
    assert "GGUF file not found" in usage_error(check_model_source, str(tmp_path / "absent.gguf"))
    (tmp_path / "dir.gguf").mkdir()
    assert "is a folder" in usage_error(check_model_source, str(tmp_path / "dir.gguf"))


def test_a_truncated_gguf_is_a_usage_error_and_leaves_nothing_behind(tmp_path, monkeypatch):
    """A file with the magic bytes but nothing after them raised struct.error from the reader."""
    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path / "home"))
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x01" * 8)
    check_model_source(str(truncated))  # the cheap check reads only the magic bytes
    message = usage_error(resolve_source, str(truncated))
    assert message.startswith(f"model.source {truncated}: transformers cannot read this GGUF file")
    assert not list((tmp_path / "home" / "models").iterdir())  # no half-converted folder


def test_an_alias_whose_package_is_missing(monkeypatch):
    monkeypatch.setitem(aliases_module.ALIASES, "ghost-model",
                        Alias(package="tunesmith_no_such_package", gguf="x.gguf", install="pip install ghost"))
    for call in (check_model_source, resolve_source):
        assert "needs the package tunesmith_no_such_package: run `pip install ghost`" in usage_error(call, "ghost-model")
    monkeypatch.setitem(aliases_module.ALIASES, "hollow-model",  # a package that exists but lacks the file
                        Alias(package="json", gguf="x.gguf", install="pip install hollow"))
    assert "x.gguf is missing; reinstall with `pip install hollow`" in usage_error(check_model_source, "hollow-model")


@pytest.mark.parametrize("source", ["./no-such-folder", "/no/such/folder", "not a/hub id"])
def test_neither_a_path_nor_a_hub_id(source):
    assert "neither a model folder, a .gguf file nor a hub id" in usage_error(check_model_source, source)


# ---------------------------------------------------------------- hub ids and the local cache

def write_cached_model(cache: Path, repo_id: str, tiny: Path | None = None) -> Path:
    """A Hugging Face cache entry as huggingface_hub writes it: files in blobs/ named by
    their hash, a snapshot of relative links to them, refs/main naming the snapshot."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / REVISION
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    files = sorted(tiny.iterdir()) if tiny else []
    for file in files:
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    return snapshot


def test_a_cached_hub_id_resolves_to_its_snapshot_and_loads(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    snapshot = write_cached_model(tmp_path / "hub", "someorg/tiny", tiny_model_dir)
    assert resolve_source("someorg/tiny") == str(snapshot)
    check_model_source("someorg/tiny")
    assert load_tokenizer(str(snapshot)) is not None
    assert load_model(str(snapshot), dtype=torch.float32, device=CPU) is not None


LOAD_WITH_NETWORK_CLOSED = """
import json, socket, sys
attempts = []
def refuse(self, address):
    attempts.append(str(address))
    raise ConnectionRefusedError(111, "network closed for this test")
socket.socket.connect = refuse
import torch
from tunesmith.models.load import load_model, load_tokenizer
from tunesmith.models.source import resolve_source
path = resolve_source(sys.argv[1])
load_tokenizer(path)
load_model(path, dtype=torch.float32, device=torch.device("cpu"))
print(json.dumps({"path": path, "attempts": attempts}))
"""


def hub_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a user with downloads on, a hub that does not answer and the
    cache in tmp_path."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") and not k.lower().endswith("_proxy")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}", HF_HUB_CACHE=str(tmp_path / "hub"),
               TUNESMITH_HOME=str(tmp_path / "home"), **extra)
    return env


def test_a_cached_hub_id_loads_without_any_connection_when_downloads_are_on(tiny_model_dir, tmp_path):
    """With downloads on, a cached model went to transformers as a hub id, which asks the
    hub for updates first: offline that cost ~50 s of retries even though every file was here."""
    snapshot = write_cached_model(tmp_path / "hub", "someorg/tiny", tiny_model_dir)
    result = subprocess.run([sys.executable, "-c", LOAD_WITH_NETWORK_CLOSED, "someorg/tiny"],
                            capture_output=True, text=True, env=hub_env(tmp_path), timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == {"path": str(snapshot), "attempts": []}


def test_a_partial_cache_entry_says_how_to_complete_it(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(tiny_model_dir / "config.json", partial / "config.json")
    snapshot = write_cached_model(tmp_path / "hub", "someorg/tiny", partial)
    assert resolve_source("someorg/tiny") == str(snapshot)  # offline, the snapshot is the best there is
    for message in (usage_error(check_model_source, "someorg/tiny"), usage_error(load_tokenizer, str(snapshot))):
        assert "has no tokenizer files" in message and "run `hf download someorg/tiny` again" in message


def test_a_damaged_cached_config_names_the_file_and_the_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    snapshot = write_cached_model(tmp_path / "hub", "someorg/tiny")
    (snapshot / "config.json").write_text("[]")
    message = usage_error(check_model_source, "someorg/tiny")
    assert str(snapshot / "config.json") in message and "run `hf download someorg/tiny` again" in message


def test_an_uncached_hub_id_offline_fails_at_once_with_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # conftest turns downloads off
    for call in (check_model_source, resolve_source):
        message = usage_error(call, "someorg/some-model")
        assert message.startswith("model.source someorg/some-model: not a local folder, not in the local "
                                  f"Hugging Face cache ({tmp_path / 'hub'}), and downloads are off")
        assert "`hf download someorg/some-model`" in message and "smollm2-135m-instruct" in message


def test_a_catalog_alias_names_its_hub_id_when_it_is_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    message = usage_error(check_model_source, "llama-3.1-8b")
    assert message.startswith("model.source llama-3.1-8b (meta-llama/Llama-3.1-8B): not a local folder")
    assert "`hf download meta-llama/Llama-3.1-8B`" in message


def test_hub_reachable_is_one_bounded_connect():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert hub_reachable(f"http://127.0.0.1:{server.getsockname()[1]}", timeout=3)
    assert not hub_reachable(f"http://127.0.0.1:{closed_port()}", timeout=3)


def test_behind_a_proxy_the_proxy_is_what_must_answer(monkeypatch):
    for name in ("no_proxy", "NO_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as proxy:
        proxy.bind(("127.0.0.1", 0))
        proxy.listen()
        monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{proxy.getsockname()[1]}")
        assert hub_reachable("https://hub.invalid", timeout=3)  # the hub's own name never resolves
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{closed_port()}")
    assert not hub_reachable("https://hub.invalid", timeout=3)


# ---------------------------------------------------------------- through the real CLI

def data_check(tmp_path: Path, model: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    data = write_rows(tmp_path / "rows.jsonl", order_rows(4))
    return subprocess.run([sys.executable, "-m", "tunesmith.cli", "data", "check", str(data), "--model", model],
                          capture_output=True, text=True, env=env, timeout=300, check=False)


def assert_one_line_usage_error(result: subprocess.CompletedProcess, *expected: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "this is a bug" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for text in expected:
        assert text in errors[0]


def test_cli_data_check_with_broken_model_folders(tiny_model_dir, tmp_path):
    """`data check --model` on a folder with a list for config.json, or without tokenizer
    files, ended in the "this is a bug" guard instead of saying what to fix."""
    listed = copy_model(tiny_model_dir, tmp_path, "listed")
    write_list(listed)
    assert_one_line_usage_error(data_check(tmp_path, str(listed)), str(listed / "config.json"), "JSON list")
    bare = copy_model(tiny_model_dir, tmp_path, "bare")
    (bare / "tokenizer.json").unlink()
    (bare / "tokenizer_config.json").unlink()
    assert_one_line_usage_error(data_check(tmp_path, str(bare)), str(bare), "has no tokenizer files")
    fake = tmp_path / "fake.gguf"
    fake.write_text("version https://git-lfs.github.com/spec/v1\n")
    assert_one_line_usage_error(data_check(tmp_path, str(fake)), str(fake), "not a GGUF file")


def test_cli_data_check_needs_no_weights(tiny_model_dir, tmp_path):
    folder = copy_model(tiny_model_dir, tmp_path)
    (folder / "model.safetensors").unlink()
    result = data_check(tmp_path, str(folder))
    assert result.returncode == 0, result.stderr


def test_cli_uncached_hub_id_offline_is_one_line_without_retries(tmp_path):
    """Offline, transformers printed ~20 retry lines over ~50 s before its own error."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    result = data_check(tmp_path, "someorg/some-model", env)
    assert_one_line_usage_error(result, "someorg/some-model", "not in the local Hugging Face cache",
                                "downloads are off", "hf download someorg/some-model")
    assert "Retry" not in result.stderr


def test_cli_uncached_hub_id_with_the_hub_unreachable_is_one_line_without_retries(tmp_path):
    """With downloads on and no network, transformers retried for ~50 s (20 lines of
    "Retrying in 8s") before failing; one connect now tells the hub is out of reach."""
    result = data_check(tmp_path, "someorg/some-model", hub_env(tmp_path))
    assert_one_line_usage_error(result, "someorg/some-model", "not in the local Hugging Face cache",
                                "cannot be reached from here", "hf download someorg/some-model")
    assert "Retry" not in result.stderr
