"""The data shipped with pdsim: cluster configs, model configs, profiles, example workloads and the docs.

In the repository they are the top-level `configs/`, `profiles/`, `workloads/` and `docs/` folders; an
installed wheel carries the same folders as `pdsim/_bundled/...` (pyproject.toml maps them), so
they are found from any directory, installed or not. A relative input path that does not exist
where the command runs is looked up in them too, so the README's commands
(`--cluster-config configs/cluster/single_node_pd_instance.json`) work from anywhere, and a bare
name (`--cluster-config single_node_pd_instance`) picks a bundled file.
"""

from __future__ import annotations

from pathlib import Path

import click

from pdsim.errors import PdsimError

PACKAGE_DIR = Path(__file__).resolve().parent
# Where each kind of bundled input lives, and the suffix a bare name gets.
KINDS = {"cluster config": ("configs/cluster", ".json"), "dataset": ("workloads", ".jsonl")}


def data_root() -> Path:
    """The folder holding configs/, profiles/ and workloads/: inside an installed wheel, else the
    source tree (a checkout, or an editable install)."""
    inside = PACKAGE_DIR / "_bundled"
    return inside if inside.is_dir() else PACKAGE_DIR.parent


def bundled_path(*parts: str) -> Path:
    return data_root().joinpath(*parts)


def bundled_names(kind: str) -> list[str]:
    folder, suffix = KINDS[kind]
    return sorted(p.stem for p in bundled_path(folder).glob(f"*{suffix}"))


def resolve_input(path: Path, kind: str) -> Path | None:
    """`path` itself when it exists; else the bundled file it names; None when neither exists."""
    if path.exists():
        return path
    if path.is_absolute():
        return None
    folder, suffix = KINDS[kind]
    for candidate in (bundled_path(*path.parts), bundled_path(folder, *path.parts),
                      bundled_path(folder, path.name + suffix) if len(path.parts) == 1 else None):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


class InputFolder(click.ParamType):
    """A click type for a profile folder (or the profiles root) that may be pdsim's bundled one, named as from the
    repository (`profiles/H200/...`, `profiles`): that folder where the command runs, else the bundled one, which is
    said. Any other path is passed on as given, for the command to say what it lacks."""

    name = "folder"

    def convert(self, value: str | Path, param: click.Parameter | None, ctx: click.Context | None) -> Path:
        path = Path(value)
        parts = path.parts
        if path.exists() or path.is_absolute() or not parts or parts[0] != "profiles" or ".." in parts:
            return path
        bundled = bundled_path(*parts)
        if not bundled.is_dir():
            return path
        option = param.opts[0] if param is not None else "profile"
        what = "profiles" if len(parts) == 1 else "profile"
        click.echo(f"note: {option} {path}: no such folder here; the bundled {what} {bundled} is used", err=True)
        return bundled


class InputFile(click.ParamType):
    """A click type for an input file that may be one of pdsim's bundled files (see above)."""

    name = "path"

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def convert(self, value: str | Path, param: click.Parameter | None, ctx: click.Context | None) -> Path:
        path = Path(value)
        found = resolve_input(path, self.kind)
        if found is None:
            names = ", ".join(bundled_names(self.kind)) or "(none)"
            option = param.opts[0] if param is not None else self.kind
            raise PdsimError(f"{option} {path}: no such file, here or among the bundled {self.kind}s ({names})")
        if self.kind == "dataset" and not (found.is_file() or found.is_dir()):
            # A trace's first bytes tell its format, and are gone from a pipe by the time its requests
            # are read (a FIFO blocks); a sweep hashes it first too. A config is read once by run.
            option = param.opts[0] if param is not None else self.kind
            raise PdsimError(f"{option} {path}: not a regular file (a pipe, FIFO or device); pdsim reads an input "
                             "more than once, so save it to a file first")
        return found
