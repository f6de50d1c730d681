"""Files in and out: paths are named precisely before any work, outputs take the umask,
and an escaped OSError reads as one line."""

import errno
import os

import pytest

from tunesmith.errors import UsageError
from tunesmith.io import (check_output_dir, describe_os_error, require_file, write_dir_atomic, write_json_atomic,
                          write_text_atomic)


def test_require_file_says_what_the_path_is(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    (tmp_path / "f").write_text("x")
    os.mkfifo(tmp_path / "fifo")
    cases = {
        "missing": "data file not found",
        "d": "is a folder, expected a data file",
        "loop": "data file is a symbolic link loop",
        "dangling": f"is a link to {tmp_path / 'gone'}, which does not exist",
        "fifo": "is not a regular file",
        "f/below": "not found (a part of the path is a file, not a folder)",
    }
    for name, says in cases.items():
        with pytest.raises(UsageError) as info:
            require_file(tmp_path / name, "data file")
        assert says in str(info.value) and str(tmp_path / name) in str(info.value)
    assert require_file(tmp_path / "f") == tmp_path / "f"


def test_check_output_dir_leaves_nothing_behind(tmp_path):
    target = tmp_path / "a" / "b" / "c"
    assert check_output_dir(target) == target
    assert list(tmp_path.iterdir()) == []  # the folders made to test it are gone again
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="--out .*file: is a file, not a folder"):
        check_output_dir(tmp_path / "file")
    with pytest.raises(UsageError, match="cannot write there \\(a part of the path is a file\\)"):
        check_output_dir(tmp_path / "file" / "below", "--out")
    with pytest.raises(UsageError, match="--dir /proc/x: cannot write there"):
        check_output_dir("/proc/x", "--dir")


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                        (0o002, 0o664, 0o775)])
def test_outputs_take_the_umask_and_secrets_stay_private(tmp_path, umask, file_mode, dir_mode):
    import tunesmith.io as io

    old = os.umask(umask)
    io._umask.cache_clear()
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
        write_json_atomic(tmp_path / "secret.json", {"token": "t"}, private=True)

        def fill(folder):
            (folder / "inner").mkdir()
            fd = os.open(folder / "inner" / "w.bin", os.O_CREAT | os.O_WRONLY, 0o600)  # as safetensors does
            os.close(fd)

        write_dir_atomic(tmp_path / "out", fill)
    finally:
        os.umask(old)
        io._umask.cache_clear()
    mode = lambda p: p.stat().st_mode & 0o777  # noqa: E731
    assert mode(tmp_path / "a.txt") == file_mode
    assert mode(tmp_path / "secret.json") == 0o600
    assert mode(tmp_path / "out") == dir_mode and mode(tmp_path / "out" / "inner") == dir_mode
    assert mode(tmp_path / "out" / "inner" / "w.bin") == file_mode


def test_an_escaped_os_error_is_one_line_naming_the_file():
    for code, says in ((errno.ENOENT, "no such file or folder"), (errno.ENOSPC, "no space left on the device"),
                       (errno.EACCES, "permission denied"), (errno.EIO, "input/output error")):
        text = str(describe_os_error(OSError(code, os.strerror(code), "/data/x.jsonl")))
        assert text.startswith(f"/data/x.jsonl: {says}") and "\n" not in text


def test_an_atomic_write_onto_a_folder_names_the_folder_not_its_temp_file(tmp_path):
    """Regression: `review --results --csv FOLDER` said "/.../.FOLDER.x1y2.tmp: is a folder"."""
    import errno

    from tunesmith.io import atomic_writer

    (tmp_path / "out").mkdir()
    with pytest.raises(OSError) as caught:
        with atomic_writer(tmp_path / "out") as f:
            f.write("x")
    assert caught.value.errno == errno.EISDIR and caught.value.filename == str(tmp_path / "out")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp file left behind
