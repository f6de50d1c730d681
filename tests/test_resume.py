"""Kill `tunesmith train` at any moment, run the same command again, and get exactly the model
an uninterrupted run gives: through the CLI, on the tiny model, on CPU (bit for bit)."""

import fcntl
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from test_train_cli import tunesmith
from test_train_refusals import snapshot
from tiny import order_rows, write_rows

SETTINGS = ["--set", "train.max_steps=12", "--set", "train.max_seq_len=128", "--set", "train.micro_batch=2",
            "--set", "train.save_every=2", "--set", "train.eval_every=3", "--set", "method.r=4",
            "--set", "train.early_stopping_patience=0"]


def command(model, data, run, *extra):
    return [sys.executable, "-m", "tunesmith.cli", "train", "--model", str(model), "--data", str(data),
            "--out", str(run), "--no-progress", *SETTINGS, *extra]


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def same_training(run, reference):
    """Same adapter bytes, and each step logged once with the same loss, gradient norm, eval
    loss, learning rate and tokens (times differ, nothing else may)."""
    assert (run / "adapter" / "adapter_model.safetensors").read_bytes() == \
        (reference / "adapter" / "adapter_model.safetensors").read_bytes()
    keys = ("step", "loss", "grad_norm", "eval_loss", "lr", "tokens")
    assert [{k: r.get(k) for k in keys} for r in metrics(run)] == [{k: r.get(k) for k in keys} for r in metrics(reference)]


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    """The data, and the run nothing interrupted."""
    tmp = tmp_path_factory.mktemp("resume")
    data = write_rows(tmp / "d.jsonl", order_rows(60))
    reference = tmp / "reference"
    subprocess.run(command(tiny_model_dir, data, reference), check=True, capture_output=True)
    assert [r["step"] for r in metrics(reference)] == list(range(1, 13))
    return tiny_model_dir, data, reference


def kill_when(process, ready, timeout=120.0):
    """SIGKILL `process` as soon as `ready()` is true (polled every half millisecond)."""
    end = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < end:
        if ready():
            process.kill()
            break
        time.sleep(0.0005)
    process.wait()


def logged_steps(run):
    try:
        return len((run / "metrics.jsonl").read_text().splitlines())
    except FileNotFoundError:
        return 0


def writing_checkpoint(run):
    root = run / "checkpoints"
    return root.is_dir() and any(p.name.startswith(".step-") for p in root.iterdir())


def test_sigkill_at_random_moments_then_the_same_command_gives_the_same_model(setup, tmp_path):
    model, data, reference = setup
    run = tmp_path / "run"
    rng = random.Random(int(os.environ.get("TUNESMITH_KILL_SEED", "7")))
    moments = [("inside a checkpoint write", lambda: writing_checkpoint(run)),
               *[(f"after {n} logged steps", lambda n=n: logged_steps(run) >= n) for n in sorted(rng.sample(range(3, 11), 2))],
               ("inside a checkpoint write", lambda: logged_steps(run) >= 8 and writing_checkpoint(run))]
    outcomes = []
    for what, ready in moments:
        process = subprocess.Popen(command(model, data, run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kill_when(process, ready)
        outcomes.append((what, process.returncode, writing_checkpoint(run)))
    assert [code for _, code, _ in outcomes].count(-signal.SIGKILL) >= 3, outcomes
    for _ in range(3):  # the same command, until it finishes
        result = subprocess.run(command(model, data, run), capture_output=True, text=True)
        if result.returncode == 0:
            break
    assert result.returncode == 0, result.stderr
    same_training(run, reference)
    record = json.loads((run / "train.json").read_text())
    assert record["status"] == "completed" and record["steps_done"] == 12
    assert all(r["from_step"] % 2 == 0 or r["from_step"] % 3 == 0 for r in record["resumes"])  # saves and bests
    assert all(r["restart_seconds"] > 0 for r in record["resumes"])
    assert not any(p.name.startswith(".") for p in (run / "checkpoints").iterdir())  # no half-written leftovers


def test_sigterm_checkpoints_and_exits_143_then_continues(setup, tmp_path):
    model, data, reference = setup
    run = tmp_path / "run"
    process = subprocess.Popen(command(model, data, run), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while logged_steps(run) < 3 and process.poll() is None:
        time.sleep(0.01)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert time.monotonic() - sent < 30
    assert process.returncode == 143, stderr
    record = json.loads((run / "train.json").read_text())
    step = record["steps_done"]
    assert (record["status"], record["stop_reason"]) == ("interrupted", "SIGTERM") and 3 <= step < 12
    assert (f"stopped: SIGTERM: stopped after step {step} of 12 with a checkpoint (checkpoints/step-{step:06d}); run "
            f"the same command again to continue from there (exit 143)") in " ".join(stderr.split())
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step-{step:06d}"
    assert not (run / "adapter").exists()
    again = subprocess.run(command(model, data, run), capture_output=True, text=True, check=True)
    assert f"continuing from checkpoint step-{step:06d} ({step} of 12 steps done)" in " ".join(again.stdout.split())
    same_training(run, reference)


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(setup, tmp_path):
    model, data, reference = setup
    run = tmp_path / "run"
    subprocess.run(command(model, data, run, "--set", "train.keep_checkpoints=20"), check=True, capture_output=True)
    # Make it look interrupted after step 6: remove what came later, and damage step 6.
    (run / "adapter").rename(tmp_path / "adapter")
    for folder in (run / "checkpoints").iterdir():
        if folder.name.startswith("step-") and int(folder.name[5:]) > 6:
            for f in folder.iterdir():
                f.unlink()
            folder.rmdir()
    weights = run / "checkpoints" / "step-000006" / "weights.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-3] ^= 0xFF
    weights.write_bytes(bytes(blob))
    partial = run / "checkpoints" / ".step-000007.abcd"  # what a kill inside a write leaves
    partial.mkdir()
    (partial / "weights.safetensors").write_bytes(b"half")
    record = json.loads((run / "train.json").read_text())
    (run / "train.json").write_text(json.dumps({**record, "status": "running", "steps_done": 7}))
    result = tunesmith("train", "--model", model, "--data", data, "--out", run, "--no-progress", *SETTINGS)
    said = " ".join(result.stdout.split())
    assert ("checkpoint step-000006/weights.safetensors does not match the hash written with it: using the one "
            "before it") in said
    assert f"the last run in {run} stopped without a word after step 7" in said
    assert "continuing from checkpoint step-000004 (4 of 12 steps done)" in said
    same_training(run, reference)
    assert not partial.exists()


def test_resume_picks_a_checkpoint(setup, tmp_path):
    model, data, reference = setup
    run = tmp_path / "run"
    process = subprocess.Popen(command(model, data, run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(process, lambda: logged_steps(run) >= 9)
    result = tunesmith("train", "--model", model, "--data", data, "--out", run, "--no-progress", *SETTINGS,
                       "--resume", run / "checkpoints" / "step-000004")
    assert "continuing from checkpoint step-000004" in " ".join(result.stdout.split())
    same_training(run, reference)
    assert json.loads((run / "train.json").read_text())["resumes"][-1]["from_step"] == 4
    before = snapshot(run)
    missing = run / "checkpoints" / "step-000099"
    result = tunesmith("train", "--model", model, "--data", data, "--out", run, *SETTINGS, "--resume", missing,
                       check=False)
    assert result.returncode == 2
    assert f"--resume {missing}: cannot continue from it: step-000099: has no state.json" in result.stderr
    assert snapshot(run) == before
    bad = tunesmith("train", "--model", model, "--data", data, "--out", tmp_path / "other", *SETTINGS,
                    "--resume", run / "checkpoints" / "step-000004", check=False)
    assert bad.returncode == 2 and "holds no run to continue" in bad.stderr
    both = tunesmith("train", "--model", model, "--data", data, "--out", run, "--restart", "--resume", run, check=False)
    assert both.returncode == 2 and "give one of them" in both.stderr


def interrupted_run(model, data, run):
    process = subprocess.Popen(command(model, data, run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(process, lambda: logged_steps(run) >= 5)
    return run


def test_a_run_with_other_data_or_settings_is_refused_naming_what_differs(setup, tmp_path):
    model, data, _ = setup
    mine = tmp_path / "mine.jsonl"
    mine.write_bytes(data.read_bytes())
    run = interrupted_run(model, mine, tmp_path / "run")
    before = snapshot(run)
    with mine.open("a") as f:
        f.write(json.dumps({"instruction": "one more", "response": "row"}) + "\n")
    result = tunesmith("train", "--model", model, "--data", mine, "--out", run, "--no-progress", *SETTINGS,
                       check=False)
    assert result.returncode == 2
    assert "was trained with other settings: data.train: the file's content changed" in " ".join(result.stderr.split())
    mine.write_bytes(data.read_bytes())
    result = tunesmith("train", "--model", model, "--data", mine, "--out", run, "--no-progress", *SETTINGS,
                       "--lr", "1e-3", check=False)
    assert result.returncode == 2 and "train.lr 0.0002 -> 0.001" in " ".join(result.stderr.split())
    assert snapshot(run) == before
    # How often to log or save is not part of the run.
    fine = tunesmith("train", "--model", model, "--data", mine, "--out", run, "--no-progress", *SETTINGS,
                     "--set", "train.log_every=4", "--set", "train.save_every=5")
    assert "continuing from checkpoint" in fine.stdout


def test_two_trainings_in_one_folder_are_refused(setup, tmp_path):
    model, data, _ = setup
    run = interrupted_run(model, data, tmp_path / "run")
    record = json.loads((run / "train.json").read_text())
    (run / "train.json").write_text(json.dumps({**record, "pid": 4242}))  # as if that one were alive
    fd = os.open(run, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        result = tunesmith("train", "--model", model, "--data", data, "--out", run, "--no-progress", *SETTINGS,
                           check=False)
    finally:
        os.close(fd)
    assert result.returncode == 2
    assert "another `tunesmith train` (pid 4242) is training in this folder now" in " ".join(result.stderr.split())


class Metadata(BaseHTTPRequestHandler):
    """AWS's instance metadata, with a spot interruption notice from the first poll on."""

    def do_PUT(self):  # IMDSv2 token
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"token")

    def do_GET(self):
        if self.path.endswith("/spot/instance-action") and self.headers.get("X-aws-ec2-metadata-token") == "token":
            body = json.dumps({"action": "terminate", "time": "2026-11-29T12:00:00Z"}).encode()
            self.send_response(200)
        else:
            body = b"not found"
            self.send_response(404)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_spot_preemption_notice_checkpoints_and_stops(setup, tmp_path):
    model, data, reference = setup
    server = ThreadingHTTPServer(("127.0.0.1", 0), Metadata)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    run = tmp_path / "run"
    try:
        env = {**os.environ, "TUNESMITH_METADATA_URL": f"http://127.0.0.1:{server.server_port}"}
        result = subprocess.run(command(model, data, run, "--set", "train.watch_preemption=aws"),
                                capture_output=True, text=True, env=env)
    finally:
        server.shutdown()
    assert result.returncode == 143, result.stderr
    assert "preemption notice from AWS" in result.stderr
    record = json.loads((run / "train.json").read_text())
    assert record["status"] == "interrupted" and record["stop_reason"].startswith("preemption notice from AWS")
    assert (run / "checkpoints" / f"step-{record['steps_done']:06d}").is_dir()
    subprocess.run(command(model, data, run, "--set", "train.watch_preemption=aws"), check=True, capture_output=True,
                   env={**os.environ, "TUNESMITH_METADATA_URL": "http://127.0.0.1:9"})  # no notice now
    same_training(run, reference)


def test_without_a_terminal_each_logged_step_is_one_plain_line(setup, tmp_path):
    model, data, _ = setup
    args = [a for a in command(model, data, tmp_path / "run", "--set", "train.max_steps=3") if a != "--no-progress"]
    result = subprocess.run(args, capture_output=True, text=True, check=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("train: step")]
    assert [line.split()[2] for line in lines] == ["1", "2", "3"]
    assert "eval_loss" in lines[2] and "tokens/s" in lines[0]
