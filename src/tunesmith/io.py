"""Files in and out: atomic writers, and the checks that name a bad path before any work.

Writes that matter are atomic: a reader sees the old file or the new one, never half.
Outputs take the user's umask like any file a program creates; only secrets are 0600.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TextIO

from tunesmith.errors import TunesmithError, UsageError


# ---------------------------------------------------------------- modes

@lru_cache(maxsize=1)
def _umask() -> int:
    # os.umask can only be read by setting it; read once, put back at once.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """What open() would give a new file: 0666 less the umask (mkstemp gives 0600)."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    return 0o777 & ~_umask()


def _normalise_modes(folder: Path) -> None:
    """Libraries that write through temp files (safetensors, tempfile) leave them 0600;
    an output folder's files should read like any other output."""
    folder.chmod(dir_mode())
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), dir_mode())
        for name in files:
            os.chmod(os.path.join(root, name), file_mode())


# ---------------------------------------------------------------- atomic writers

@contextmanager
def atomic_writer(path: Path, *, private: bool = False) -> Iterator[TextIO]:
    """A text file that appears at `path` only when the block completes (temp file in the
    same folder, fsync, rename); on an error the old file, if any, is untouched.
    `private`: 0600 whatever the umask (secrets only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600 if private else file_mode())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        try:
            os.replace(tmp, path)
        except OSError as e:  # say what the user named (a folder in the way), not the temp file
            raise OSError(e.errno, e.strerror, str(path)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def block_yaml(data: dict[str, Any]) -> str:
    """YAML as people write it by hand: keys in the given order, multi-line strings (a
    script's setup and run) as literal blocks, no line folding."""
    import yaml

    class BlockStyle(yaml.SafeDumper):
        pass

    BlockStyle.add_representer(str, lambda dumper, text: dumper.represent_scalar(
        "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))
    return yaml.dump(data, Dumper=BlockStyle, sort_keys=False, default_flow_style=False, width=10_000)


def write_text_atomic(path: Path, text: str, *, private: bool = False) -> None:
    with atomic_writer(path, private=private) as f:
        f.write(text)


def write_json_atomic(path: Path, obj: Any, *, private: bool = False) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n", private=private)


def write_jsonl_atomic(path: Path, rows: Iterable[dict]) -> None:
    """Streams row by row: a 100k-row file never exists as one string in memory."""
    with atomic_writer(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def replace_dir_atomic(tmp_dir: Path, final_dir: Path) -> None:
    """Move a fully written temp folder into place. The old folder, if any, is removed only
    after the new one is complete, so a crash leaves one complete copy behind."""
    if final_dir.exists():
        old = final_dir.with_name(f".{final_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final_dir, old)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp_dir, final_dir)


def fsync_tree(folder: Path) -> None:
    """Flush every file under `folder`, then the folders themselves, to the disk: a rename
    that follows publishes data that is really there after a power cut."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(root))


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new entry in `folder` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_dir_atomic(final_dir: Path, fill: Callable[[Path], None]) -> Path:
    """Let `fill` write into a temp folder beside `final_dir`, then move it into place:
    the folder is complete or absent, never half-written (a crash leaves only a temp dir)."""
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final_dir.parent, prefix=f".{final_dir.name}."))
    try:
        fill(tmp)
        _normalise_modes(tmp)
        replace_dir_atomic(tmp, final_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final_dir


# ---------------------------------------------------------------- checking paths first

def file_sha256(path: str | Path) -> str:
    """sha256 of a file, read 1 MiB at a time: a multi-GB weights file never sits in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_facts(path: Path) -> dict[str, Any]:
    """A file's size and sha256: what tells later that a copy of it is whole and the same."""
    return {"bytes": path.stat().st_size, "sha256": file_sha256(path)}


def require_file(path: str | Path, what: str = "file") -> Path:
    """`path` as a readable regular file, or one UsageError naming it and what is wrong:
    absent, a folder, a symbolic-link loop, a dangling link, not readable."""
    path = Path(path)
    try:
        info = path.stat()
    except OSError as e:
        raise UsageError(f"{path}: {what} {_stat_problem(path, e)}") from None
    if stat.S_ISDIR(info.st_mode):
        raise UsageError(f"{path}: is a folder, expected a {what} (give the file inside it)")
    if not stat.S_ISREG(info.st_mode):
        raise UsageError(f"{path}: is not a regular file (a device, pipe or socket); expected a {what}")
    if not os.access(path, os.R_OK):
        raise UsageError(f"{path}: {what} is not readable (permission denied): check its owner and mode")
    return path


def _stat_problem(path: Path, e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return "is a symbolic link loop: point the link at a real file"
    if e.errno == errno.ENOENT and path.is_symlink():
        return f"is a link to {os.readlink(path)}, which does not exist"
    if e.errno == errno.ENOENT:
        return "not found"
    if e.errno == errno.EACCES:
        return "cannot be reached (permission denied on a folder on its way)"
    if e.errno == errno.ENOTDIR:
        return "not found (a part of the path is a file, not a folder)"
    if e.errno == errno.ENAMETOOLONG:
        return "has a name too long for the file system"
    return f"cannot be read ({e.strerror})"


def read_utf8(path: str | Path, what: str, fix: str, *, column: bool = False) -> str:
    """A text file as a string (a UTF-8 BOM is fine), after `require_file`; bytes that are
    not UTF-8 are one UsageError naming FILE:LINE (and the column, where the file's other
    messages give one), the byte, and `fix`."""
    path = require_file(path, what)
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        line_start = data.rfind(b"\n", 0, e.start) + 1
        at = f":{e.start - line_start + 1}" if column else ""
        raise UsageError(f"{path}:{line}{at}: not UTF-8 text (byte 0x{data[e.start]:02x}); {fix}") from None


def read_json(path: str | Path, what: str, fix: str) -> Any:
    """A JSON file's value, or one UsageError naming FILE:LINE:COLUMN and `fix`."""
    text = read_utf8(path, what, fix)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg}); {fix}") from None


def read_jsonl_objects(path: str | Path, what: str, fix: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSON Lines file, after `read_utf8`;
    a line that is not JSON, or not a JSON object, is one UsageError naming FILE:LINE and `fix`."""
    rows = []
    for number, line in enumerate(read_utf8(path, what, fix).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(f"{path}:{number}: not valid JSON ({e.msg}); {fix}") from None
        if not isinstance(value, dict):
            raise UsageError(f"{path}:{number}: expected a JSON object, found {type(value).__name__}; {fix}")
        rows.append((number, value))
    return rows


def check_output_dir(path: str | Path, flag: str = "--out") -> Path:
    """Make sure an output folder can be created (or written, when it exists) before any
    work starts, without leaving anything behind: the folders it had to create for the
    test are removed again. One UsageError naming the flag otherwise."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path}: is a file, not a folder: give a folder path (it is created if absent)")
    created = _missing_parents(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".tunesmith-write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot write there ({_write_problem(e)}): choose another folder") from None
    finally:
        for folder in created:
            try:
                folder.rmdir()
            except OSError:
                break
    return path


def _missing_parents(path: Path) -> list[Path]:
    """The folders mkdir -p would create, deepest first."""
    missing = []
    for candidate in [path, *path.parents]:
        if candidate.exists():
            break
        missing.append(candidate)
    return missing


def _write_problem(e: OSError) -> str:
    reasons = {
        errno.EACCES: "permission denied", errno.EPERM: "not permitted", errno.EROFS: "read-only file system",
        errno.ENOSPC: "no space left on the device", errno.ENOTDIR: "a part of the path is a file",
        errno.ENOENT: "the path cannot be created there", errno.EEXIST: "a file is in the way",
        errno.ENAMETOOLONG: "name too long",
    }
    return reasons.get(e.errno, e.strerror or str(e))


def describe_os_error(e: OSError) -> TunesmithError:
    """An OSError that escaped a command (disk full mid-write, a file removed under us) as
    one line naming the file: the top-level guard uses this so no user sees a traceback."""
    reasons = {
        errno.ENOENT: "no such file or folder (moved or deleted while tunesmith ran?)",
        errno.EACCES: "permission denied", errno.EPERM: "not permitted", errno.EROFS: "read-only file system",
        errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
        errno.EISDIR: "is a folder, not a file", errno.ENOTDIR: "a part of the path is a file, not a folder",
        errno.ENAMETOOLONG: "name too long", errno.EIO: "input/output error (a failing disk or network share?)",
    }
    reason = reasons.get(e.errno, e.strerror or str(e))
    return TunesmithError(f"{e.filename}: {reason}; check the path, its permissions and free space, then run "
                          f"the command again", exit_code=1)
