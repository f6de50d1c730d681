"""`tunesmith launch | status | logs | down | pull`: the SkyPilot managed job a config makes,
checked by SkyPilot's own parser (make setup's .venv-sky); the `sky` calls against a stand-in
`sky` that records its arguments (no cloud is reachable here); pull from a real run folder."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pytest
import yaml

import cli_forkserver
from test_train_cli import train_four_steps
from tiny import order_rows, write_rows
from tunesmith.cloud.pull import sync_command
from tunesmith.cloud.task import MIN_DISK_GB, SOFTWARE_GB, candidates, disk_gb, parse_bucket, parse_gpu
from tunesmith.config import load_config
from tunesmith.errors import UsageError

CHECKOUT_SKY = Path(__file__).parents[1] / ".venv-sky" / "bin"

CONFIG = """\
model:
  source: llama-3.1-8b
method:
  name: qlora
  r: 16
data:
  train: data/train.jsonl
train:
  micro_batch: 2
  grad_accum: 8
  max_seq_len: 2048
  gradient_checkpointing: true
  optimizer: paged_adamw_8bit
output:
  dir: runs/llama-qlora
"""


def tunesmith(*args, cwd, env=None):
    return cli_forkserver.run([*map(str, args)], cwd=cwd, env={**os.environ, **(env or {})}, timeout=600)


@pytest.fixture
def project(tmp_path):
    """A user's folder: a config and its data."""
    (tmp_path / "data").mkdir()
    write_rows(tmp_path / "data" / "train.jsonl", order_rows(40))
    (tmp_path / "qlora.yaml").write_text(CONFIG)
    return tmp_path


@pytest.fixture
def fake_sky(tmp_path):
    """A `sky` that records its arguments and answers from files beside it, next to the real
    SkyPilot's Python (so the parser that checks task.yaml is the real one)."""
    assert (CHECKOUT_SKY / "python").is_file(), "make setup builds .venv-sky with SkyPilot"
    folder = tmp_path / "fakebin"
    folder.mkdir()
    (folder / "python").write_text(f'#!/bin/sh\nexec "{CHECKOUT_SKY / "python"}" "$@"\n')  # a symlink leaves the venv
    (folder / "python").chmod(0o755)
    (folder / "sky").write_text(
        "#!/bin/sh\n"
        'here=$(dirname "$0")\n'
        'printf "%s\\n" "$*" >> "$here/calls"\n'
        'cat "$here/answer" 2>/dev/null\n'
        'exit $(cat "$here/code" 2>/dev/null || echo 0)\n')
    (folder / "sky").chmod(0o755)
    return folder


def calls(fake: Path) -> list[str]:
    return (fake / "calls").read_text().splitlines() if (fake / "calls").exists() else []


# ---------------------------------------------------------------- launch --dry-run


def test_dry_run_writes_a_task_skypilot_accepts_with_the_plans_gpus_and_cost(project):
    result = tunesmith("launch", "qlora.yaml", "--bucket", "s3://team-bucket/tunesmith", "--tokens", "20M",
                       "--dry-run", cwd=project)
    assert result.returncode == 0, result.stderr
    launch = project / "runs" / "llama-qlora" / "launch"
    record = json.loads((launch / "launch.json").read_text())
    task = yaml.safe_load((launch / "task.yaml").read_text())
    assert "SkyPilot 0.14.1 accepts it" in result.stdout

    # The GPUs: the plan's options that fit, priced on spot, the cheapest first, as any_of.
    plan = json.loads(tunesmith("plan", "qlora.yaml", "--tokens", "20M", "--json", cwd=project).stdout)
    names = {"H100-SXM": "H100", "A100-80GB": "A100-80GB", "A100-40GB": "A100", "L40S": "L40S", "H200": "H200",
             "L4": "L4", "A10G": "A10G", "A10": "A10", "RTX-4090": "RTX4090", "RTX-A6000": "RTXA6000"}
    runnable = [o for o in plan["options"] if o["headroom_ok"] and o["cost_spot"] is not None and o["gpu"] in names]
    cheapest = min(runnable, key=lambda o: (o["cost_spot"], o["spot_hours"]))
    first = record["candidates"][0]
    assert (first["gpu"], first["count"], first["cost"], first["hours"]) == (
        cheapest["gpu"], cheapest["count"], cheapest["cost_spot"], cheapest["spot_hours"])
    assert all(c["cost"] <= 1.5 * first["cost"] for c in record["candidates"])
    assert task["resources"]["any_of"] == [{"accelerators": f"{names[c['gpu']]}:{c['count']}"}
                                           for c in record["candidates"]]
    assert f"~${first['cost']:,.2f} on spot ({first['count']} x {first['gpu']}" in result.stdout

    # Spot with recovery; the run folder in the bucket, cached on the machine's disk.
    assert task["resources"]["use_spot"] is True
    assert task["resources"]["job_recovery"] == {"max_restarts_on_errors": 3, "recover_on_exit_codes": [143]}
    assert task["envs"]["TUNESMITH_PRICING"] == "spot"
    assert task["file_mounts"]["/tunesmith/run"] == {"source": "s3://team-bucket/tunesmith/llama-qlora",
                                                     "mode": "MOUNT_CACHED"}
    assert task["file_mounts"]["/tunesmith/data/train/train.jsonl"] == str(project / "data" / "train.jsonl")
    assert task["file_mounts"]["/tunesmith/launch"] == str(launch)
    # 8B in 16-bit (16.1 GB) and 40 GB of software: under the 100 GB floor.
    assert task["resources"]["disk_size"] == record["disk_gb"] == MIN_DISK_GB

    # The cloud machine installs the wheel of this checkout and runs the config rewritten for it.
    (wheel,) = launch.glob("tunesmith-*.whl")
    assert f"/tunesmith/launch/{wheel.name}[gpu]" in task["setup"]
    assert "tunesmith/cloud/task.py" in zipfile.ZipFile(wheel).namelist()
    assert task["run"] == 'tunesmith train /tunesmith/launch/config.yaml --nproc "$SKYPILOT_NUM_GPUS_PER_NODE" --no-progress\n'
    remote = load_config(launch / "config.yaml")
    assert (remote.output.dir, remote.data.train, remote.model.source, remote.method.name) == (
        "/tunesmith/run", "/tunesmith/data/train/train.jsonl", "llama-3.1-8b", "qlora")
    constraints = (launch / "constraints.txt").read_text().splitlines()
    assert "torch==2.13.0" in constraints and any(line.startswith("transformers==") for line in constraints)

    # The command it would run; HF_TOKEN comes from the shell, never a file.
    assert record["command"] == ["sky", "jobs", "launch", "runs/llama-qlora/launch/task.yaml", "--name",
                                 "tunesmith-llama-qlora", "--yes", "--detach-run", "--secret", "HF_TOKEN"]
    assert " ".join(record["command"]) in result.stdout
    assert "HF_TOKEN" not in (launch / "task.yaml").read_text().split("run: |")[0].split("# Launch:")[0]


def test_on_demand_on_a_named_gpu_count(project):
    result = tunesmith("launch", "qlora.yaml", "--bucket", "gs://b", "--tokens", "20M", "--on-demand",
                       "--gpu", "a100-80gb:2", "--dry-run", cwd=project)
    assert result.returncode == 0, result.stderr
    task = yaml.safe_load((project / "runs/llama-qlora/launch/task.yaml").read_text())
    assert task["resources"]["any_of"] == [{"accelerators": "A100-80GB:2"}]
    assert task["resources"]["use_spot"] is False
    assert task["envs"]["TUNESMITH_PRICING"] == "on_demand"
    assert task["file_mounts"]["/tunesmith/run"]["source"] == "gs://b/llama-qlora"


def test_skypilots_parser_refuses_a_broken_task(project, fake_sky):
    """The check is SkyPilot's own: a task it cannot read stops the launch with its reason."""
    from tunesmith.cloud.skypilot import parse_task

    assert tunesmith("launch", "qlora.yaml", "--bucket", "s3://b", "--tokens", "20M", "--dry-run",
                     cwd=project).returncode == 0
    task_file = project / "runs/llama-qlora/launch/task.yaml"
    parsed = parse_task(task_file, fake_sky / "sky")
    assert parsed["storage_mounts"]["/tunesmith/run"] == {"source": "s3://b/llama-qlora", "mode": "MOUNT_CACHED"}
    broken = task_file.with_name("broken.yaml")
    broken.write_text(task_file.read_text().replace("use_spot:", "use_spott:"))
    with pytest.raises(Exception, match="SkyPilot refuses .*use_spott"):
        parse_task(broken, fake_sky / "sky")


# ---------------------------------------------------------------- sky jobs …


def test_launch_status_logs_down_call_sky_jobs_with_the_jobs_name(project, fake_sky):
    env = {"TUNESMITH_SKY": str(fake_sky / "sky")}
    result = tunesmith("launch", "qlora.yaml", "--bucket", "s3://b", "--tokens", "20M", cwd=project, env=env)
    assert result.returncode == 0, result.stderr
    task_file = "runs/llama-qlora/launch/task.yaml"
    # HF_TOKEN is not set here: passed on only when it is, with a warning when not.
    assert calls(fake_sky) == [f"jobs launch {task_file} --name tunesmith-llama-qlora --yes --detach-run"]
    assert "HF_TOKEN is not set here" in result.stderr
    record = json.loads((project / "runs/llama-qlora/launch/launch.json").read_text())
    assert record["launched_at"] is not None

    (fake_sky / "answer").write_text(
        "Fetching managed job statuses...\n"
        "Managed jobs\n"
        "ID  TASK  NAME                      REQUESTED   SUBMITTED  TOT. DURATION  JOB DURATION  #RECOVERIES  STATUS\n"
        "7   -     tunesmith-llama-qlora-2   1x[H100:1]  1 hr ago   1h             58m           0            RUNNING\n"
        "6   -     tunesmith-llama-qlora     1x[H100:1]  2 hrs ago  2h 3m          1h 40m        2            RECOVERING\n")
    status = tunesmith("status", "runs/llama-qlora", cwd=project, env=env)
    assert status.returncode == 0, status.stderr
    assert "RECOVERING" in status.stdout and "tunesmith-llama-qlora-2" not in status.stdout
    tunesmith("logs", "runs/llama-qlora", "--no-follow", cwd=project, env=env)
    (fake_sky / "answer").write_text("")
    down = tunesmith("down", "runs/llama-qlora", cwd=project, env=env)
    assert down.returncode == 0 and "its run folder stays in s3://b/llama-qlora" in down.stdout
    assert calls(fake_sky)[1:] == ["jobs queue", "jobs logs --name tunesmith-llama-qlora --no-follow",
                                   "jobs cancel --name tunesmith-llama-qlora --graceful --yes"]


def test_a_failing_sky_command_says_what_to_check_and_exits_1(project, fake_sky):
    env = {"TUNESMITH_SKY": str(fake_sky / "sky")}
    (fake_sky / "code").write_text("3")
    (fake_sky / "answer").write_text("No cloud access. Run sky check.\n")
    result = tunesmith("launch", "qlora.yaml", "--bucket", "s3://b", "--tokens", "20M", cwd=project, env=env)
    assert result.returncode == 1
    assert "sky jobs launch failed (sky exit 3" in result.stderr and "`sky check`" in result.stderr
    record = json.loads((project / "runs/llama-qlora/launch/launch.json").read_text())
    assert record["launched_at"] is None


def test_status_of_a_job_skypilot_does_not_list(project, fake_sky):
    env = {"TUNESMITH_SKY": str(fake_sky / "sky")}
    tunesmith("launch", "qlora.yaml", "--bucket", "s3://b", "--tokens", "20M", "--dry-run", cwd=project, env=env)
    (fake_sky / "answer").write_text("No in-progress managed jobs.\n")
    status = tunesmith("status", "runs/llama-qlora", cwd=project, env=env)
    assert status.returncode == 1
    assert "SkyPilot lists no job named tunesmith-llama-qlora (it was never submitted: --dry-run)" in status.stdout


# ---------------------------------------------------------------- pull


def test_pull_brings_the_run_back_without_checkpoints_and_keeps_launch(tiny_model_dir, tmp_path):
    bucket = train_four_steps(tiny_model_dir, tmp_path)  # a finished run folder, as the bucket holds it
    (bucket / "launch").mkdir()
    (bucket / "launch" / "launch.json").write_text("{}")  # the bucket's copy never replaces RUN/launch
    run = tmp_path / "pulled"
    (run / "launch").mkdir(parents=True)
    (run / "launch" / "launch.json").write_text(json.dumps({"job": "j", "bucket": str(bucket)}))

    first = tunesmith("pull", run, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    expected = sorted(str(p.relative_to(bucket)) for p in bucket.rglob("*")
                      if p.is_file() and p.relative_to(bucket).parts[0] not in ("checkpoints", "launch"))
    got = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and p.relative_to(run).parts[0] != "launch")
    assert got == expected
    for name in expected:
        assert (run / name).read_bytes() == (bucket / name).read_bytes()
    assert json.loads((run / "launch" / "launch.json").read_text())["job"] == "j"
    assert f"{len(expected)} files copied" in first.stdout
    assert "train.json: completed, step 4 of 4, 0 resumes; adapter/ is here" in first.stdout
    assert f"plan vs actual ({run / 'plan_vs_actual.json'})" in first.stdout  # the run's own, as it ended

    again = tunesmith("pull", run, cwd=tmp_path)
    assert "0 files copied" in again.stdout
    with_checkpoints = tunesmith("pull", run, "--checkpoints", cwd=tmp_path)
    ckpt = [p for p in (bucket / "checkpoints").rglob("*") if p.is_file()]
    assert f"{len(ckpt)} files copied" in with_checkpoints.stdout and ckpt


def test_pull_sync_commands_for_s3_and_gcs(tmp_path):
    aws, gcloud = tmp_path / "aws", tmp_path / "gcloud"
    for tool in (aws, gcloud):
        tool.write_text("#!/bin/sh\n")
        tool.chmod(0o755)
    dirs = (tmp_path,)
    assert sync_command("s3://b/run", Path("runs/x"), checkpoints=False, tool_dirs=dirs)[1:] == [
        "s3", "sync", "s3://b/run", "runs/x", "--exclude", "launch/*", "--exclude", "checkpoints/*"]
    assert sync_command("gs://b/run", Path("runs/x"), checkpoints=True, tool_dirs=dirs)[1:] == [
        "storage", "rsync", "--recursive", "--exclude", "^launch/", "gs://b/run", "runs/x"]


# ---------------------------------------------------------------- the pure parts


def option(gpu, cost, *, count=1, fits=True, strategy="ddp", hours=1.0):
    return {"gpu": gpu, "count": count, "strategy": strategy, "headroom_ok": fits, "hours": hours,
            "spot_hours": None if hours is None else hours * 1.1, "cost_spot": cost,
            "cost_spot_range": None if cost is None else [cost * 0.8, cost * 1.2],
            "cost_on_demand": None if cost is None else cost * 2, "cost_on_demand_range": None,
            "provider_spot": "p", "provider_on_demand": "p"}


def test_candidates_are_the_cheapest_within_half_again_at_most_four():
    options = [option("L40S", 10.0), option("A100-80GB", 12.0), option("H100-SXM", 15.0),
               option("H200", 15.1), option("A10G", 11.0, strategy="zero3", count=8),
               option("H100-PCIe", 9.0), option("RTX-4090", 11.5), option("L4", 1.0, fits=False)]
    picks = candidates(options, "spot")
    # H100-PCIe has no single SkyPilot name, ZeRO is not run by train, L4 does not fit, H200 is over 1.5x.
    assert [(c.gpu, c.cost, c.hours) for c in picks] == [
        ("L40S", 10.0, 1.1), ("RTX-4090", 11.5, 1.1), ("A100-80GB", 12.0, 1.1), ("H100-SXM", 15.0, 1.1)]
    assert picks[0].accelerators == "L40S:1"


def test_candidates_say_why_there_are_none():
    with pytest.raises(UsageError, match="no GPU in the catalog fits"):
        candidates([option("L4", 1.0, fits=False)], "spot")
    with pytest.raises(UsageError, match="no token count"):
        candidates([option("L4", 1.0, hours=None)], "spot")
    with pytest.raises(UsageError, match=r"none of the GPUs that fit \(L40S\) has a spot price.*try --on-demand"):
        candidates([option("L40S", None)], "spot")


def test_disk_counts_weights_uploads_and_checkpoints():
    gb = 1e9
    plan = {"setup": {"method": "full", "optimizer": "adamw"}, "params": {"total": 8e9, "trainable": 8e9}}
    # 40 software + 16 weights + 5 uploads + (3 + 1) x 96 checkpoints + 32 final = 477 -> 480
    assert disk_gb(plan, upload_bytes=5 * gb, keep_checkpoints=3) == 480
    lora = {"setup": {"method": "lora", "optimizer": "adamw"}, "params": {"total": 8e9, "trainable": 42e6}}
    assert disk_gb(lora, upload_bytes=0, keep_checkpoints=3) == MIN_DISK_GB
    assert SOFTWARE_GB == 40


def test_gpu_and_bucket_flags():
    assert parse_gpu("auto") == (None, None)
    assert parse_gpu("h100:8") == ("H100-SXM", 8)
    assert parse_bucket("s3://b/prefix/") == "s3://b/prefix"
    assert parse_bucket("https://acct.blob.core.windows.net/runs") == "https://acct.blob.core.windows.net/runs"
    with pytest.raises(UsageError, match="the count after ':' is 1, 2, 4 or 8"):
        parse_gpu("H100:3")
    with pytest.raises(UsageError, match="no single accelerator name for H100-PCIe"):
        parse_gpu("H100-PCIe")
    with pytest.raises(UsageError, match="not a bucket SkyPilot mounts"):
        parse_bucket("/data/runs")


def test_every_command_has_a_help_page():
    """Help text goes through rich's markup: a bracket in it (NAME[:N]) once crashed --help."""
    import typer.main

    from tunesmith.cli import app

    names = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    assert {"launch", "status", "logs", "down", "pull"} <= set(names)
    for name in names:
        result = cli_forkserver.run([name, "--help"], env={**os.environ, "COLUMNS": "120"})
        assert result.returncode == 0 and "Usage: tunesmith" in result.stdout, (name, result.stderr)
