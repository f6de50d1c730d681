"""Tracking through the real TensorBoard, MLflow and W&B, read back from what they wrote."""

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tunesmith.config import build_config
from tunesmith.errors import UsageError
from tunesmith.train.track import open_trackers

pytest.importorskip("mlflow", reason="the optional extra `track` is not installed")
pytest.importorskip("wandb", reason="the optional extra `track` is not installed")
pytest.importorskip("tensorboard", reason="the optional extra `track` is not installed")

ALL = ["tensorboard", "mlflow", "wandb"]
SRC = str(Path(__file__).parents[1] / "src")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Nothing may reach a network: W&B offline and quiet, MLflow without telemetry, and no
    W&B settings from the machine running the tests."""
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_PROJECT", "WANDB_DIR", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "1")


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory):
    """An empty MLflow SQLite store, made once: creating one runs all of MLflow's schema
    migrations (several seconds); a copy of it is what open_trackers would have made."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path.as_posix()}").search_experiments()
    return path


@pytest.fixture
def run_dir(tmp_path, mlflow_store):
    """A run folder holding an empty default MLflow store."""
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copy(mlflow_store, folder / "mlflow.db")
    return folder


def config(to=ALL, **track):
    return build_config({"track": {"to": to, **track}, "train": {"lr": 3e-4}})


def record(step, scale=1.0):
    """A metrics.jsonl record as the loop writes it, with values that differ per step and
    per session (`scale`), and keys a tracker must skip."""
    rec = {"step": step, "loss": round(scale * (2.0 - 0.1 * step), 6), "lr": 3e-4 * step / 10,
           "grad_norm": 0.5 + step / 100, "tokens": 1000 * step, "tokens_per_s": 150.25 + step,
           "elapsed": 1.5 * step, "mem_gb": 1.25, "alarms": ["loss_spike"], "note": "text", "flag": True}
    if step % 2 == 0:
        rec["eval_loss"] = round(scale * (2.5 - 0.1 * step), 6)
    return rec


NUMERIC = ("loss", "eval_loss", "lr", "grad_norm", "tokens", "tokens_per_s", "elapsed", "mem_gb")


def expected(records):
    """{key: {step: value}}: the latest value per step, as every tracker must show it."""
    out: dict[str, dict[int, float]] = {}
    for rec in records:
        for key in NUMERIC:
            if key in rec:
                out.setdefault(key, {})[rec["step"]] = float(rec[key])
    return out


def flat(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value if isinstance(value, str) else json.dumps(value)
    return out


# ---------------------------------------------------------------- readers

def tensorboard_scalars(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def mlflow_client(run_dir):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{(run_dir / 'mlflow.db').resolve().as_posix()}")


def mlflow_history(client, run_id):
    keys = client.get_run(run_id).data.metrics
    return {k: [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, k),
                                                   key=lambda m: (m.step, m.timestamp))] for k in keys}


def wandb_records(path):
    """The protobuf records of an offline .wandb file. The file is W&B's record log: a 7-byte
    header (":W&B", magic, version), then 32 KiB blocks of chunks, each with a 7-byte header
    (crc32, length, type: 1 full, 2 first, 3 middle, 4 last) like LevelDB's log."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # too small for a chunk header: padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(pending)
            pending = b""
            yield rec


def wandb_sessions(run_dir):
    """Per offline session (oldest first): run id, config, and {step: {key: value}}."""
    sessions = []
    for folder in sorted((run_dir / "wandb").glob("offline-run-*")):
        run_id, config, history, exited = None, {}, {}, False
        for rec in wandb_records(next(folder.glob("run-*.wandb"))):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                run_id = rec.run.run_id
                config.update({u.key: json.loads(u.value_json) for u in rec.run.config.update})
            elif kind == "history":
                row = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in rec.history.item}
                history[row.pop("_step")] = {k: v for k, v in row.items() if not k.startswith("_")}
            elif kind == "exit":
                exited = True
        sessions.append({"id": run_id, "config": config, "history": history, "exited": exited,
                         "folder": folder})
    return sessions


def wandb_latest(sessions):
    """{key: {step: value}}, later sessions overriding earlier ones at the same step."""
    out: dict[str, dict[int, float]] = {}
    for s in sessions:
        for step, row in s["history"].items():
            for key, value in row.items():
                out.setdefault(key, {})[step] = value
    return out


# ---------------------------------------------------------------- tests

def test_every_backend_gets_the_metrics_under_their_names_at_their_steps(tmp_path):
    cfg = config()
    run_dir = tmp_path / "run-a"
    run_dir.mkdir()
    trackers = open_trackers(cfg, run_dir, resume=None, resume_step=None)
    records = [record(step) for step in (1, 2, 3, 4)]
    for rec in records:
        trackers.log(rec)
    adapter = run_dir / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 16}')
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    trackers.finish(status="completed", adapter_dir=adapter)
    want = expected(records)
    assert set(want) == set(NUMERIC)
    assert set(trackers.ids) == {"mlflow", "wandb"}
    json.dumps(trackers.ids)  # the loop keeps them in train.json

    # TensorBoard keeps float32: the exact float32 of each value, at its step.
    tb = tensorboard_scalars(run_dir)
    assert set(tb) == set(NUMERIC)
    for key, by_step in want.items():
        assert tb[key] == [(s, float(np.float32(v))) for s, v in sorted(by_step.items())], key
    assert tb["eval_loss"] == [(2, float(np.float32(2.3))), (4, float(np.float32(2.1)))]

    # MLflow: exact doubles, the config as params, the adapter as an artifact, FINISHED.
    client = mlflow_client(run_dir)
    run_id = trackers.ids["mlflow"]
    assert mlflow_history(client, run_id) == {k: sorted(v.items()) for k, v in want.items()}
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "run-a"
    assert client.get_experiment(run.info.experiment_id).name == "run-a"
    assert run.data.params == flat(cfg.to_dict())
    assert run.data.params["train.lr"] == "0.0003"
    assert run.data.params["method.target_modules"] == json.dumps(cfg.method.target_modules)
    assert run.data.params["track.mlflow_uri"] == "null"
    assert sorted(f.path for f in client.list_artifacts(run_id, "adapter")) == [
        "adapter/adapter_config.json", "adapter/adapter_model.safetensors"]
    assert (run_dir / "mlflow-artifacts").is_dir()  # the default store keeps its artifacts in the run

    # W&B: one offline session with the run id, the config, every value at its step.
    sessions = wandb_sessions(run_dir)
    assert len(sessions) == 1 and sessions[0]["exited"]
    assert sessions[0]["id"] == trackers.ids["wandb"]
    assert sessions[0]["folder"].name.endswith("-" + trackers.ids["wandb"])
    assert sessions[0]["config"]["train"]["lr"] == 3e-4
    assert wandb_latest(sessions) == want


def run_and_die(run_dir, records):
    """Log `records` in another process that then dies without finishing (os._exit: no
    atexit, no flush beyond what each log did); its tracker ids, as JSON."""
    code = ("import json, os, sys; from pathlib import Path; from tunesmith.config import build_config; "
            "from tunesmith.train.track import open_trackers; "
            "cfg = build_config(json.loads(sys.argv[1])); "
            "t = open_trackers(cfg, Path(sys.argv[2]), resume=None, resume_step=None); "
            "[t.log(r) for r in json.loads(sys.argv[3])]; "
            "print(json.dumps(t.ids), flush=True); os._exit(0)")
    out = subprocess.run([sys.executable, "-c", code, json.dumps({"track": {"to": ALL}, "train": {"lr": 3e-4}}),
                          str(run_dir), json.dumps(records)], capture_output=True, text=True, check=True,
                         env=own_process_env())
    return out.stdout.strip().splitlines()[-1]


def own_process_env():
    """This environment less WANDB_SERVICE, which W&B sets so that child processes share this
    process's W&B service: a training run that died had a service of its own, gone with it."""
    return {**{k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}, "PYTHONPATH": SRC}


def test_a_resumed_run_continues_the_same_tracked_run(run_dir):
    """Kill after step 5, resume from the checkpoint at step 3: TensorBoard and MLflow show
    steps 1..6, 4 and 5 with the resumed session's values; W&B, what it kept (see below)."""
    cfg = config()
    killed = [record(step) for step in range(1, 6)]
    ids = json.loads(run_and_die(run_dir, killed))
    second = open_trackers(cfg, run_dir, resume=ids, resume_step=3)
    assert second.ids == ids
    resumed = [record(step, scale=10.0) for step in (4, 5, 6)]
    for rec in resumed:
        second.log(rec)
    second.finish(status="completed", adapter_dir=None)
    want = expected(killed[:3] + resumed)
    assert want["loss"] == {1: 1.9, 2: 1.8, 3: 1.7, 4: 16.0, 5: 15.0, 6: 14.0}

    # TensorBoard: purge_step=4 hid the killed session's 4 and 5.
    tb = tensorboard_scalars(run_dir)
    for key, by_step in want.items():
        assert tb[key] == [(s, float(np.float32(v))) for s, v in sorted(by_step.items())], key

    # MLflow keeps every value logged at a step: 4 and 5 are there twice, in logging order.
    # The loop re-logs only from the checkpoint on, so the latest value per step is the
    # resumed one and no step is missing.
    client = mlflow_client(run_dir)
    history = mlflow_history(client, ids["mlflow"])
    assert [s for s, _ in history["loss"]] == [1, 2, 3, 4, 4, 5, 5, 6]
    for key, by_step in want.items():
        assert dict(history[key]) == by_step, key  # dict(): the later value per step wins
    assert client.get_run(ids["mlflow"]).info.status == "FINISHED"
    assert len(client.search_runs([client.get_run(ids["mlflow"]).info.experiment_id])) == 1

    # W&B offline: a second session folder under the same run id, with 4..6 as resumed.
    # W&B's service buffers an offline run's records and writes them at finish (or when a
    # 32 KiB block fills): a killed session keeps only what reached the disk, here nothing
    # but the file header. Whatever it kept must be the first session's values.
    killed_session, resumed_session = wandb_sessions(run_dir)
    assert killed_session["folder"].name.endswith("-" + ids["wandb"])
    assert not killed_session["exited"]
    first_values = expected(killed)
    for step, row in killed_session["history"].items():
        assert row == {k: first_values[k][step] for k in first_values if step in first_values[k]}
    assert resumed_session["id"] == ids["wandb"] and resumed_session["exited"]
    assert resumed_session["history"] == {
        step: {k: v[step] for k, v in want.items() if step in v} for step in (4, 5, 6)}


def test_an_interrupted_run_is_killed_and_reopens_as_running(run_dir):
    cfg = config(["mlflow"])
    trackers = open_trackers(cfg, run_dir, resume=None, resume_step=None)
    trackers.log(record(1))
    trackers.finish(status="interrupted", adapter_dir=None)
    client = mlflow_client(run_dir)
    assert client.get_run(trackers.ids["mlflow"]).info.status == "KILLED"
    again = open_trackers(cfg, run_dir, resume=trackers.ids, resume_step=1)
    assert client.get_run(trackers.ids["mlflow"]).info.status == "RUNNING"
    again.finish(status="failed", adapter_dir=None)
    assert client.get_run(trackers.ids["mlflow"]).info.status == "FAILED"
    with pytest.raises(ValueError, match="status 'running'; expected one of completed, stopped_early, "
                                         "failed, interrupted"):
        open_trackers(cfg, run_dir, resume=trackers.ids, resume_step=1).finish(status="running", adapter_dir=None)


def test_a_tracked_run_that_is_gone_becomes_a_new_one_with_a_note(run_dir):
    cfg = config(["mlflow"])
    trackers = open_trackers(cfg, run_dir, resume={"mlflow": "0" * 32}, resume_step=2)
    assert trackers.ids["mlflow"] != "0" * 32
    assert trackers.notes == [f"MLflow run {'0' * 32} is not in "
                              f"sqlite:///{(run_dir / 'mlflow.db').resolve().as_posix()}; "
                              f"tracking this run as a new one"]
    trackers.finish(status="completed", adapter_dir=None)


def test_mlflow_uri_and_experiment_from_the_config(tmp_path, mlflow_store):
    store = tmp_path / "shared.db"
    shutil.copy(mlflow_store, store)
    cfg = config(["mlflow"], mlflow_uri=f"sqlite:///{store.as_posix()}", experiment="team-runs")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    trackers = open_trackers(cfg, run_dir, resume=None, resume_step=None)
    trackers.log({"step": 7, "loss": 0.25})
    trackers.finish(status="completed", adapter_dir=None)
    assert not (run_dir / "mlflow.db").exists()
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store.as_posix()}")
    run = client.get_run(trackers.ids["mlflow"])
    assert client.get_experiment(run.info.experiment_id).name == "team-runs"
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")] == [(7, 0.25)]


def test_a_long_param_is_cut_to_mlflows_limit(run_dir):
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    modules = [f"layer_{i}.proj" for i in range(MAX_PARAM_VAL_LENGTH // 8)]
    cfg = build_config({"track": {"to": ["mlflow"]}, "method": {"target_modules": modules}})
    trackers = open_trackers(cfg, run_dir, resume=None, resume_step=None)
    trackers.finish(status="completed", adapter_dir=None)
    value = mlflow_client(run_dir).get_run(trackers.ids["mlflow"]).data.params["method.target_modules"]
    assert len(value) == MAX_PARAM_VAL_LENGTH and value.endswith("...")
    assert value[:-3] == json.dumps(modules)[: MAX_PARAM_VAL_LENGTH - 3]


def test_wandb_follows_the_users_own_setting(tmp_path, monkeypatch):
    """WANDB_MODE set by the user wins over our offline default: disabled writes nothing."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    trackers = open_trackers(config(["wandb"]), tmp_path, resume=None, resume_step=None)
    trackers.log(record(1))
    trackers.finish(status="completed", adapter_dir=None)
    assert not list((tmp_path / "wandb").glob("offline-run-*"))


@pytest.mark.parametrize("env, mode", [({}, "offline"), ({"WANDB_API_KEY": "k" * 40}, None),
                                       ({"WANDB_MODE": "online"}, "online")])
def test_wandb_is_offline_unless_the_user_set_it_up(tmp_path, monkeypatch, env, mode):
    """The mode and project handed to wandb.init (online cannot run here: no network)."""
    import wandb

    seen = {}

    class FakeRun:
        id = "abc123"

    def init(**kwargs):
        seen.update(kwargs)
        return FakeRun()

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(wandb, "init", init)
    open_trackers(config(["wandb"]), tmp_path, resume={"wandb": "abc123"}, resume_step=4)
    assert (seen["mode"], seen["project"], seen["id"], seen["resume"]) == (mode, "tunesmith", "abc123", "allow")
    assert seen["dir"] == str(tmp_path) and seen["config"]["track"]["to"] == ["wandb"]


def test_no_trackers_import_nothing(tmp_path):
    code = ("import sys; from pathlib import Path; from tunesmith.config import build_config; "
            "from tunesmith.train.track import open_trackers; "
            f"t = open_trackers(build_config({{}}), Path({str(tmp_path)!r}), resume=None, resume_step=None); "
            "t.log({'step': 1, 'loss': 1.0}); t.finish(status='completed', adapter_dir=None); "
            "print(t.ids, sorted(m for m in ('mlflow', 'wandb', 'tensorboard', 'torch.utils.tensorboard') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=own_process_env())
    assert out.stdout.strip() == "{} []"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name, missing", [("mlflow", "mlflow"), ("mlflow", "sqlalchemy"),
                                           ("wandb", "wandb"), ("tensorboard", "tensorboard")])
def test_a_missing_extra_is_one_line_naming_it(tmp_path, monkeypatch, name, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # `import missing` now fails as if not installed
    with pytest.raises(UsageError) as e:
        open_trackers(config(["tensorboard", name] if name != "tensorboard" else [name]), tmp_path,
                      resume=None, resume_step=None)
    assert str(e.value) == (f"track.to: {name} needs the optional extra `track` ({missing} is not installed); "
                            f"install it with pip install 'tunesmith[track]'")
    assert e.value.exit_code == 2
    assert not (tmp_path / "tensorboard").exists()  # refused before any tracker opened


def test_an_unknown_tracker_is_refused_by_the_config():
    with pytest.raises(UsageError, match=r"--set track.to=\[neptune\]: track.to.0: not allowed; "
                                         r"choose one of 'tensorboard', 'mlflow' or 'wandb'"):
        build_config({}, ["track.to=[neptune]"])


def test_train_through_the_cli_with_a_resume_tracks_one_run(tiny_model_dir, tmp_path):
    """`tunesmith train --set 'track.to=[tensorboard,mlflow]'`, stopped by SIGTERM and run again:
    one TensorBoard curve and one MLflow run, each step once, the values of metrics.jsonl."""
    import signal
    import time

    from tiny import order_rows, write_rows

    data = write_rows(tmp_path / "d.jsonl", order_rows(60))
    run = tmp_path / "run"
    args = [sys.executable, "-m", "tunesmith.cli", "train", "--model", str(tiny_model_dir), "--data", str(data),
            "--out", str(run), "--no-progress", "--set", "track.to=[tensorboard,mlflow]", "--set", "train.max_steps=10",
            "--set", "train.max_seq_len=128", "--set", "train.micro_batch=2", "--set", "train.eval_every=3",
            "--set", "method.r=4"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=own_process_env())
    metrics = run / "metrics.jsonl"
    while process.poll() is None and (not metrics.exists() or len(metrics.read_text().splitlines()) < 4):
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 143, process.stderr.read()
    first_id = json.loads((run / "train.json").read_text())["tracking"]["mlflow"]
    subprocess.run(args, check=True, capture_output=True, env=own_process_env())
    record = json.loads((run / "train.json").read_text())
    assert record["tracking"]["mlflow"] == first_id and record["resumes"]
    logged = [json.loads(line) for line in metrics.read_text().splitlines()]
    want = expected(logged)
    assert sorted(want["loss"]) == list(range(1, 11))
    scalars = tensorboard_scalars(run)
    for key in ("loss", "eval_loss", "lr", "grad_norm", "tokens_per_s"):
        assert [s for s, _ in scalars[key]] == sorted(want[key])  # each step once: the purge worked
        assert [v for _, v in scalars[key]] == [float(np.float32(want[key][s])) for s in sorted(want[key])]
    client = mlflow_client(run)
    history = mlflow_history(client, first_id)
    for key in ("loss", "eval_loss", "lr"):
        latest = {step: value for step, value in history[key]}
        assert latest == want[key]
    tracked = client.get_run(first_id)
    assert tracked.info.status == "FINISHED" and tracked.data.params["train.lr"] == "0.0002"
    assert "adapter" in [a.path for a in client.list_artifacts(first_id)]
