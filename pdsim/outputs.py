"""Writing output files so that none is ever lost or left half-written.

Every file is first written to a temporary file in its own folder and then moved over the target
with `os.replace`, which is atomic on one file system: a reader (or a crash) sees the old file or
the new one, never a file cut mid-row. A command's files are staged together and only moved into
place once all of them are written (`OutputSet`), so a failure leaves the earlier run's files as
they were and no success-claiming summary beside a missing CSV. Companion files of an earlier run
with the same stem that this run does not write (a `_links.csv` of a P/D run, plots) are removed
then, so a folder never mixes two runs. A folder written as a whole (a profile) is filled beside its
target and swapped in (`staged_folder`), so no file of the folder it replaces is left in it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType

from pdsim.errors import PdsimError


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yields a temporary path beside `path`; when the block ends normally it replaces `path`,
    when it raises the temporary file is removed and `path` is untouched."""
    tmp = _temp_beside(path)
    try:
        with _naming(path):
            yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """A write the file system refuses (a full disk) says which output it was writing: a write on an open
    file raises its error without a file name."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno is not None:
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def finite_json(value: object) -> object:
    """`value` with every non-finite float (no figure: e.g. TPOT of no finished request) as null, so
    the file is valid JSON (json.dumps writes NaN/Infinity, which JSON has not)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def json_text(value: object, indent: int | None = 2) -> str:
    """`value` as strict JSON text ending in a newline: what every JSON file or printout of pdsim is.
    A figure that does not exist (NaN, infinite) is null."""
    return json.dumps(finite_json(value), indent=indent, allow_nan=False) + "\n"


def write_json_atomic(path: Path, value: object) -> None:
    write_text_atomic(path, json_text(value))


def refuse_special_file(path: Path, option: str = "output") -> None:
    """An output is replaced by renaming a new file over it: never do that to a device, FIFO or socket
    (`--output /dev/null` would swap the device for a plain file)."""
    if path.exists() and not path.is_file() and not path.is_dir():
        raise PdsimError(f"{option} {path}: not a regular file (a device, FIFO or socket); give the name of a file")


def _temp_prefix(name: str) -> str:
    """The hidden name a temporary file or folder beside `name` starts with: the name cut to leave room for
    mkstemp's 8 random characters and suffix within the file system's 255 bytes a name may have."""
    return f".{name.encode()[:200].decode(errors='ignore')}."


def _temp_beside(path: Path) -> Path:
    refuse_special_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)  # checked creatable by check_output_dir beforehand
    fd, name = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    os.close(fd)
    # mkstemp makes the file private (0600); an output gets the permissions open() would give it.
    os.chmod(name, 0o666 & ~_umask())
    return Path(name)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def staged_folder(target: Path) -> Iterator[Path]:
    """Yields a new empty folder beside `target`; when the block ends normally it takes `target`'s
    place (the old folder, if any, is removed), when it raises it is removed and `target` untouched."""
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=_temp_prefix(target.name), suffix=".tmp", dir=target.parent))
    try:
        os.chmod(stage, 0o777 & ~_umask())  # mkdtemp's folder is private; an output folder is not
        yield stage
        _put_in_place(stage, target)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _put_in_place(new: Path, target: Path) -> None:
    if not target.exists():
        os.rename(new, target)
        return
    # The old folder is moved aside for as long as two renames take, and put back if the new one
    # cannot go in.
    aside = Path(tempfile.mkdtemp(prefix=_temp_prefix(target.name), suffix=".old", dir=target.parent))
    os.rename(target, aside)  # over the empty folder mkdtemp made
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(aside, target)
        raise
    shutil.rmtree(aside, ignore_errors=True)


class OutputSet:
    """The files of one command, staged as temporary files and committed together.

    `stage(path, write)` calls `write(tmp)` to fill a temporary file beside `path`; `commit()`
    moves every staged file into place and removes `stale` companions not written this time;
    `discard()` (or leaving a `with` block by an exception) removes the temporary files.
    """

    def __init__(self, stale: Iterable[Path] = ()) -> None:
        self.staged: list[tuple[Path, Path]] = []
        self.adopted: list[tuple[Path, Path]] = []
        self.stale = list(stale)
        self.written: list[Path] = []

    def __enter__(self) -> OutputSet:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None:
            self.discard()

    def stage(self, path: Path, write: Callable[[Path], object]) -> Path:
        with _naming(path):
            tmp = _temp_beside(path)
            self.staged.append((tmp, path))
            write(tmp)
        return path

    def adopt(self, written: Path, path: Path) -> Path:
        """A file already written elsewhere (a streamed partial CSV) to move to `path` on commit;
        kept where it is, not removed, when the set is discarded."""
        self.adopted.append((written, path))
        return path

    def commit(self) -> list[Path]:
        for tmp, path in [*self.adopted, *self.staged]:
            os.replace(tmp, path)
            self.written.append(path)
        self.staged, self.adopted = [], []
        for path in self.stale:
            if path not in self.written and path.is_file():
                path.unlink()
        return self.written

    def discard(self) -> None:
        for tmp, _ in self.staged:
            tmp.unlink(missing_ok=True)
        self.staged = []


def check_output_file(output: Path, option: str, inputs: Iterable[Path | None] = (),
                      companions: Iterable[Path] = ()) -> None:
    """Refuse (PdsimError, exit 2) an output file that could not be written whole, or that would
    overwrite an input: `output` and its `companions` are compared with every input file by identity
    on disk (`samefile`), so a different spelling of the same file is caught too. An input may be a
    folder (a profile, a run folder): then every file in it, at any depth, is an input, so an output
    anywhere inside it (symlinks resolved) is refused."""
    if not output.name or output.is_dir():
        raise PdsimError(f"{option} {str(output)!r}: is a directory; give the name of a file (in it or elsewhere)")
    check_output_dir(output.parent, option, output)
    existing_inputs = [Path(p) for p in inputs if p is not None and Path(p).exists()]
    for target in [output, *companions]:
        refuse_special_file(target, option)
        which = "" if target == output else f" (its companion {target.name})"
        if target.is_file() and (folder := _bundled_folder_of(target)) is not None:
            # Every run may read these by name; a new file beside them (a converted trace) is fine.
            raise PdsimError(f"{option} {output}{which}: would overwrite {target.name}, one of pdsim's bundled "
                             f"inputs in {folder}; choose another name")
        for src in existing_inputs:
            if src.is_dir():
                if _inside(target, src):
                    raise PdsimError(f"{option} {output}{which}: would write into the input folder {src}; "
                                     "choose a name outside it")
            elif _same_file(target, src):
                raise PdsimError(f"{option} {output}{which}: would overwrite the input {src}; choose another name")
        if target != output and target.is_dir():  # else found only once the output itself was written
            raise PdsimError(f"{option} {output}{which}: {target} is a folder; move it or choose another name")


def _bundled_folder_of(path: Path) -> Path | None:
    """The bundled data folder (configs, profiles, workloads: pdsim/bundled.py) `path` lies in, or None."""
    from pdsim.bundled import bundled_path

    return next((folder for folder in map(bundled_path, ("configs", "profiles", "workloads"))
                 if folder.is_dir() and _inside(path, folder)), None)


def check_output_dir(folder: Path, option: str, shown: Path | None = None) -> None:
    """The folder of an output: an error if it (or the nearest part of it that exists) is a file or
    not writable. Nothing is created here: a run refused later on its input leaves no trace; the
    folder is made when the first output is written."""
    shown = shown if shown is not None else folder
    existing = next((p for p in [folder, *folder.parents] if p.exists()), Path("."))
    if not existing.is_dir():
        raise PdsimError(f"{option} {shown}: {existing} is a file, not a folder")
    making = f" (to make {folder} in it)" if existing != folder else ""
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PdsimError(f"{option} {shown}: the folder {existing} is not writable{making}")
    try:  # os.access passes root everywhere, and knows nothing of read-only or pseudo file systems
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise PdsimError(f"{option} {shown}: cannot write in the folder {existing}{making}: "
                         f"{e.strerror or e}") from None


def _inside(path: Path, folder: Path) -> bool:
    """Whether `path` (which need not exist) is `folder` or lies in it at any depth. The path's
    symlinks are resolved first, and each folder above it is compared with `folder` by identity
    on disk, so `link/x.csv`, `a/../P/x.csv` or a bind mount of P are all caught."""
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):  # a symlink loop: no folder of ours lies behind it
        return False
    return any(_same_file(p, folder) for p in [resolved, *resolved.parents])


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and os.path.samefile(a, b)
    except OSError:
        return False
