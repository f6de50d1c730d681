"""The CLI fork server answers exactly what `python -m tunesmith.cli` answers: the same exit code,
stdout and stderr, byte for byte, for commands that exercise what a fork could get wrong."""

import os
import subprocess
import sys

import pytest

import cli_forkserver
from tiny import order_rows, write_rows

CASES = {
    # typer's usage box: drawn to the child's COLUMNS, not the server's
    "usage-box": (["gpus", "--json-out"], None),
    # root's override dropped: a mode-0 file must be unreadable
    "no-override": (["data", "check", "{tmp}/u.jsonl"], "unreadable"),
    # a command that imports torch, transformers and peft (warm in the server) and refuses late
    "train": (["train", "--model", "{tiny}", "--data", "{tmp}/nope.jsonl", "--out", "{tmp}/out"], None),
}


@pytest.mark.parametrize("case", CASES)
def test_the_fork_server_answers_what_a_subprocess_answers(case, tmp_path, tiny_model_dir):
    args, setup = CASES[case]
    if setup == "unreadable":
        write_rows(tmp_path / "u.jsonl", order_rows(2)).chmod(0)
    args = [a.replace("{tmp}", str(tmp_path)).replace("{tiny}", str(tiny_model_dir)) for a in args]
    env = {**os.environ, "TUNESMITH_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    drop = setup == "unreadable" and os.geteuid() == 0
    plain = subprocess.run([sys.executable, "-m", "tunesmith.cli", *args], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300, preexec_fn=cli_forkserver.drop_root_override if drop else None)
    served_before = cli_forkserver.shared_server().count
    forked = cli_forkserver.run(args, cwd=tmp_path, env=env, no_override=drop, timeout=300)
    assert cli_forkserver.shared_server().count == served_before + 1  # the server ran it, not a fallback
    assert (forked.returncode, forked.stdout, forked.stderr) == (plain.returncode, plain.stdout, plain.stderr)
    assert plain.returncode == 2 and plain.stderr
