"""The README's commands run as written from a fresh checkout.

Regression: the README used `train.jsonl` without saying where the bundled sample was, its
config example stopped at `data/train.jsonl: data file not found`, and `plan --calibrate`
printed "no token count". Every ```bash block is run in order, in a folder laid out like
the checkout; commands that train or generate get a budget (`max_steps`, `max_examples`)
appended, the rest run exactly as written.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import cli_forkserver

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
TUNESMITH = (".venv/bin/tunesmith", "tunesmith")
# Appended to the commands that would train or generate for minutes: same code path, seconds.
BUDGET = {
    "train": ["--set", "train.max_steps=2"],
    "demo": ["--set", "train.max_steps=2", "--set", "eval.max_examples=2", "--set", "eval.general=false"],
    "eval": ["--set", "eval.max_examples=2", "--set", "eval.max_new_tokens=8", "--set", "eval.general=false"],
}


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def commands(block: str) -> list[list[str]]:
    """Each command of a shell block as argv: continuation lines joined, comments dropped."""
    text = block.replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in text.splitlines() if shlex.split(line, comments=True)]


def readme_commands() -> list[list[str]]:
    return [argv for block in blocks("bash") for argv in commands(block)]


def test_the_readme_opens_with_the_two_commands():
    first = commands(blocks("bash")[0])
    assert first == [["make", "demo"], ["make", "test"]]
    assert README.index("```bash") < README.index("## ")  # before any section


def test_every_make_target_the_readme_names_exists():
    named = {tuple(argv) for argv in readme_commands() if argv[0] == "make"}
    named |= {tuple(shlex.split(m)) for m in re.findall(r"`(make [^`]+)`", README)}
    assert ("make", "test-fast") in named and any("TORCH_INDEX=" in " ".join(m) for m in named)
    for argv in sorted(named):
        dry = subprocess.run([*argv, "-n"], cwd=ROOT, capture_output=True, text=True)
        assert dry.returncode == 0, f"{' '.join(argv)}: {dry.stderr}"


def test_every_tunesmith_command_in_the_readme_is_one_the_cli_has():
    from tunesmith.cli import app

    import typer.main

    cli = typer.main.get_command(app)
    for argv in readme_commands():
        if argv[0] not in TUNESMITH or argv[1].startswith("-"):
            continue
        assert argv[1] in cli.commands, argv  # type: ignore[attr-defined]


@pytest.mark.slow
def test_the_readme_commands_run_as_written(tmp_path):
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in ("configs", "src"):
        (checkout / name).symlink_to(ROOT / name)
    ran = []
    for argv in readme_commands():
        if argv[0] == "make":
            continue  # checked with make -n above; running them is what CI does
        assert argv[0] in TUNESMITH, f"README command without tunesmith: {argv}"
        args = argv[1:] + BUDGET.get(argv[1], [])
        # `python -m tunesmith.cli ARGS` in the checkout, without paying for torch's imports each time.
        result = cli_forkserver.run(args, cwd=checkout, env={**os.environ, "COLUMNS": "200"})
        ran.append(argv[1])
        # plan exits 1 when nothing fits; none of the README's examples is such a case.
        assert result.returncode == 0, f"{' '.join(argv)}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
        assert "Traceback" not in result.stderr
        if "--calibrate" in argv:
            assert "no token count" not in result.stdout
            assert "calibrated from runs/mine" in " ".join(result.stdout.split())
    assert {"data", "plan", "gpus", "train", "eval", "export", "deploy", "config", "demo"} <= set(ran)
    assert (checkout / "exported" / "mine" / "model.safetensors").is_file()
    assert (checkout / "runs" / "mine" / "eval" / "scores.json").is_file()
    assert (checkout / "runs" / "smollm2-lora-cpu" / "adapter").is_dir()


@pytest.mark.slow
def test_the_installed_package_runs_away_from_the_checkout(tmp_path):
    """The Install section: pip installs the checkout, and the package carries its data
    (catalog, sample, templates), so it runs from anywhere."""
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(ROOT)],
                   check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    away = tmp_path / "elsewhere"
    away.mkdir()

    def run(*args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "tunesmith.cli", *args], cwd=away, env=env,
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result.stdout

    version = run("--version")
    assert version.strip().startswith("tunesmith ")
    where = subprocess.run([sys.executable, "-c", "import tunesmith; print(tunesmith.__file__)"], cwd=away, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(site))  # not the checkout
    assert "H100-SXM" in run("gpus")
    sample = site / "tunesmith" / "demo" / "sample" / "train.jsonl"
    assert "623 rows" in run("data", "check", str(sample))
    assert "8.03B parameters" in run("plan", "--model", "llama-3.1-8b", "--tokens", "1M")
