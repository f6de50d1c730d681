"""`tunesmith train` refuses what cannot work before it writes anything, never wrecks an
earlier run in its folder, and leaves outputs readable like any file the user creates."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from test_train_cli import FAST, tunesmith
from tiny import order_rows, write_rows


def snapshot(folder):
    """Every file under `folder` with its bytes: what "nothing changed" means."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("finished")
    data = write_rows(tmp / "d.jsonl", order_rows(20))
    run = tmp / "run"
    tunesmith("train", "--model", tiny_model_dir, "--data", data, "--out", run, "--no-progress",
              "--set", "train.max_steps=2", *FAST)
    return run, data


def test_a_different_run_into_a_finished_folder_is_refused_and_changes_nothing(finished_run, tiny_model_dir):
    """Regression: a failed `train` into a finished run folder replaced config.yaml and the
    data report while the old adapter and metrics stayed, so the folder described a run
    that never happened."""
    run, data = finished_run
    before = snapshot(run)
    result = tunesmith("train", "--model", tiny_model_dir, "--data", data, "--out", run, "--no-progress",
                       "--set", "train.max_steps=2", *FAST, "--lr", "1e-4", "--set", "method.r=8", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (f"--out {run} holds another run (finished: it has a trained adapter) that differs in "
            f"method.alpha 8 -> 16; method.r 4 -> 8; train.lr 0.0002 -> 0.0001: choose another --out, "
            f"or add --restart") in " ".join(result.stderr.split())
    assert snapshot(run) == before


def test_the_same_finished_run_again_has_nothing_to_do(finished_run, tiny_model_dir, tmp_path):
    run, data = finished_run
    before = snapshot(run)
    again = ["train", "--model", tiny_model_dir, "--data", data, "--out", run, "--no-progress",
             "--set", "train.max_steps=2", *FAST]
    result = tunesmith(*again, "--set", "train.log_every=5")  # how often to log is not part of the run
    assert f"{run} already holds this run, finished (completed): nothing to do" in " ".join(result.stdout.split())
    assert "trained 2 steps" not in result.stdout
    assert snapshot(run) == before
    copy = tmp_path / "copy"
    os.system(f"cp -r {run} {copy}")
    (copy / "notes.txt").write_text("mine")
    restarted = tunesmith(*again[:6], copy, *again[7:], "--restart")
    assert "trained 2 steps" in restarted.stdout
    assert (copy / "notes.txt").read_text() == "mine"  # --restart deletes only what a run writes
    # Same config, same data, CPU: the restarted run reproduces the adapter bit for bit.
    assert (copy / "adapter" / "adapter_model.safetensors").read_bytes() == \
        (run / "adapter" / "adapter_model.safetensors").read_bytes()


def test_an_attempt_that_never_trained_is_replaced_without_restart(tiny_model_dir, tmp_path):
    data = write_rows(tmp_path / "d.jsonl", order_rows(6))
    with data.open("a") as f:
        f.write('{"instruction": "x", "answer": "{}"}\n' * 3)  # a third unreadable: the data stage blocks
    run = tmp_path / "run"
    blocked = tunesmith("train", "--model", tiny_model_dir, "--data", data, "--out", run, "--no-progress", *FAST,
                        check=False)
    assert blocked.returncode == 1 and (run / "data" / "report.json").is_file()
    write_rows(data, order_rows(12))  # the user fixes the file and runs the same command
    fixed = tunesmith("train", "--model", tiny_model_dir, "--data", data, "--out", run, "--no-progress",
                      "--set", "train.max_steps=1", *FAST)
    assert "trained 1 steps" in fixed.stdout
    assert json.loads((run / "data" / "report.json").read_text())["input_rows"] == 12


def test_a_folder_of_other_files_is_never_a_run_folder(tiny_model_dir, tmp_path):
    data = write_rows(tmp_path / "d.jsonl", order_rows(8))
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("keep me")
    for extra in ([], ["--restart"]):
        result = tunesmith("train", "--model", tiny_model_dir, "--data", data, "--out", folder, *extra, check=False)
        assert result.returncode == 2 and "holds other files (thesis.tex) and no tunesmith run" in result.stderr
    assert [p.name for p in folder.iterdir()] == ["thesis.tex"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--val", "SAME"], "is the same file as data.train (--data)"),
        (["--epochs", "inf"], "--epochs inf: train.epochs: expected a finite number"),
        (["--lr", "3"], "--lr 3.0: train.lr: must be less than 1"),
        (["--lora-r", "0"], "--lora-r 0: method.r: must be greater than or equal to 1"),
        (["--method", "dora"], "--method dora: method.name: not allowed; choose one of 'lora', 'qlora' or 'full'"),
    ],
)
def test_a_run_that_cannot_work_fails_before_anything_is_written(tiny_model_dir, tmp_path, extra, message):
    """Usage errors: exit 2, nothing written."""
    """Regression: QLoRA on a machine without CUDA was refused only after the pre-flight and
    the data stage had run and written the run folder."""
    data = write_rows(tmp_path / "d.jsonl", order_rows(8))
    extra = [str(data) if x == "SAME" else x for x in extra]
    result = tunesmith("train", "--model", tiny_model_dir, "--data", data, "--out", tmp_path / "run", *extra,
                       check=False)
    assert result.returncode == 2, result.stderr
    assert message in " ".join(result.stderr.split())
    assert "data:" not in result.stdout and "pre-flight" not in result.stdout
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "qlora"], "pre-flight: gpu: QLoRA's 4-bit base needs a CUDA GPU and this machine has none: run "
                                "on a GPU, or here with --method lora"),
        (["--set", "train.optimizer=adamw_8bit"], "pre-flight: gpu: the adamw_8bit optimizer needs a CUDA GPU and "
                                                  "this machine has none: run on a GPU, or here with --set "
                                                  "train.optimizer=adamw"),
        (["--set", "model.dtype=float16"], "pre-flight: gpu: model.dtype=float16 needs a CUDA GPU and this machine "
                                           "has none: run on a GPU, or here with --set model.dtype=auto"),
    ],
)
def test_a_run_that_needs_a_gpu_exits_1_before_anything_is_written(tiny_model_dir, tmp_path, extra, message):
    """Regression: QLoRA on a machine without CUDA was refused only after the pre-flight and the
    data stage had run; model.dtype=bfloat16 trained quietly on the CPU."""
    data = write_rows(tmp_path / "d.jsonl", order_rows(8))
    result = tunesmith("train", "--model", tiny_model_dir, "--data", data, "--out", tmp_path / "run", *extra,
                       check=False)
    assert result.returncode == 1, result.stderr
    assert message in " ".join(result.stderr.split())
    assert "data:" not in result.stdout
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_outputs_take_the_users_umask(tiny_model_dir, tmp_path, umask, file_mode, dir_mode):
    """Regression: clean.jsonl, config.yaml, plan.json and the adapter's weights were 0600
    whatever the umask (temp files from mkstemp and safetensors), so a teammate or a serving
    process could not read them."""
    data = write_rows(tmp_path / "d.jsonl", order_rows(12))
    run = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "tunesmith.cli", "train", "--model", str(tiny_model_dir), "--data",
                    str(data), "--out", str(run), "--no-progress", "--set", "train.max_steps=3", *FAST],
                   check=True, capture_output=True, preexec_fn=lambda: os.umask(umask))
    subprocess.run([sys.executable, "-m", "tunesmith.cli", "data", "clean", str(data), "--out", str(tmp_path / "c")],
                   check=True, capture_output=True, preexec_fn=lambda: os.umask(umask))
    files = [run / "config.yaml", run / "plan.json", run / "metrics.jsonl", run / "data" / "train.jsonl",
             run / "adapter" / "adapter_model.safetensors", run / "checkpoints" / "step-000002" / "state.json",
             tmp_path / "c" / "clean.jsonl", tmp_path / "c" / "report.html"]
    assert {f.name: oct(f.stat().st_mode & 0o777) for f in files} == {f.name: oct(file_mode) for f in files}
    for folder in (run, run / "adapter", run / "checkpoints" / "step-000002", run / "data"):
        assert oct(folder.stat().st_mode & 0o777) == oct(dir_mode), folder


def test_ctrl_c_during_training_checkpoints_and_says_how_to_continue(tiny_model_dir, tmp_path):
    """Regression: an interrupted `train` exited 130 and printed nothing (and kept nothing)."""
    data = write_rows(tmp_path / "d.jsonl", order_rows(40))
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "tunesmith.cli", "train", "--model", str(tiny_model_dir),
                             "--data", str(data), "--out", str(run), "--no-progress", *FAST,
                             "--set", "train.max_steps=100000", "--set", "train.save_every=100000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run / "metrics.jsonl").is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "Traceback" not in stderr
    said = " ".join(stderr.split())
    step = json.loads((run / "train.json").read_text())["steps_done"]
    assert (f"stopped: SIGINT: stopped after step {step} of 100000 with a checkpoint (checkpoints/step-{step:06d}); "
            f"run the same command again to continue from there (exit 130)") in said
    assert (run / "checkpoints" / f"step-{step:06d}" / "state.json").is_file()


def test_an_unexpected_error_is_one_line_and_a_log_to_report(tmp_path):
    """The net under the bugs we have not found: no traceback on the terminal, the traceback
    in an error.log the message names."""
    code = (
        "import sys, tunesmith.catalog.gpu as g\n"
        "def broken(*a, **k):\n    raise RuntimeError('simulated failure deep inside')\n"
        "g.load_gpus = broken\n"
        "from tunesmith.cli import run_guarded\n"
        "sys.exit(run_guarded(['gpus']))\n"
    )
    env = {**os.environ, "TUNESMITH_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    message = " ".join(lines)
    assert "Traceback" not in result.stderr
    assert "RuntimeError: simulated failure deep inside — this is a bug in tunesmith; please report it with" in message
    logs = list((tmp_path / "logs").glob("error-*.log"))
    assert len(logs) == 1 and str(logs[0]) in "".join(lines)
    text = logs[0].read_text()
    assert "Traceback (most recent call last)" in text and "simulated failure deep inside" in text


def test_running_out_of_memory_is_one_line_with_the_remedies(tmp_path):
    """Regression: a run past the pre-flight (--no-preflight) that ran out of memory while
    loading the model ended in "this is a bug" with torch's allocator message. The process
    gets an 8 GB address-space limit, so the 70B model cannot be allocated here."""
    import resource

    from big_model import write_big_model_folder

    model = write_big_model_folder(tmp_path / "llama-70b")
    data = write_rows(tmp_path / "d.jsonl", order_rows(10))

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (8 * 2**30, 8 * 2**30))

    result = subprocess.run([sys.executable, "-m", "tunesmith.cli", "train", "--model", str(model), "--data",
                             str(data), "--out", str(tmp_path / "run"), "--no-progress", "--no-preflight"],
                            capture_output=True, text=True, preexec_fn=limit_memory, timeout=600,
                            env={**os.environ, "TUNESMITH_HOME": str(tmp_path / "home")})
    said = " ".join(result.stderr.split())
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error: out of CPU memory while loading the model (the pre-flight predicted a peak of ~" in said
    assert "and was overridden with --no-preflight" in said
    assert "--set train.gradient_checkpointing=true" in said and "--method qlora" in said
    assert not (tmp_path / "home" / "logs").exists()  # not reported as a bug


def test_the_demo_starts_its_own_run_over_but_not_another(finished_run, tmp_path):
    """`make demo` twice must work: the same run is replaced; a different one still refused."""
    from tunesmith.config import load_config
    from tunesmith.errors import UsageError
    from tunesmith.train.checks import inspect_run_dir

    run, _ = finished_run
    same = load_config(run / "config.yaml")
    folder = inspect_run_dir(same, same_run_restarts=True)
    assert {p.name for p in folder.replace} >= {"config.yaml", "adapter", "metrics.jsonl", "data", "plan.json"}
    assert (run / "adapter").is_dir()  # nothing is removed until the run takes the folder
    with pytest.raises(UsageError, match="holds another run"):
        inspect_run_dir(load_config(run / "config.yaml", ["train.lr=1e-5"]), same_run_restarts=True)
