"""`pip install .` ships the bundled configs, models, profiles and workloads, and the README's main
job then runs from any directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA_DIRS = ("configs", "profiles", "workloads", "docs")
SKIP = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "outputs", "__pycache__", ".pytest_cache",
                              ".ruff_cache", ".venv", "tests", "benchmarks")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the source, as from a fresh clone (no build/ left over)."""
    pytest.importorskip("setuptools")
    if _old_setuptools():
        pytest.importorskip("wheel")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=SKIP)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (path,) = (tmp / "dist").glob("pdsim-*.whl")
    return path


def _old_setuptools() -> bool:
    import setuptools

    return int(setuptools.__version__.split(".")[0]) < 70  # bdist_wheel moved into setuptools in 70.1


def _shipped_sources() -> list[Path]:
    """The data files and modules a checkout has (committed ones, when git can say)."""
    try:
        listed = subprocess.run(["git", "ls-files", *DATA_DIRS, "pdsim"], cwd=REPO, capture_output=True, text=True,
                                check=True, timeout=60).stdout.split()
        return [Path(p) for p in listed if (REPO / p).is_file()]
    except (OSError, subprocess.CalledProcessError):
        return [p.relative_to(REPO) for d in (*DATA_DIRS, "pdsim") for p in (REPO / d).rglob("*") if p.is_file()
                and "__pycache__" not in p.parts]


def test_wheel_carries_every_module_and_bundled_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = []
    for rel in _shipped_sources():
        if rel.parts[0] == "pdsim":
            if rel.suffix == ".py" and rel.as_posix() not in names:
                missing.append(rel.as_posix())
        elif f"pdsim/_bundled/{rel.as_posix()}" not in names:
            missing.append(rel.as_posix())
    assert missing == [], f"not in the wheel (pyproject.toml packages / package-data): {missing}"
    assert "pdsim/_bundled/configs/models/meta-llama/Llama-3.1-8B.json" in names


def test_installed_wheel_runs_the_main_job_from_another_directory(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # what pip puts in site-packages
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    cmd = [sys.executable, "-m", "pdsim", "--cluster-config", "configs/cluster/single_node_pd_instance.json",
           "--dataset", "workloads/example_trace.jsonl", "--output", "outputs/pd_split_run.csv", "--quiet"]
    r = subprocess.run(cmd, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    summary = json.loads((elsewhere / "outputs/pd_split_run_summary.json").read_text())
    assert summary["finished"] == 200
    # Model, config, trace and profile all came from the installed package, not from this checkout.
    assert summary["cluster_config"].startswith(str(site)) and summary["dataset"].startswith(str(site))
    assert all(i["profile"].startswith(str(site)) for i in summary["instances"])
    r = subprocess.run([sys.executable, "-m", "pdsim", "--cluster-config", "single_node_pd_instance", "--dataset",
                        "example_trace", "--num-requests", "10", "--output", "b.csv", "--quiet"],
                       cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "10 requests" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "-m", "pdsim", "--cluster-config", "nope", "--dataset", "example_trace"],
                       cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "single_node_pd_instance" in r.stderr  # lists the bundled names
    # Commands that look profiles up without a --profiles-root (validate, calibrate) find the bundled ones too:
    # the installed root was site-packages/profiles, which is not there, so they fell back on spec estimates.
    r = subprocess.run([sys.executable, "-c", "from pdsim.perf.profile_format import PROFILES_ROOT as p; "
                        "print(p, p.is_dir())"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    root, is_dir = r.stdout.split()
    assert root.startswith(str(site)) and is_dir == "True", r.stdout + r.stderr
    # A profile named as from the repository, as the docs name them, is the bundled one.
    r = subprocess.run([sys.executable, "-m", "pdsim", "--cluster-config", "single_node_pd_h200", "--dataset",
                        "example_trace", "--num-requests", "10", "--output", "c.csv", "--quiet", "--profile-dir",
                        "profiles/H200/meta-llama/Llama-3.1-8B/bfloat16/tp1"],
                       cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    profiles = {i["profile"] for i in json.loads((elsewhere / "c_summary.json").read_text())["instances"]}
    assert len(profiles) == 1 and profiles.pop().startswith(str(site / "pdsim" / "_bundled" / "profiles" / "H200"))
    # The docs that notes and errors cite (docs/memory.md) are in the package, printed by `pdsim docs`.
    r = subprocess.run([sys.executable, "-m", "pdsim", "docs", "docs/memory.md"], cwd=elsewhere, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout == (REPO / "docs" / "memory.md").read_text(), r.stderr
    measured = REPO.parent / "shared/data/calibration/llmservingsim-rtxpro6000-llama31-8b/vllm_run"
    if measured.is_dir():
        r = subprocess.run([sys.executable, "-m", "pdsim", "validate", "--measured", str(measured),
                            "--cluster-config", "single_node_pd_h200", "--output", "v.csv"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        assert "estimated from hardware specs" not in r.stdout + r.stderr


def test_architecture_doc_names_every_module():
    """docs/architecture.md says where each part lives: a module it never names is a part a reader
    cannot find from it."""
    doc = (REPO / "docs" / "architecture.md").read_text()
    unnamed = sorted(str(p.relative_to(REPO)) for p in (REPO / "pdsim").rglob("*.py")
                     if p.name != "__init__.py" and p.name not in doc)
    assert not unnamed, f"docs/architecture.md does not name {unnamed}"


def test_a_profile_folder_named_as_in_the_repository_is_the_bundled_one_and_no_other(tmp_path, monkeypatch, capsys):
    # Only a path under profiles/ falls back on the bundled data, and says so; a repository folder such as tests/,
    # or a path climbing out with "..", had been taken from the package's tree.
    from pdsim.bundled import InputFolder, bundled_path

    monkeypatch.chdir(tmp_path)
    folder = InputFolder()
    for given in ("tests", "../profiles/H200", "profiles/NoSuchGPU"):
        assert folder.convert(given, None, None) == Path(given)
    assert capsys.readouterr().err == ""
    name = "profiles/H200/meta-llama/Llama-3.1-8B/bfloat16/tp1"
    assert folder.convert(name, None, None) == bundled_path(*name.split("/"))
    assert "no such folder here; the bundled profile" in capsys.readouterr().err
    (tmp_path / name).mkdir(parents=True)  # the user's own folder of that name wins
    assert folder.convert(name, None, None) == Path(name)
    # The profiles root itself, named so (`--profiles-root profiles` as the docs write it from a checkout).
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert folder.convert("profiles", None, None) == bundled_path("profiles")
    assert "no such folder here; the bundled profiles " in capsys.readouterr().err


def test_every_doc_the_code_cites_exists():
    """A note or error that sends the user to docs/NAME.md (which `pdsim docs NAME` prints) names a real doc."""
    import re

    cited = {m for p in (REPO / "pdsim").rglob("*.py") for m in re.findall(r"docs/([a-z_]+)\.md", p.read_text())}
    assert cited and not {c for c in cited if not (REPO / "docs" / f"{c}.md").is_file()}


def test_docs_command_prints_lists_and_refuses(capsys):
    from pdsim.cli import main

    main(["docs", "moe"])
    assert capsys.readouterr().out == (REPO / "docs" / "moe.md").read_text()
    main(["docs"])
    assert "pd_realism" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["docs", "memry"])
    assert exc.value.code == 2 and "(did you mean 'memory'?)" in capsys.readouterr().err
    main(["docs", "MEMORY"])  # any case
    assert capsys.readouterr().out == (REPO / "docs" / "memory.md").read_text()
