"""No output is written over or into an input, folders included, and a profile never replaces a
better one (an estimate over a measurement) nor leaves files of the profile it replaces."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from pdsim.cli import main
from pdsim.errors import PdsimError
from pdsim.outputs import check_output_file
from pdsim.perf.profile import ProfileMeta, read_profile, write_profile

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs/cluster/single_node_single_instance.json"
TRACE = REPO / "workloads/example_trace.jsonl"
MEASURED = REPO / "profiles/H200/meta-llama/Llama-3.1-8B/bfloat16/tp1"  # source: measured, with timings.csv
MODEL = "meta-llama/Llama-3.1-8B"
TP1 = Path("H200/meta-llama/Llama-3.1-8B/bfloat16/tp1")  # where `estimate --hardware H200` writes under --out


def cli(*args: str) -> int:
    """The CLI in-process; its exit code (0 when it returns)."""
    try:
        main(list(args))
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "internal error" not in err, err
    return err


# ------------------------------------------------------------ check_output_file with folder inputs


def test_an_output_inside_an_input_folder_at_any_depth_is_refused_naming_option_and_folder(tmp_path):
    folder = tmp_path / "prof"
    (folder / "tp1").mkdir(parents=True)
    (folder / "tp1" / "attention.csv").write_text("x\n")
    (tmp_path / "link").symlink_to(folder)
    for output in (folder / "tp1" / "attention.csv", folder / "new.csv", folder / "a" / "b" / "c.csv",
                   tmp_path / "link" / "tp1" / "x.csv", tmp_path / "other" / ".." / "prof" / "x.csv"):
        with pytest.raises(PdsimError) as e:
            check_output_file(output, "--output", [folder])
        assert str(e.value) == (f"--output {output}: would write into the input folder {folder}; "
                                "choose a name outside it")
    (tmp_path / "run_summary.json").mkdir()  # an input folder where a companion would be written
    with pytest.raises(PdsimError, match="its companion run_summary.json.*input folder"):
        check_output_file(tmp_path / "run.csv", "--output", [tmp_path / "run_summary.json"],
                          [tmp_path / "run_summary.json"])
    with pytest.raises(PdsimError, match="is a directory"):  # the folder itself
        check_output_file(folder, "--output", [folder])
    # beside the folder, or in a folder whose name only starts like it: fine
    check_output_file(tmp_path / "prof.csv", "--output", [folder])
    check_output_file(tmp_path / "prof2" / "x.csv", "--output", [folder])


def test_file_inputs_are_compared_as_before(tmp_path):
    src = tmp_path / "trace.jsonl"
    src.write_text("{}\n")
    (tmp_path / "sub").mkdir()
    with pytest.raises(PdsimError, match=f"would overwrite the input {src}; choose another name"):
        check_output_file(tmp_path / "sub" / ".." / "trace.jsonl", "--output", [src, None, tmp_path / "missing"])
    check_output_file(tmp_path / "trace.csv", "--output", [src])  # a sibling of an input file: fine


def test_a_folder_where_a_companion_goes_is_refused_before_anything_is_written(tmp_path, capsys):
    (tmp_path / "r_summary.json").mkdir()
    with pytest.raises(PdsimError, match=r"\(its companion r_summary.json\): .*r_summary.json is a folder"):
        check_output_file(tmp_path / "r.csv", "--output", [], [tmp_path / "r_summary.json"])
    assert cli("run", "--cluster-config", "single_node_pd_instance", "--dataset", str(TRACE), "--num-requests", "5",
               "--output", str(tmp_path / "r.csv")) == 2
    assert "r_summary.json is a folder" in capsys.readouterr().err and not (tmp_path / "r.csv").exists()


# ------------------------------------------------------------ run: every input, every output


@pytest.fixture
def profile_copy(tmp_path) -> Path:
    root = tmp_path / "profiles"
    shutil.copytree(MEASURED, root / TP1)
    return root


def test_run_refuses_an_output_inside_the_profile_dir(tmp_path, profile_copy, capsys):
    prof = profile_copy / TP1
    before = snapshot(profile_copy)
    for output in (prof / "attention_decode.csv", prof / "sub" / "r.csv"):
        assert cli("run", "--cluster-config", str(CONFIG), "--dataset", str(TRACE), "--profile-dir", str(prof),
                   "--output", str(output), "--quiet") == 2
        err = one_line_error(capsys)
        assert "--output" in err and f"input folder {prof}" in err
    # a companion (here the timeline) lands in the folder too: refused before anything is written
    assert cli("run", "--cluster-config", str(CONFIG), "--dataset", str(TRACE), "--profile-dir", str(prof),
               "--output", str(prof / "dense.csv"), "--quiet") == 2
    one_line_error(capsys)
    assert snapshot(profile_copy) == before


def test_run_refuses_an_output_inside_a_profile_dir_the_config_names(tmp_path, profile_copy, capsys):
    # An instance's own profile_dir is an input as --profile-dir is: the run CSV replaced its dense.csv.
    prof = profile_copy / TP1
    raw = json.loads(CONFIG.read_text())
    raw["nodes"][0]["instances"][0].update(profile_dir=str(prof), hardware="H200",
                                           npu_mem={"mem_size": 141, "mem_bw": 4800, "mem_latency": 0})
    config = tmp_path / "cluster.json"
    config.write_text(json.dumps(raw))
    before = snapshot(profile_copy)
    for output in (prof / "dense.csv", prof / "new.csv"):
        assert cli("run", "--cluster-config", str(config), "--dataset", str(TRACE), "--output", str(output),
                   "--quiet") == 2
        assert f"input folder {prof}" in one_line_error(capsys)
    assert snapshot(profile_copy) == before
    assert cli("run", "--cluster-config", str(config), "--dataset", str(TRACE), "--num-requests", "5", "--output",
               str(tmp_path / "out" / "r.csv"), "--quiet") == 0


def test_run_refuses_an_output_inside_a_profile_under_the_profiles_root_given_or_bundled(
        tmp_path, profile_copy, capsys, monkeypatch):
    llmservingsim = profile_copy / "RTXPRO6000/Llama-3.1-8B/bf16"  # meta.yaml + tp1/, one level up
    (llmservingsim / "tp1").mkdir(parents=True)
    (llmservingsim / "meta.yaml").write_text("model: x\n")
    before = snapshot(profile_copy)
    for output, folder in ((profile_copy / TP1 / "dense.csv", profile_copy / TP1),
                           (llmservingsim / "tp1" / "r.csv", llmservingsim)):
        assert cli("run", "--cluster-config", str(CONFIG), "--dataset", str(TRACE), "--profiles-root",
                   str(profile_copy), "--output", str(output), "--quiet") == 2
        assert f"input folder {folder};" in one_line_error(capsys)
    import pdsim.cli

    # without --profiles-root runs look profiles up in the bundled root: its profiles are inputs as well
    monkeypatch.setattr(pdsim.cli, "bundled_path", lambda *parts: tmp_path.joinpath(*parts))
    assert cli("run", "--cluster-config", str(CONFIG), "--dataset", str(TRACE), "--output",
               str(profile_copy / TP1 / "dense.csv"), "--quiet") == 2
    assert f"input folder {profile_copy / TP1};" in one_line_error(capsys)
    assert snapshot(profile_copy) == before
    # beside the profiles (a scratch root that holds none where the run looks): allowed
    assert cli("run", "--cluster-config", str(CONFIG), "--dataset", str(TRACE), "--num-requests", "2",
               "--profiles-root", str(profile_copy), "--output", str(profile_copy / "run.csv"), "--quiet") == 0
    assert (profile_copy / "run_summary.json").is_file()


def test_run_refuses_writing_over_the_model_config_beside_the_cluster_config(tmp_path, capsys):
    config = tmp_path / "cluster_config.json"
    shutil.copy(CONFIG, config)
    model_config = tmp_path / "model_config.json"
    model_config.write_text('{"architectures": ["LlamaForCausalLM"]}\n')
    assert cli("run", "--cluster-config", str(config), "--dataset", str(TRACE), "--output", str(model_config),
               "--quiet") == 2
    assert f"would overwrite the input {model_config}" in one_line_error(capsys)
    assert model_config.read_text() == '{"architectures": ["LlamaForCausalLM"]}\n'


def test_run_refuses_writing_over_an_llmservingsim_profiles_meta_yaml(tmp_path, capsys):
    (tmp_path / "prof" / "tp1").mkdir(parents=True)
    meta = tmp_path / "prof" / "meta.yaml"
    meta.write_text("model: x\n")
    assert cli("run", "--cluster-config", str(CONFIG), "--dataset", str(TRACE), "--profile-dir",
               str(tmp_path / "prof" / "tp1"), "--output", str(meta), "--quiet") == 2
    assert f"would overwrite the input {meta}" in one_line_error(capsys)
    assert meta.read_text() == "model: x\n"


# ------------------------------------------------------------ profile estimate


def estimate(out: Path | None, hardware: str = "H200") -> int:
    return cli("profile", "estimate", "--hardware", hardware, "--model", MODEL,
               *(("--out", str(out)) if out is not None else ()))


def test_estimate_under_a_file_says_so_in_one_line(tmp_path, capsys):
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    assert estimate(a_file / "sub") == 2
    assert f"--out {a_file / 'sub'}: {a_file} is a file, not a folder" in one_line_error(capsys)
    assert a_file.read_text() == "x"


def test_estimate_is_refused_over_a_measured_profile_default_out_included(tmp_path, profile_copy, capsys,
                                                                          monkeypatch):
    before = snapshot(profile_copy)
    assert estimate(profile_copy) == 2
    err = one_line_error(capsys)
    assert f"--out {profile_copy / TP1}: holds a measured profile" in err and "give another --out" in err
    monkeypatch.chdir(tmp_path)  # the default --out, profiles/, from a checkout's root: the shipped profile
    assert estimate(None) == 2
    assert "holds a measured profile" in one_line_error(capsys)
    assert snapshot(profile_copy) == before
    assert [p.name for p in (profile_copy / TP1).parent.iterdir()] == ["tp1"]  # no staging folder left


def test_estimate_replaces_an_earlier_estimate_whole(tmp_path, capsys):
    root = tmp_path / "profiles"
    assert estimate(root) == 0
    prof = root / TP1
    assert read_profile(prof).meta.source == "estimated"
    for stale in ("timings.csv", "allreduce.csv", "notes.txt"):
        (prof / stale).write_text("from the earlier profile\n")
    (prof / "dense.csv").write_text("op,tokens,time_us\n")  # half-edited: the new set replaces it too
    assert estimate(root) == 0
    capsys.readouterr()
    assert sorted(p.name for p in prof.iterdir()) == [
        "attention_decode.csv", "attention_prefill.csv", "dense.csv", "meta.json", "per_sequence.csv"]
    assert read_profile(prof).dense  # whole again
    assert [p.name for p in prof.parent.iterdir()] == ["tp1"]  # no staging or set-aside folder left
    assert oct(prof.stat().st_mode & 0o777) == oct(0o777 & ~_umask())  # not mkdtemp's private 0700


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_profile_is_not_written_over_a_folder_that_is_no_pdsim_profile(tmp_path, capsys):
    root = tmp_path / "profiles"
    (root / TP1).mkdir(parents=True)
    mine = root / TP1 / "mine.txt"
    mine.write_text("keep")
    assert estimate(root) == 2
    assert "holds files but no pdsim profile (no meta.json)" in one_line_error(capsys)
    mine.unlink()
    (root / TP1.parent / "meta.yaml").write_text("model: x\n")  # an LLMServingSim profile: dtype/meta.yaml + tp1/
    (root / TP1 / "dense.csv").write_text("x\n")
    assert estimate(root) == 2
    assert "holds an LLMServingSim profile" in one_line_error(capsys)
    assert (root / TP1 / "dense.csv").read_text() == "x\n"


def test_a_failed_write_leaves_the_earlier_profile_as_it_was(tmp_path, monkeypatch):
    root = tmp_path / "profiles"
    assert estimate(root) == 0
    before = snapshot(root)
    import pdsim.perf.profile as profile

    def broken(path: Path) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(profile, "read_profile", broken)  # the check before the swap fails
    with pytest.raises(RuntimeError):
        write_profile(root / TP1, _meta("estimated", "pdsim estimate"), *_rows())
    assert snapshot(root) == before and [p.name for p in (root / TP1).parent.iterdir()] == ["tp1"]


def test_a_bad_table_is_named_where_it_would_be_written_not_in_the_staging_folder(tmp_path):
    from pdsim.errors import ProfileError

    dense, *rest = _rows()
    dense = [(op, tokens, float("nan") if i == 3 else us) for i, (op, tokens, us) in enumerate(dense)]
    with pytest.raises(ProfileError) as e:
        write_profile(tmp_path / TP1, _meta("estimated", "pdsim estimate"), dense, *rest)
    assert str(e.value).startswith(f"{tmp_path / TP1} (as it would be written)/dense.csv"), str(e.value)
    assert ".tmp" not in str(e.value) and not (tmp_path / TP1).exists()


def test_a_profile_is_not_written_inside_another_profile_folder(tmp_path):
    from pdsim.errors import ProfileError

    shutil.copytree(MEASURED, tmp_path / "prof")
    with pytest.raises(ProfileError, match=r"inside the profile folder .*prof; give --out a folder outside it"):
        write_profile(tmp_path / "prof" / "x" / TP1, _meta("estimated", "pdsim estimate"), *_rows())
    assert not (tmp_path / "prof" / "x").exists()
    # Not a profile: another tool's meta.json above the root, and the LLMServingSim meta.yaml beside a new tpN/.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "meta.json").write_text("{}")
    write_profile(tmp_path / "run" / "profiles" / TP1, _meta("estimated", "pdsim estimate"), *_rows())
    lss = tmp_path / "lss" / TP1.parent
    lss.mkdir(parents=True)
    (lss / "meta.yaml").write_text("model: x\n")
    write_profile(lss / "tp4", _meta("estimated", "pdsim estimate"), *_rows())
    with pytest.raises(ProfileError, match="inside the profile folder"):
        write_profile(lss / "deeper" / "tp1", _meta("estimated", "pdsim estimate"), *_rows())


# ------------------------------------------------------------ who may replace whom


def _meta(source: str, tool: str) -> ProfileMeta:
    return ProfileMeta(hardware="H200", model=MODEL, dtype="bfloat16", tp=1, source=source, tool=tool,
                       num_layers=32)


def _rows() -> tuple:
    from pdsim.hardware import get_hardware
    from pdsim.models import load_model
    from pdsim.perf.estimate import estimate_rows

    return estimate_rows(get_hardware("H200"), load_model(MODEL), "bfloat16", 1, None)


IMPORT = ("measured", "pdsim profile import-aiconfigurator")
PROFILER = ("measured", "pdsim profile")
ESTIMATE = ("estimated", "pdsim estimate")


@pytest.mark.parametrize(("old", "new", "allowed"), [
    (ESTIMATE, ESTIMATE, True), (ESTIMATE, IMPORT, True), (ESTIMATE, PROFILER, True),
    (IMPORT, IMPORT, True), (IMPORT, PROFILER, True), (PROFILER, PROFILER, True),
    (IMPORT, ESTIMATE, False), (PROFILER, ESTIMATE, False), (PROFILER, IMPORT, False),
])
def test_a_profile_replaces_only_one_of_its_rank_or_below(tmp_path, old, new, allowed):
    rows = _rows()
    write_profile(tmp_path / "p", _meta(*old), *rows)
    if allowed:
        write_profile(tmp_path / "p", _meta(*new), *rows)
        assert json.loads((tmp_path / "p" / "meta.json").read_text())["tool"] == new[1]
    else:
        with pytest.raises(PdsimError, match="which an? (estimated|imported) one must not replace"):
            write_profile(tmp_path / "p", _meta(*new), *rows)
        assert json.loads((tmp_path / "p" / "meta.json").read_text())["tool"] == old[1]


# ------------------------------------------------------------ profile import-aiconfigurator


@pytest.fixture
def fake_database(tmp_path, monkeypatch) -> Path:
    """aiconfigurator's tables stood in for by the H200 estimate: the command's writing is under test."""
    import pdsim.perf.aiconfigurator as aic
    from pdsim.hardware import get_hardware

    def build_rows(systems_dir, system, model, tp, dtype="bfloat16", quantization=None):
        return (*_rows(), None, None, "stand-in rows", get_hardware("H200"))

    monkeypatch.setattr(aic, "build_rows", build_rows)
    db = tmp_path / "db"
    db.mkdir()
    return db


def import_aic(db: Path, out: Path) -> int:
    return cli("profile", "import-aiconfigurator", "--systems-dir", str(db), "--system", "h200_sxm",
               "--model", MODEL, "--tp", "1", "--out", str(out))


def test_import_is_refused_over_a_measured_profile_and_replaces_an_import_whole(tmp_path, profile_copy,
                                                                               fake_database, capsys):
    before = snapshot(profile_copy)
    assert import_aic(fake_database, profile_copy) == 2
    err = one_line_error(capsys)
    assert f"--out {profile_copy / TP1}: holds a measured profile" in err and "an imported one" in err
    assert snapshot(profile_copy) == before

    root = tmp_path / "imported"
    assert import_aic(fake_database, root) == 0
    (root / TP1 / "timings.csv").write_text("stale\n")
    assert import_aic(fake_database, root) == 0
    assert not (root / TP1 / "timings.csv").exists()
    assert read_profile(root / TP1).meta.tool.startswith("pdsim profile import-")


def test_import_under_a_file_says_so_in_one_line(tmp_path, fake_database, capsys):
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    assert import_aic(fake_database, a_file / "sub") == 2
    assert f"--out {a_file / 'sub'}: {a_file} is a file, not a folder" in one_line_error(capsys)


@pytest.mark.parametrize("command", [
    ["run", "--cluster-config", str(CONFIG), "--dataset", str(TRACE), "--quiet", "--output"],
    ["workload", "convert", str(TRACE), "--output"],
    ["workload", "generate", "--num-requests", "3", "--output"],
    ["workload", "stats", str(TRACE), "--plot"],
    ["validate", "--measured", str(TRACE), "--cluster-config", str(CONFIG), "--output"],
])
def test_an_output_file_named_with_a_trailing_slash_is_refused_not_written_as_a_file(tmp_path, capsys, command):
    # Path("out/") is Path("out"): the trailing slash was dropped and a *file* named out was written.
    target = tmp_path / "out"
    for given in (f"{target}/", f"{target}/.", f"{target}/.."):
        assert cli(*command, given) == 2
        err = one_line_error(capsys)
        assert err.startswith("error: ") and f"'{given}': names a folder" in err, err
        assert not target.exists()
    # '-' is no stdout here: files named '-' and '-_summary.json' were written in the working folder.
    assert cli(*command, "-") == 2
    assert "-: pdsim writes its outputs to files, not to stdout" in one_line_error(capsys)


def test_a_folder_given_as_the_trace_or_config_is_refused_as_reading_it_would_be(tmp_path, capsys):
    # Not blamed on an --output inside it: the mistake is the input.
    folder = tmp_path / "d"
    folder.mkdir()
    for args, said in ((["--cluster-config", str(CONFIG), "--dataset", str(folder)], "cannot read trace"),
                       (["--cluster-config", str(folder), "--dataset", str(TRACE)], "cannot read cluster config")):
        assert cli(*args, "--output", str(folder / "o" / "run.csv"), "--quiet") == 2
        assert one_line_error(capsys) == f"error: {folder}: {said} (Is a directory)\n"


def test_a_write_the_file_system_refuses_names_the_output(tmp_path, monkeypatch, capsys):
    # A full disk fails a write on an open file, whose error carries no file name: the output's is added.
    import errno

    import pandas as pd

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    output = tmp_path / "run.csv"
    assert cli("--cluster-config", str(CONFIG), "--dataset", str(TRACE), "--output", str(output), "--quiet") == 1
    assert one_line_error(capsys) == f"error: {output}: No space left on device\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing half-written left behind


def test_a_run_output_named_as_another_format_is_refused(tmp_path, capsys):
    # The per-request file is a CSV: one named .json would be read as JSON by whoever opens it.
    assert cli("--cluster-config", str(CONFIG), "--dataset", str(TRACE), "--output", str(tmp_path / "r.json"),
               "--quiet") == 2
    assert "the per-request output is a CSV; name it .csv (its summary is r_summary.json beside it)" in \
        one_line_error(capsys)
    assert not list(tmp_path.iterdir())
