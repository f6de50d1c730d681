"""Bad input to the data commands gets one line (what, where, what to do) and exit 2 (usage)
or 1 (the data cannot be used), never a traceback, and no file is written or changed."""

import errno
import json
import os
import tempfile
from pathlib import Path

import pytest

from test_clean import write_planted
from test_train_cli import tunesmith
from tiny import order_rows, write_rows


def listing(folder: Path) -> dict[str, tuple[int, int] | None]:
    """Every path under `folder`, with size and mtime for a file: equal before and after
    means nothing was written, changed or removed. (A folder's own mtime is left out: the
    check that --out can be written makes and removes a probe file in it.)"""
    found: dict[str, tuple[int, int] | None] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            found[str((Path(root) / name).relative_to(folder))] = None
        for name in files:
            path = Path(root) / name
            info = path.lstat()
            found[str(path.relative_to(folder))] = (info.st_size, info.st_mtime_ns)
    return found


def refused(result, code: int, *fragments: str) -> None:
    assert result.returncode == code, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr and "this is a bug" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, f"{fragment!r} not in:\n{result.stderr}"


def run_in_process(args: list[str], capsys) -> tuple[int, str]:
    """For failures a test cannot make as root (permissions): the CLI's own guard, in this process."""
    from tunesmith.cli import run_guarded

    code = run_guarded(args)
    return code, " ".join(capsys.readouterr().err.split())


# ---------------------------------------------------------------- 1. output folders


@pytest.mark.parametrize("command", ["clean", "split"])
def test_out_that_is_a_file_is_refused_before_any_work(tmp_path, command):
    """Regression: `data clean F --out EXISTING_FILE` and `data split ...` ended in a
    FileExistsError traceback after all the work was done."""
    data, _ = write_planted(tmp_path)
    taken = tmp_path / "taken"
    taken.write_text("mine\n")
    before = listing(tmp_path)
    result = tunesmith("data", command, data, "--out", taken, check=False)
    refused(result, 2, f"--out {taken}: is a file, not a folder: give a folder path")
    assert listing(tmp_path) == before and taken.read_text() == "mine\n"


@pytest.mark.parametrize("command", ["clean", "split"])
def test_out_below_a_file_cannot_be_created(tmp_path, command):
    data, _ = write_planted(tmp_path)
    (tmp_path / "plain").write_text("")
    before = listing(tmp_path)
    result = tunesmith("data", command, data, "--out", tmp_path / "plain" / "out", check=False)
    refused(result, 2, "--out", "cannot write there (a part of the path is a file): choose another folder")
    assert listing(tmp_path) == before


@pytest.mark.parametrize("command", ["clean", "split"])
def test_unwritable_out_names_the_flag_and_leaves_nothing(tmp_path, command, capsys, monkeypatch):
    """Regression: an --out folder without write permission gave a PermissionError traceback.
    Permission bits do not stop root, so the denial is made where the folder is probed."""
    data, _ = write_planted(tmp_path)
    out = tmp_path / "locked" / "out"

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", kwargs.get("dir"))

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    before = listing(tmp_path)
    code, message = run_in_process(["data", command, str(data), "--out", str(out)], capsys)
    assert code == 2
    assert f"--out {out}: cannot write there (permission denied): choose another folder" in message
    assert listing(tmp_path) == before  # the folders made to probe are gone again


@pytest.mark.parametrize("command, name", [("clean", "clean.jsonl"), ("split", "train.jsonl")])
def test_out_holding_the_input_is_refused(tmp_path, command, name):
    """Writing into the input's own folder under its name would replace the input with its result."""
    out = tmp_path / "out"
    out.mkdir()
    data = write_rows(out / name, order_rows(12))
    before = listing(tmp_path)
    result = tunesmith("data", command, data, "--out", out, check=False)
    refused(result, 2, f"--out {out}: writing {name} there would replace the input {data}; choose another folder")
    assert listing(tmp_path) == before


@pytest.mark.parametrize("command, name", [("clean", "report.json"), ("split", "split.json")])
def test_out_with_a_folder_where_an_output_goes_is_refused_first(tmp_path, command, name):
    """Else the command failed at that file, after writing the ones before it."""
    data, _ = write_planted(tmp_path)
    (tmp_path / "out" / name).mkdir(parents=True)
    before = listing(tmp_path)
    result = tunesmith("data", command, data, "--out", tmp_path / "out", check=False)
    refused(result, 2, f"--out {tmp_path / 'out'}: {name} there is a folder or another non-file")
    assert listing(tmp_path) == before


# ---------------------------------------------------------------- 2. input files


def bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    loop = tmp_path / "loop.jsonl"
    loop.symlink_to(loop)
    dangling = tmp_path / "dangling.jsonl"
    dangling.symlink_to(tmp_path / "gone.jsonl")
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    return {
        "folder": (folder, f"{folder}: is a folder, expected a data file (give the file inside it)"),
        "loop": (loop, f"{loop}: data file is a symbolic link loop: point the link at a real file"),
        "dangling": (dangling, f"{dangling}: data file is a link to {tmp_path / 'gone.jsonl'}, which does not exist"),
        "fifo": (fifo, f"{fifo}: is not a regular file (a device, pipe or socket); expected a data file"),
    }


@pytest.mark.parametrize("kind", ["folder", "loop", "dangling", "fifo"])
def test_a_path_that_is_not_a_readable_file_says_what_it_is(tmp_path, kind, tiny_model_dir):
    """Regression: a folder, a symlink loop and a FIFO were all "data file not found" (and a
    FIFO would have blocked the read for ever)."""
    path, message = bad_inputs(tmp_path)[kind]
    before = listing(tmp_path)
    refused(tunesmith("data", "check", path, check=False), 2, message)
    refused(tunesmith("data", "split", path, "--out", tmp_path / "out", check=False), 2, message)
    refused(tunesmith("data", "preview", path, "--model", tiny_model_dir, check=False), 2, message)
    assert listing(tmp_path) == before


def test_an_unreadable_file_is_named_as_such(tmp_path, monkeypatch):
    """Root reads any file, so the denial is made where the file is checked."""
    from tunesmith.data.formats import read_examples
    from tunesmith.errors import UsageError

    path = write_rows(tmp_path / "secret.jsonl", order_rows(3))
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == path else real_access(p, mode, **kw))
    with pytest.raises(UsageError, match="secret.jsonl: data file is not readable \\(permission denied\\)"):
        read_examples(path)


def test_a_file_removed_between_the_check_and_the_read(tmp_path, monkeypatch):
    """Regression: the guard's OSError line said the path "cannot be created there"."""
    from tunesmith.data.formats import read_examples
    from tunesmith.errors import UsageError

    path = write_rows(tmp_path / "vanishing.jsonl", order_rows(3))
    real_read = Path.read_bytes

    def read_after_removal(self):
        if self == path:
            self.unlink()
        return real_read(self)

    monkeypatch.setattr(Path, "read_bytes", read_after_removal)
    with pytest.raises(UsageError, match="vanishing.jsonl: data file not found"):
        read_examples(path)


@pytest.mark.parametrize("content, message", [
    (b"", "the file has no examples"),
    (b"\xef\xbb\xbf", "the file has no examples"),  # a BOM and nothing else
    (b"\xef\xbb\xbf\r\n\r\n", "the file has no examples"),
    (b"[" * 100_000, "invalid_json: nested too deeply"),
    (b'{"instruction": "x", "response": "' + b"word " * 600_000, "invalid_json: Unterminated string"),
])
def test_empty_deep_and_endless_files_are_one_data_error(tmp_path, content, message):
    path = tmp_path / "odd.jsonl"
    path.write_bytes(content)
    before = listing(tmp_path)
    refused(tunesmith("data", "check", path, check=False), 1, f"{path}: ", message)
    refused(tunesmith("data", "clean", path, "--out", tmp_path / "out", check=False), 1, message)
    assert listing(tmp_path) == before


def test_a_nul_byte_in_a_csv_removes_that_row_only(tmp_path):
    path = tmp_path / "nul.csv"
    path.write_bytes(b"instruction,response\nSay hello to the team.,Hel\x00lo everyone on the team!\n"
                     b"Name a primary colour please.,Red is a primary colour.\n")
    result = tunesmith("data", "check", path, "--json", check=False)
    assert result.returncode == 0 and "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    assert (report["kept"], report["reasons"]) == (1, {"control_chars": 1})


def test_a_nul_byte_in_a_csv_header_is_shown_escaped(tmp_path):
    path = tmp_path / "nulhead.csv"
    path.write_bytes(b"instruction\x00,response\nhi,there\n")
    refused(tunesmith("data", "check", path, check=False), 1, "rows have keys 'instruction\\x00', response")


def test_a_category_that_looks_like_markup_is_printed(tmp_path):
    """Regression: a category "[/x]" reached rich as markup: MarkupError, "this is a bug"."""
    rows = [{**row, "category": "[/x]" if i < 3 else "b"} for i, row in enumerate(order_rows(4))]
    result = tunesmith("data", "check", write_rows(tmp_path / "cats.jsonl", rows), check=False)
    assert result.returncode == 0, result.stderr
    assert "balance by category (2 groups): [/x] 3, b 1" in result.stdout
    assert "75% of rows are category '[/x]'" in " ".join(result.stdout.split())


# ---------------------------------------------------------------- 4. data check says where reasons are


def test_check_of_unusable_data_says_where_the_reasons_are(tmp_path):
    """Regression: check said "reasons per line in removed.jsonl", a file check never writes."""
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "a", "response": ""}\n' * 5 + '{"instruction": "a"}\n')
    before = listing(tmp_path)
    result = tunesmith("data", "check", path, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    printed = " ".join(result.stdout.split())
    assert ("not trainable: no row is left to train on: all 6 rows were removed: empty_field 5 (line 1: "
            "empty_field: response), unknown_format 1 (line 6: unknown_format: keys instruction;") in printed
    assert (f"reasons per line: the first 3 of each code are above; `tunesmith data clean {path} --out DIR` writes "
            f"every one to DIR/removed.jsonl") in printed
    assert listing(tmp_path) == before


def test_clean_of_unusable_data_points_at_its_removed_jsonl(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "a", "response": ""}\n' * 3)
    out = tmp_path / "out"
    result = tunesmith("data", "clean", path, "--out", out, check=False)
    assert result.returncode == 1
    assert f"reasons per line: {out / 'removed.jsonl'}" in " ".join(result.stdout.split())
    assert len((out / "removed.jsonl").read_text().splitlines()) == 3


# ---------------------------------------------------------------- 5. rows far too long


def test_a_huge_row_without_a_model_is_too_long_by_a_character_estimate(tmp_path):
    """Regression: without --model a 50 MB row was counted as trainable (and took seconds and
    gigabytes on the way). 3 MB here; the default max_seq_len 512 applies."""
    rows = order_rows(6) + [{"instruction": "Summarise the log.", "response": "shipped order " * 220_000}]
    path = write_rows(tmp_path / "huge.jsonl", rows)
    result = tunesmith("data", "check", path, "--json", check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["kept"], report["reasons"]) == (6, {"too_long": 1})
    out = tmp_path / "out"
    tunesmith("data", "clean", path, "--out", out, "--max-seq-len", "64")  # no --model needed
    (removed,) = [json.loads(line) for line in (out / "removed.jsonl").read_text().splitlines()]
    assert removed["line"] == 7
    assert removed["reasons"] == ["too_long: 3,080,018 characters > 8,192 (max_seq_len 64 x 128 characters per token): "
                                  "an estimate by characters, generous to the row; --model counts tokens exactly"]


def test_a_huge_row_with_a_model_is_removed_by_characters(tmp_path, tiny_model_dir):
    rows = order_rows(6) + [{"instruction": "Summarise the log.", "response": "shipped order " * 220_000}]
    path = write_rows(tmp_path / "huge.jsonl", rows)
    result = tunesmith("data", "check", path, "--model", tiny_model_dir, "--max-seq-len", "128", check=False)
    assert result.returncode == 0, result.stderr
    printed = " ".join(result.stdout.split())
    assert "line 7: too_long: 3,080,0" in printed and "judged by characters, not tokenised" in printed
    assert "7 rows: 6 kept, 1 removed" in printed


# ---------------------------------------------------------------- 6, 7. flags


@pytest.mark.parametrize("flag, value, message", [
    ("--max-seq-len", "-5", "--max-seq-len -5: train.max_seq_len: must be greater than or equal to 16"),
    ("--max-seq-len", "15", "--max-seq-len 15: train.max_seq_len: must be greater than or equal to 16"),
    ("--shingle-size", "0", "--shingle-size 0: clean.shingle_size: must be greater than or equal to 1"),
    ("--shingle-size", "11", "--shingle-size 11: clean.shingle_size: must be less than or equal to 10"),
    ("--balance-cap", "0", "--balance-cap 0: clean.balance_cap: must be greater than or equal to 1"),
    ("--near-dup-threshold", "nan", "--near-dup-threshold nan: clean.near_dup_threshold: expected a finite number"),
    ("--near-dup-threshold", "1.5", "--near-dup-threshold 1.5: clean.near_dup_threshold: must be less than or equal to 1"),
    ("--near-dup-threshold", "0", "--near-dup-threshold 0.0: clean.near_dup_threshold: must be greater than 0"),
])
@pytest.mark.parametrize("command", ["check", "clean"])
def test_check_and_clean_flags_have_the_configs_bounds(tmp_path, command, flag, value, message, capsys):
    """Regression: `data check --max-seq-len -5` removed every row as too long, where the
    config requires at least 16. (In this process, through the CLI's guard: 16 cases.)"""
    data, _ = write_planted(tmp_path)
    before = listing(tmp_path)
    out = ["--out", str(tmp_path / "out")] if command == "clean" else []
    code, printed = run_in_process(["data", command, str(data), *out, flag, value], capsys)
    assert code == 2 and message in printed and "Traceback" not in printed
    assert listing(tmp_path) == before


@pytest.mark.parametrize("flag, value, message", [
    ("--val-fraction", "nan", "--val-fraction nan: data.val_fraction: expected a finite number (not inf or nan)"),
    ("--val-fraction", "1", "--val-fraction 1.0: data.val_fraction: must be less than 1"),
    ("--val-fraction", "0", "--val-fraction 0.0: data.val_fraction: must be greater than 0"),
    ("--subset", "inf", "--subset inf: must be a share of the training rows in (0, 1], e.g. 0.1"),
    ("--subset", "nan", "--subset nan: must be a share of the training rows in (0, 1], e.g. 0.1"),
    ("--subset", "1.5", "--subset 1.5: must be a share of the training rows in (0, 1], e.g. 0.1"),
    ("--max-val", "0", "--max-val 0: data.max_val_examples: must be greater than or equal to 1"),
    ("--near-dup-threshold", "inf", "--near-dup-threshold inf: clean.near_dup_threshold: expected a finite number"),
    ("--near-dup-threshold", "-0.1", "--near-dup-threshold -0.1: clean.near_dup_threshold: must be greater than 0"),
])
def test_split_flags_refuse_nan_inf_and_out_of_range(tmp_path, flag, value, message, capsys):
    data, _ = write_planted(tmp_path)
    before = listing(tmp_path)
    code, printed = run_in_process(["data", "split", str(data), "--out", str(tmp_path / "out"), flag, value], capsys)
    assert code == 2 and message in printed and "Traceback" not in printed
    assert listing(tmp_path) == before


@pytest.mark.parametrize("n", ["0", "-1"])
def test_preview_needs_at_least_one_example(tmp_path, n, tiny_model_dir):
    """Regression: -n -1 showed every row but the last; -n 0 showed nothing and exit 0."""
    data, _ = write_planted(tmp_path)
    result = tunesmith("data", "preview", data, "--model", tiny_model_dir, "-n", n, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "Invalid value for '-n'" in result.stderr


# ---------------------------------------------------------------- 6. what split says


def test_split_says_where_the_subset_rest_went_and_when_val_outgrows_train(tmp_path):
    """Regression: `train 55 rows, val 61 rows` with no word that validation outgrew training,
    nor of the 493 rows written to rest.jsonl."""
    data = write_rows(tmp_path / "rows.jsonl", order_rows(100))
    out = tmp_path / "out"
    result = tunesmith("data", "split", data, "--out", out, "--subset", "0.1")
    printed = " ".join(result.stdout.split())
    assert f"train 9 rows, val 10 rows, removed 0 (none) -> {out}" in printed
    assert f"rest: 81 training rows left out by --subset 0.1 -> {out / 'rest.jsonl'}" in printed
    assert ("warning: validation (10 rows) is not smaller than training (9 rows) (--subset 0.1 takes a share of "
            "the training rows only)") in printed
    assert len((out / "rest.jsonl").read_text().splitlines()) == 81
    plain = tunesmith("data", "split", data, "--out", tmp_path / "plain")
    assert "warning" not in plain.stdout and "rest:" not in plain.stdout


def test_split_of_rows_that_are_all_unusable_writes_nothing(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "a", "response": ""}\n' * 4)
    before = listing(tmp_path)
    result = tunesmith("data", "split", path, "--out", tmp_path / "out", check=False)
    refused(result, 1, f"{path}: no row can be split: all 4 rows were removed: empty_field 4 (line 1: "
                       "empty_field: response)")
    assert listing(tmp_path) == before


def test_split_that_leaves_no_training_row_says_why_and_writes_nothing(tmp_path):
    text = "Write a short product description for a stainless steel water bottle that keeps drinks cold."
    rows = [{"instruction": text, "response": "It keeps water ice-cold all day and fits every cup holder."},
            {"instruction": text.replace("short", "brief"),
             "response": "It keeps water ice-cold all day and fits every cup holder."}]
    data = write_rows(tmp_path / "two.jsonl", rows)
    before = listing(tmp_path)
    result = tunesmith("data", "split", data, "--out", tmp_path / "out", check=False)
    refused(result, 1, f"{data}: no training row is left: of 2 rows, 1 were held out for validation and the other 1 "
                       "are near-duplicates of them (leaks_into_val 1, similarity >= 0.7)", "--near-dup-threshold")
    assert listing(tmp_path) == before


def test_preview_of_a_file_without_a_usable_row_says_why(tmp_path, tiny_model_dir):
    """Regression: it printed the legend, nothing else, and exit 0."""
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "a", "response": ""}\n' * 2)
    result = tunesmith("data", "preview", path, "--model", tiny_model_dir, check=False)
    refused(result, 1, f"{path}: no row can be previewed: all 2 rows were removed: empty_field 2")


# ---------------------------------------------------------------- 3, 4. train's data stage


def train(tiny_model_dir, tmp_path, *args):
    return tunesmith("train", "--model", tiny_model_dir, "--out", tmp_path / "run", "--no-progress",
                     "--set", "train.max_steps=1", "--set", "train.max_seq_len=128", *args, check=False)


@pytest.mark.parametrize("same", ["path", "link"])
def test_train_refuses_a_validation_file_that_is_the_training_file(tmp_path, tiny_model_dir, same):
    """Regression: --val equal to --data said "no training rows left after the split; see
    removed.jsonl", a file never written, without the cause, and report.json said trainable."""
    data = write_rows(tmp_path / "d.jsonl", order_rows(20))
    val = data if same == "path" else tmp_path / "v.jsonl"
    if same == "link":
        val.symlink_to(data)
    result = train(tiny_model_dir, tmp_path, "--data", data, "--val", val)
    refused(result, 2, f"data.val (--val) {val} is the same file as data.train (--data) {data}: every validation row "
                       "would also be a training row", "leave data.val out to hold out 0.1 of the training rows")
    assert not (tmp_path / "run" / "data").exists()


def test_train_whose_rows_all_leak_into_val_writes_why_before_it_stops(tmp_path, tiny_model_dir):
    data = write_rows(tmp_path / "d.jsonl", order_rows(20))
    val = write_rows(tmp_path / "v.jsonl", order_rows(20))  # a copy: every row is a near-duplicate
    result = train(tiny_model_dir, tmp_path, "--data", data, "--val", val)
    run_data = tmp_path / "run" / "data"
    reason = (f"no training row is left: all 20 kept rows are near-duplicates (similarity >= 0.7) of the 20 rows used "
              f"from the validation file {val} (leaks_into_val 20)")
    refused(result, 1, f"{data}: cannot train on this data: {reason}",
            f"Reasons per line: {run_data / 'removed.jsonl'}; report: {run_data / 'report.html'}")
    removed = [json.loads(line) for line in (run_data / "removed.jsonl").read_text().splitlines()]
    assert [r["line"] for r in removed] == list(range(1, 21))
    assert all(r["file"] == str(data) and r["reasons"][0].startswith("leaks_into_val: ") for r in removed)
    report = json.loads((run_data / "report.json").read_text())
    assert report["trainable"] is False and report["blocking"][0].startswith(reason)
    assert not (run_data / "train.jsonl").exists()


def test_train_on_all_invalid_rows_states_the_reasons_and_writes_them(tmp_path, tiny_model_dir):
    """Regression: the message said "see the reasons above" with none printed, and no
    removed.jsonl was written for the blocked run."""
    data = tmp_path / "bad.jsonl"
    data.write_text('{"instruction": "a", "response": ""}\n' * 5 + '{"instruction": "a"}\n')
    result = train(tiny_model_dir, tmp_path, "--data", data)
    run_data = tmp_path / "run" / "data"
    refused(result, 1, f"{data}: cannot train on this data: no row is left to train on: all 6 rows were removed: "
                       "empty_field 5 (line 1: empty_field: response), unknown_format 1 (line 6: unknown_format: keys "
                       "instruction;", f"Reasons per line: {run_data / 'removed.jsonl'}")
    assert "see the reasons above" not in result.stderr
    removed = [json.loads(line) for line in (run_data / "removed.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reasons"][0].split(":")[0]) for r in removed] == [
        (1, "empty_field"), (2, "empty_field"), (3, "empty_field"), (4, "empty_field"), (5, "empty_field"),
        (6, "unknown_format")]
    assert json.loads((run_data / "report.json").read_text())["trainable"] is False


def test_train_with_an_unusable_validation_file_stops_and_says_so(tmp_path, tiny_model_dir):
    """A validation file none of whose rows can be used once meant a run without eval loss."""
    data = write_rows(tmp_path / "d.jsonl", order_rows(12))
    val = tmp_path / "v.jsonl"
    val.write_text('{"instruction": "a", "response": ""}\n' * 2)
    result = train(tiny_model_dir, tmp_path, "--data", data, "--val", val)
    refused(result, 1, f"{val}: cannot use this validation file: no row is left to train on: all 2 rows were removed: "
                       "empty_field 2")
    report = json.loads((tmp_path / "run" / "data" / "report.json").read_text())
    assert report["trainable"] is False and report["blocking"][0].startswith(f"the validation file {val} cannot be used")
    assert len((tmp_path / "run" / "data" / "removed.jsonl").read_text().splitlines()) == 2


# ---------------------------------------------------------------- 8. a chat template that refuses a row


def test_rows_a_chat_template_refuses_are_reasons_not_bugs(tmp_path, tiny_model_dir):
    """Regression: a system turn under a template that raises on one (as Gemma's does) ended
    in "this is a bug" from `data check --model` and `data preview`."""
    import shutil

    model = tmp_path / "no-system-model"
    shutil.copytree(tiny_model_dir, model)
    template = model / "chat_template.jinja"
    template.write_text("{% for m in messages %}{% if m['role'] == 'system' %}"
                        "{{ raise_exception('System role not supported') }}{% endif %}{% endfor %}" + template.read_text())
    rows = order_rows(4)
    rows[1] = {**rows[1], "system": "Answer in JSON."}
    data = write_rows(tmp_path / "d.jsonl", rows)
    check = tunesmith("data", "check", data, "--model", model, "--json", check=False)
    assert check.returncode == 0 and "Traceback" not in check.stderr
    assert json.loads(check.stdout)["reasons"] == {"template_error": 1}
    preview = tunesmith("data", "preview", data, "--model", model, check=False)
    refused(preview, 1, f"the chat template of {model} refuses 1 example(s) (reasons above): training removes them "
                        "as template_error")
    printed = " ".join(preview.stdout.split())
    assert "line 2: not shown" in printed and "System role not supported" in printed
    assert printed.count("EOS trained") == 3
