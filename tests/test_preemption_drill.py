"""A preemption drill: `tunesmith train` on spot instances whose run folder is a cloud bucket
mounted the way SkyPilot's MOUNT_CACHED mounts it, preempted again and again, ends with exactly
the model an uninterrupted run gives.

What stands in for SkyPilot and the bucket:
- the bucket is a local folder; each instance mounts it at the same path, as a fresh local cache
  that starts as a copy of the bucket, and `tunesmith train --out MOUNT` writes there;
- a syncer thread uploads new and changed files from the cache to the bucket one by one, each
  after a random write-back delay: a checkpoint can be half uploaded, `latest` can land before
  the files it names, metrics.jsonl can lag the checkpoints or be copied mid-line. Each
  upload is a temp name renamed into place, like an object store's PUT: the bucket never holds
  a torn file, but any mix of old and new ones. Nothing is deleted from the bucket (pruned
  checkpoints stay there: older than the newest, they change no choice train makes);
- a preemption without warning (SIGKILL) loses whatever was not uploaded yet; one with notice
  (SIGTERM) lets train checkpoint and exit 143 and the uploads finish, as SkyPilot's graceful
  stop does. Then the very same command runs on a new instance, until it exits 0.

The moments are drawn from a seed (TUNESMITH_DRILL_SEED); every failure message names it.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from safetensors.torch import load_file

import cli_forkserver
from test_resume import SETTINGS, same_training
from test_train_cli import tunesmith
from test_train_refusals import snapshot
from tiny import order_rows, write_rows

SEED = int(os.environ.get("TUNESMITH_DRILL_SEED", "11"))
MAX_STEPS = 24  # test_resume's settings (a checkpoint every 2 steps, an eval every 3), twice as long
WRITE_BACK_STEPS = 3  # at most, how long a version of a file waits before its upload, in steps' time
UPLOAD_S = 0.02  # at most, one upload's time: a kill can land between two files of one checkpoint


# ---------------------------------------------------------------- the bucket and its syncer

class Syncer(threading.Thread):
    """Uploads the cache to the bucket as MOUNT_CACHED does: a file is uploaded once it has not
    changed for a while (a write-back delay, drawn afresh for each version), one at a time, so
    files that change often (metrics.jsonl, train.json) lag the most and nothing keeps the
    order in which they were written."""

    def __init__(self, cache: Path, bucket: Path, rng: random.Random) -> None:
        super().__init__(daemon=True)
        self.cache, self.bucket, self.rng = cache, bucket, rng
        self.uploaded = self.files()  # the cache starts as a copy of the bucket
        self.lost = threading.Event()  # the instance is gone: not one more upload
        self.finish = threading.Event()  # graceful stop: upload what is left now, then end

    def files(self) -> dict[Path, tuple[int, int]]:
        """Each file in the cache now, with what tells a changed one (mtime, size)."""
        found = {}
        for root, _, names in os.walk(self.cache):
            for name in names:
                path = Path(root) / name
                try:
                    info = path.stat()
                except FileNotFoundError:  # renamed or deleted while we looked
                    continue
                found[path.relative_to(self.cache)] = (info.st_mtime_ns, info.st_size)
        return found

    def run(self) -> None:
        due: dict[Path, tuple[tuple[int, int], float]] = {}  # file: (the version waiting, when it may go)
        while not self.lost.is_set():
            now, step_s = time.monotonic(), step_seconds(self.cache)
            for rel, key in self.files().items():
                if key != self.uploaded.get(rel) and key != due.get(rel, (None, 0))[0]:
                    due[rel] = (key, now + self.rng.uniform(0, WRITE_BACK_STEPS) * step_s)  # each version afresh
            finishing = self.finish.is_set()
            if finishing and not due:
                return
            ready = [rel for rel, (_, at) in due.items() if finishing or at <= now]
            self.rng.shuffle(ready)
            for rel in ready:
                if self.lost.is_set():
                    return
                self.upload(rel)
                del due[rel]
                time.sleep(self.rng.uniform(0, UPLOAD_S))
            time.sleep(0.005)

    def upload(self, rel: Path) -> None:
        """The file as it is at this moment (maybe mid-write), put whole into the bucket."""
        source = self.cache / rel
        try:
            info = source.stat()  # before reading: a write during the read shows as a change next pass
            data = source.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return
        staged = self.bucket.parent / "staging" / uuid.uuid4().hex
        staged.parent.mkdir(exist_ok=True)
        staged.write_bytes(data)
        (self.bucket / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, self.bucket / rel)
        self.uploaded[rel] = (info.st_mtime_ns, info.st_size)


# ---------------------------------------------------------------- preemptions

@dataclass
class Kill:
    signum: int
    step: int | None  # once this instance has logged this step or a later one; None: once adapter/ is written
    fraction: float  # of a step's time, waited then: lands anywhere in a step or a checkpoint write

    @property
    def what(self) -> str:
        return f"{self.signum.name} " + (f"after step {self.step}" if self.step else "once adapter/ is written")

    def ready(self, run: Path, pid: int) -> bool:
        """Polled on the mounted run folder. A step counts when this process logged it: lines
        copied from the bucket are older, and a SIGTERM before training starts (while Python
        imports) is not one train can answer."""
        if self.step is None:
            return (run / "adapter").is_dir()
        start = start_of(run, pid)
        return start is not None and last_logged_step(run) >= max(self.step, start + 1)


def start_of(run: Path, pid: int) -> int | None:
    """The step process `pid` continued from, from its train.json (None before it wrote one)."""
    try:
        record = json.loads((run / "train.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if record.get("pid") != pid:
        return None
    return record["resumes"][-1]["from_step"] if record["resumes"] else 0


def logged_steps(run: Path) -> list[dict]:
    """metrics.jsonl's whole lines (one may be half written)."""
    try:
        lines = (run / "metrics.jsonl").read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    found = []
    for line in lines:
        try:
            found.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return found


def last_logged_step(run: Path) -> int:
    return max((r["step"] for r in logged_steps(run)), default=0)


def step_seconds(run: Path) -> float:
    """The shortest of the last few steps' times: moments measured in steps, not seconds, land
    alike on fast and slow machines, and a delay under the shortest step (not the mean: the
    first step and eval steps are slow) keeps a kill within a step of its moment."""
    times = [r["elapsed"] for r in sorted(logged_steps(run), key=lambda r: r["step"])[-4:]]
    return min((b - a for a, b in zip(times, times[1:])), default=0.1)


def kill_plan(rng: random.Random) -> list[Kill]:
    """Four preemptions during training, a mix of SIGKILL and SIGTERM, then one without warning
    soon after the adapter is written, while the last files wait for their upload (the process
    may have ended by then: the instance goes before the job's uploads are done). A kill lands
    less than a step after its step s is logged, so the run gets no further than s + 2; the
    kill steps are at least 3 apart, so each lands on an instance that has trained, and the last
    is early enough that a SIGTERM cannot meet the run's end."""
    steps = sorted(4 * k - 1 + rng.randint(0, 1) for k in rng.sample(range(1, 6), 4))
    signals = [signal.SIGKILL, signal.SIGTERM] + rng.choices([signal.SIGKILL, signal.SIGTERM], k=2)
    rng.shuffle(signals)
    kills = [Kill(sig, s, rng.random()) for sig, s in zip(signals, steps)]
    return kills + [Kill(signal.SIGKILL, None, rng.uniform(0, WRITE_BACK_STEPS))]


@dataclass
class Life:
    """What one instance saw: how it ended and where training continued from."""

    what: str
    returncode: int
    start: int | None  # the checkpoint step it continued from, 0 when from scratch; None: nothing to do
    kept_record: bool  # its train.json surely reached the bucket (a graceful stop or the end)


def run_instance(args: list[str], mount: Path, bucket: Path, kill: Kill | None, rng: random.Random) -> Life:
    """A new instance: mount the bucket, run the command; `kill` preempts it at its moment."""
    shutil.rmtree(mount, ignore_errors=True)  # the last instance's local disk is gone
    shutil.copytree(bucket, mount)
    syncer = Syncer(mount, bucket, random.Random(rng.random()))
    syncer.start()
    pid: list[int] = []
    started, ended = threading.Event(), threading.Event()
    fired: list[bool] = []

    def preempt() -> None:
        started.wait()
        while kill is not None:
            over = ended.is_set()  # one more look after the end: the moment may be its last writes
            if kill.ready(mount, pid[0]):
                time.sleep(kill.fraction * step_seconds(mount))
                if not ended.is_set():  # else it has finished (its pid may be another's by now)
                    try:
                        os.kill(pid[0], kill.signum)
                    except ProcessLookupError:
                        pass
                if kill.signum == signal.SIGKILL:  # finished or not, its uploads are cut short
                    syncer.lost.set()
                fired.append(True)
                return
            if over:
                return
            time.sleep(0.002)

    killer = threading.Thread(target=preempt, daemon=True)
    killer.start()
    result = cli_forkserver.run(args, on_start=lambda p: (pid.append(p), started.set()), timeout=300)
    ended.set()
    killer.join()
    preempted = bool(fired) and kill is not None
    graceful = not (preempted and kill.signum == signal.SIGKILL)
    if graceful:
        syncer.finish.set()  # a SIGTERM's stop, or the job's end: the uploads complete
    syncer.join()
    what = kill.what if preempted else "ran to the end"
    if preempted and kill.signum == signal.SIGTERM:
        assert result.returncode == 143, f"seed {SEED}: {what}: exit {result.returncode}\n{result.stderr}"
    elif not preempted:
        assert result.returncode == 0, f"seed {SEED}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return Life(what, result.returncode, start_step(result.stdout), graceful)


def start_step(stdout: str) -> int | None:
    said = " ".join(stdout.split())
    if "already holds this run, finished" in said:
        return None
    found = re.search(r"continuing from checkpoint step-(\d+)", said)
    return int(found.group(1)) if found else 0


# ---------------------------------------------------------------- the drill

def train_args(model: Path, data: Path, run: Path) -> list[str]:
    return ["train", "--model", str(model), "--data", str(data), "--out", str(run), "--no-progress", *SETTINGS,
            "--set", f"train.max_steps={MAX_STEPS}"]


def same_tensors(run: Path, reference: Path) -> None:
    """Every tensor of every adapter file equal (torch.equal), under the same names."""
    import torch

    files = sorted(p.name for p in (reference / "adapter").glob("*.safetensors"))
    assert files and sorted(p.name for p in (run / "adapter").glob("*.safetensors")) == files, f"seed {SEED}"
    for name in files:
        ours, theirs = load_file(run / "adapter" / name), load_file(reference / "adapter" / name)
        assert sorted(ours) == sorted(theirs), f"seed {SEED}: {name}"
        unequal = [key for key in theirs if not torch.equal(ours[key], theirs[key])]
        assert not unequal, f"seed {SEED}: {name}: {unequal[:3]} differ"


def run_files(run: Path) -> set[Path]:
    """What the run folder holds besides checkpoints (the bucket keeps pruned ones) and temp names."""
    files = {p.relative_to(run) for p in run.rglob("*") if p.is_file()}
    return {f for f in files if f.parts[0] != "checkpoints" and not any(part.startswith(".") for part in f.parts)}


def is_subsequence(small: list[int], big: list[int]) -> bool:
    rest = iter(big)
    return all(any(x == y for y in rest) for x in small)


@pytest.mark.slow
def test_preempted_again_and_again_on_a_cached_bucket_mount_the_model_is_the_uninterrupted_one(
        tiny_model_dir, tmp_path):
    data = write_rows(tmp_path / "d.jsonl", order_rows(60))
    reference = tmp_path / "reference"
    tunesmith(*train_args(tiny_model_dir, data, reference))
    bucket, mount = tmp_path / "bucket" / "run", tmp_path / "mnt" / "run"
    bucket.mkdir(parents=True)
    rng = random.Random(SEED)
    kills = kill_plan(rng)
    # Preempted at each moment, then left alone: the last instance must end it (exit 0).
    lives = [run_instance(train_args(tiny_model_dir, data, mount), mount, bucket, kill, rng) for kill in [*kills, None]]
    story = f"seed {SEED}: {lives}"

    assert [life.what for life in lives[:len(kills)]] == [kill.what for kill in kills], story  # each kill landed
    starts = [life.start for life in lives if life.start is not None]
    assert starts == sorted(starts) and starts[-1] > 0, story  # never back to an older checkpoint
    same_tensors(bucket, reference)
    same_training(bucket, reference)  # the adapter's bytes, and each step logged once with the same values
    assert run_files(bucket) == run_files(reference), story
    for name in ("config.yaml", "data/train.jsonl", "data/val.jsonl"):
        assert (bucket / name).read_bytes() == (reference / name).read_bytes().replace(
            str(reference).encode(), str(mount).encode()), f"{story}: {name}"
    record = json.loads((bucket / "train.json").read_text())
    assert (record["status"], record["steps_done"]) == ("completed", MAX_STEPS), story
    # A resume is in train.json when that instance's train.json reached the bucket: surely after
    # a graceful stop or at the end, maybe after a SIGKILL. Never one that did not happen.
    resumed = [life.start for life in lives if life.start]
    surely = [life.start for life in lives if life.start and life.kept_record]
    recorded = [r["from_step"] for r in record["resumes"]]
    assert recorded and is_subsequence(surely, recorded) and is_subsequence(recorded, resumed), \
        f"{story}: train.json resumes {recorded}"


# ---------------------------------------------------------------- bucket states, made on purpose
# What the drill reaches only when a kill lands in the right few milliseconds: each made by hand
# from a finished run, as the bucket holds it after a preemption.

# Every checkpoint kept, and a best by eval loss that is not the last step: eval losses 5.7221,
# 5.7139, 5.7096, 5.7087 at steps 3, 6, 9, 12 improve on the best by more than 0.01 only at step 9.
KEPT = [*SETTINGS, "--set", "train.keep_checkpoints=20", "--set", "train.early_stopping_min_delta=0.01"]


@pytest.fixture(scope="module")
def finished(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bucket")
    data = write_rows(tmp / "d.jsonl", order_rows(60))
    run = tmp / "finished"
    tunesmith("train", "--model", tiny_model_dir, "--data", data, "--out", run, "--no-progress", *KEPT)
    assert json.loads((run / "train.json").read_text())["best_step"] == 9
    return tiny_model_dir, data, run


def bucket_after(finished, tmp_path: Path, step: int, logged: int) -> Path:
    """The bucket after a preemption at `step`: checkpoints up to it, metrics.jsonl up to
    `logged`, train.json still running, no adapter."""
    _, _, run = finished
    bucket = tmp_path / "run"
    shutil.copytree(run, bucket)
    shutil.rmtree(bucket / "adapter")
    for folder in (bucket / "checkpoints").glob("step-*"):
        if int(folder.name[5:]) > step:
            shutil.rmtree(folder)
    (bucket / "checkpoints" / "latest").write_text(f"step-{step:06d}\n")
    lines = (bucket / "metrics.jsonl").read_text().splitlines(keepends=True)
    (bucket / "metrics.jsonl").write_text("".join(line for line in lines if json.loads(line)["step"] <= logged))
    record = json.loads((bucket / "train.json").read_text())
    (bucket / "train.json").write_text(json.dumps({**record, "status": "running", "steps_done": step}))
    return bucket


def train_again(finished, bucket: Path, check: bool = True):
    model, data, _ = finished
    return tunesmith("train", "--model", model, "--data", data, "--out", bucket, "--no-progress", *KEPT, check=check)


def test_a_metrics_log_older_than_the_checkpoint_still_ends_with_every_step_once(finished, tmp_path):
    """metrics.jsonl was uploaded before the lines of steps 6-8 were written, checkpoint 8
    after: the resumed run used to cut the log back to step 8 and log from 9 on, so steps 6-8
    were missing for good."""
    bucket = bucket_after(finished, tmp_path, step=8, logged=5)
    said = " ".join(train_again(finished, bucket).stdout.split())
    assert "continuing from checkpoint step-000008" in said
    same_training(bucket, finished[2])


def test_a_finished_run_whose_adapter_is_half_uploaded_is_trained_to_the_end_again(finished, tmp_path):
    """train.json saying completed reached the bucket, the adapter's weights did not: the same
    command used to say "nothing to do" and leave a run without its weights."""
    _, _, run = finished
    bucket = tmp_path / "run"
    shutil.copytree(run, bucket)
    (bucket / "adapter" / "adapter_model.safetensors").unlink()
    said = " ".join(train_again(finished, bucket).stdout.split())
    assert "says the run finished, but its trained weights are not all there" in said
    assert "continuing from checkpoint step-000010" in said
    same_training(bucket, run)


def test_a_newest_checkpoint_whose_best_is_half_uploaded_is_skipped(finished, tmp_path):
    """Checkpoint 10 reached the bucket whole, the best one (9) did not: the run continued from
    10, trained to the end, then failed reading checkpoint 9 for the adapter, at every rerun."""
    bucket = bucket_after(finished, tmp_path, step=10, logged=10)
    (bucket / "checkpoints" / "step-000009" / "state.json").unlink()
    said = " ".join(train_again(finished, bucket).stdout.split())
    assert ("checkpoint step-000010: the checkpoint of its best step, step-000009: has no state.json: using the "
            "one before it") in said
    assert "continuing from checkpoint step-000008" in said
    same_training(bucket, finished[2])



def test_when_no_checkpoint_has_its_best_whole_the_newest_whole_one_is_used(finished, tmp_path):
    """Older checkpoints' bests may be pruned: skipping every checkpoint without its best would
    start the run over from step 0, where the newest one most likely ends well."""
    from tunesmith.train.checkpoint import newest_valid

    bucket = bucket_after(finished, tmp_path, step=10, logged=10)
    (bucket / "checkpoints" / "step-000009" / "state.json").unlink()
    for step in range(2, 9):
        shutil.rmtree(bucket / "checkpoints" / f"step-{step:06d}", ignore_errors=True)
    checkpoint, notes = newest_valid(bucket)
    assert checkpoint.step == 10
    assert notes == [
        "checkpoint step-000010: the checkpoint of its best step, step-000009: has no state.json: using the one "
        "before it",
        "checkpoint step-000009: has no state.json: using the one before it",
        "no checkpoint has the checkpoint of its best step whole: continuing from step-000010 anyway; the run can "
        "end only if a later evaluation beats that best"]

def test_a_bucket_without_config_yaml_continues_from_its_checkpoint(finished, tmp_path):
    """Checkpoints reached the bucket before config.yaml did: the run folder used to be
    refused as another run ("its config.yaml, which cannot be read"), at every rerun."""
    bucket = bucket_after(finished, tmp_path, step=8, logged=8)
    (bucket / "config.yaml").unlink()
    said = " ".join(train_again(finished, bucket).stdout.split())
    assert "continuing from checkpoint step-000008" in said
    same_training(bucket, finished[2])
    assert (bucket / "config.yaml").read_bytes() == (finished[2] / "config.yaml").read_bytes().replace(
        str(finished[2]).encode(), str(bucket).encode())



def test_trained_weights_without_config_yaml_or_checkpoints_are_still_refused(finished, tmp_path):
    _, _, run = finished
    bucket = tmp_path / "run"
    shutil.copytree(run, bucket)
    (bucket / "config.yaml").unlink()
    shutil.rmtree(bucket / "checkpoints")
    result = train_again(finished, bucket, check=False)
    assert result.returncode == 2
    assert (f"--out {bucket} holds trained weights but no config.yaml to tell which run they are from"
            in " ".join(result.stderr.split()))
    assert (bucket / "adapter" / "adapter_model.safetensors").is_file()

def test_the_cleaned_data_a_kill_left_half_uploaded_is_whole_again_after_a_resume(finished, tmp_path):
    """RUN/data was written once, by the first instance: files that never reached the bucket
    used to stay missing when a later instance continued the run."""
    bucket = bucket_after(finished, tmp_path, step=8, logged=8)
    for name in ("val.jsonl", "report.html"):
        (bucket / "data" / name).unlink()
    train_again(finished, bucket)
    made, restored = snapshot(finished[2] / "data"), snapshot(bucket / "data")
    assert sorted(restored) == sorted(made)
    assert restored[Path("val.jsonl")] == made[Path("val.jsonl")]  # the reports say how long they took


def test_alarms_of_steps_after_the_checkpoint_are_not_recorded_twice(finished, tmp_path):
    """train.json can be newer than the checkpoint a run continues from (a kill after the
    checkpoint): its alarms of the later steps were kept, and the steps trained again raised
    them again."""
    bucket = bucket_after(finished, tmp_path, step=8, logged=8)
    record = json.loads((bucket / "train.json").read_text())
    assert record["alarms"] == []  # the tiny run raises none itself
    alarms = [{"kind": "loss_spike", "step": step, "message": f"a spike at step {step}", "detail": {}}
              for step in (5, 10)]
    (bucket / "train.json").write_text(json.dumps({**record, "alarms": alarms}))
    train_again(finished, bucket)
    assert json.loads((bucket / "train.json").read_text())["alarms"] == alarms[:1]
