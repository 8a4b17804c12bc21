"""The `pdsim profile` command group.

`pdsim profile --model M ...` measures a profile, `pdsim profile --check --model M ...` runs
the self-check against one, `pdsim profile compare A B` compares two runs. torch is imported
only once one of them actually runs, so the simulator's CLI loads without it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from pdsim.bundled import InputFolder
from pdsim.cli_checks import OutputFolder, number_in, split_items
from pdsim.errors import PdsimError

if TYPE_CHECKING:  # check.py imports torch, which this module must not
    from pdsim.profiler.check import CheckRow

# (GPU, CPU) defaults: the CPU ones finish llama-160m in minutes, tiny-llama in seconds.
DEFAULTS = {
    "max_tokens": (8192, 2048),
    "max_kv": (16384, 2048),
    "max_batch": (256, 64),
    "warmup": (5, 2),
    "repeats": (20, 7),
}


def _require_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise PdsimError("the profiler needs torch: pip install torch (pdsim's profile extra)") from None


def _default(name: str, device: str, value: int | None) -> int:
    return value if value is not None else DEFAULTS[name][0 if device == "cuda" else 1]


def _int_list(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in split_items(text, option))
    except ValueError:
        raise PdsimError(f"{option}: expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise PdsimError(f"{option}: expected positive integers, got {text!r}")
    return values


def gpu_hardware_name(given: str | None, device_name: str) -> str:
    """The hardware name a profile measured on the GPU torch calls `device_name` is filed under, resolved as
    cluster configs resolve theirs (a config saying "H100" reads H100-SXM's profile, so one filed under "H100"
    would never be read): None gives this device's board; a family name ("H100") the board of this device; a
    board other than this device's is refused, and a name pdsim does not know is kept as given."""
    from pdsim.hardware import (
        board_family,
        canonical_hardware_name,
        device_board,
        family_boards,
        get_hardware,
        is_family_name,
        is_gpu_slice,
    )

    if is_gpu_slice(device_name):  # a slice has a fraction of the board's SMs and bandwidth
        raise PdsimError(f"this GPU is a MIG slice ({device_name!r}): its times are no whole board's; profile on a "
                         "whole GPU")
    board = canonical_hardware_name(device_name)
    known = board if get_hardware(board) is not None else None
    if given is None:
        if known is None:
            raise PdsimError(f"--hardware is required: pdsim knows no board by this GPU's name ({device_name!r}); "
                             "give the name cluster configs will use for it (see pdsim/hardware.py)")
        return known
    _check_folder_name(given)
    if is_family_name(given):
        of_device = device_board(device_name, given)
        if of_device is None:
            boards = ", ".join(family_boards(board_family(canonical_hardware_name(given)) or given))
            raise PdsimError(f"--hardware {given}: a family of boards ({boards}), and this GPU ({device_name!r}) is "
                             f"none of them as pdsim reads its name; give the board, or leave --hardware out")
        return of_device
    resolved = canonical_hardware_name(given)
    if get_hardware(resolved) is None:
        return given  # a GPU pdsim does not know: a measured-only profile under the name given
    if known is not None and resolved != known:
        raise PdsimError(f"--hardware {given}: names the {resolved}, but this GPU is {device_name!r} ({known}); "
                         f"leave --hardware out to file the profile under {known}")
    return resolved


def _check_folder_name(name: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", name):  # it names a folder under --out
        raise PdsimError(f"--hardware {name!r}: expected a name of letters, digits and . _ + - (it names the "
                         "profile's folder)")


@click.group("profile", invoke_without_command=True)
@click.option(
    "--model",
    help="Model id with a config in configs/models/, e.g. meta-llama/Llama-3.1-8B. "
    "Required unless a subcommand is given.",
)
@click.option(
    "--hardware",
    help="Hardware name the profile is filed under, which cluster configs refer to (e.g. H100-SXM). "
    "Default on a GPU: the board pdsim reads torch's device name as (required where it knows none); a family "
    "name (H100, A100) is taken as this GPU's board, another board than this GPU is refused. Default on the "
    "CPU: CPU-<threads>core.",
)
@click.option(
    "--tp",
    type=int,
    default=1,
    show_default=True,
    help="Tensor-parallel degree (shapes "
    "are sharded tp ways; all-reduce measured with NCCL when tp GPUs are visible).",
)
@click.option(
    "--dtype",
    default="bfloat16",
    show_default=True,
    type=click.Choice(["bfloat16", "float16", "float32"]),
    help="Weight/activation dtype.",
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "cuda", "cpu"]),
    help="auto = cuda when visible, else cpu.",
)
@click.option(
    "--out",
    "--output",
    "out",
    type=OutputFolder(),
    default=Path("profiles"),
    show_default=True,
    help="Profile root; the profile goes to <out>/<hardware>/<model>/<dtype>/tp<N>/.",
)
@click.option(
    "--max-tokens",
    type=int,
    help="Largest token count (dense ops, prefill chunk, activation "
    "memory). Default 8192 on GPU, 2048 on CPU.",
)
@click.option(
    "--max-kv",
    type=int,
    help="Largest cached KV length (prefill prefix, decode KV). Default 16384 on GPU, 2048 on CPU.",
)
@click.option(
    "--max-batch",
    type=int,
    help="Largest sequence count (lm_head/sampler, decode batch). Default 256 on GPU, 64 on CPU.",
)
@click.option(
    "--steps-per-octave",
    type=int,
    default=4,
    show_default=True,
    help="Grid points per doubling above 16 for dense and per-sequence ops.",
)
@click.option(
    "--attention-steps-per-octave",
    type=int,
    default=2,
    show_default=True,
    help="Grid points per doubling for both attention axes.",
)
@click.option("--warmup", type=int, help="Warm-up calls per grid point. Default 5 on GPU, 2 on CPU.")
@click.option(
    "--repeats", type=int, help="Timed calls per grid point (median kept). Default 20 on GPU, 7 on CPU."
)
@click.option(
    "--max-seconds-per-point",
    type=float,
    default=2.0,
    show_default=True,
    callback=number_in(0, 3600, low_open=True, what="a time (s)"),
    help="Stop repeating a point after this long (at least 3 repeats are always taken).",
)
@click.option(
    "--passes",
    type=int,
    default=1,
    show_default=True,
    help="Measure the whole grid (--check: every step) this many times, alternately forwards and "
    "backwards, and keep each point's fastest median: robust against bursts of load from other "
    "processes on a shared machine (3 recommended there).",
)
@click.option(
    "--recheck-rounds",
    type=int,
    default=2,
    show_default=True,
    help="Rounds of re-measuring grid points more than --recheck-tolerance above the line between "
    "their grid neighbours (the fastest measurement is kept); 0 disables.",
)
@click.option(
    "--recheck-tolerance",
    type=float,
    default=0.15,
    show_default=True,
    callback=number_in(0, 100, low_open=True, what="a relative excess"),
    help="Relative excess over the neighbours' chord that makes a grid point suspicious.",
)
@click.option(
    "--threads",
    type=int,
    callback=number_in(1, 4096, what="a thread count"),
    help="CPU threads (torch.set_num_threads). Default: torch's default "
    "(the physical core count). Recorded in meta.json.",
)
@click.option(
    "--attention",
    "attention_backend",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "sdpa", "flash", "torch-flash"]),
    help="Attention kernel: auto = flash-attn on CUDA when importable, else the FlashAttention-2 "
    "kernel bundled with torch's CUDA build (torch-flash), else SDPA.",
)
@click.option(
    "--elementwise",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "eager", "compiled"]),
    help="Norms, rotary, SiLU-and-mul and residual adds: auto = compiled with torch.compile on CUDA "
    "when Triton is importable (as vLLM runs them), else eager.",
)
@click.option(
    "--quiet", is_flag=True, help="No progress line on stderr (it is also off when stderr is not a terminal)."
)
@click.option(
    "--only",
    type=click.Choice(["layer_overhead", "attention_decode_skew"]),
    help="Measure only this series into the existing profile that --out --hardware --model --dtype --tp "
    "name (its grid from its meta.json), leaving its other tables as they are: e.g. the uneven decode "
    "batches of the decode skew into a profile measured before the profiler timed them.",
)
@click.option(
    "--check",
    is_flag=True,
    help="Self-check instead of profiling: time full forward passes of the profiler's own stand-in kernels "
    "chained (not vLLM) and compare with the profile's prediction: PASS says the profile composes its ops "
    "into whole steps, not that it matches vLLM. Exit status: 0 when the verdict is PASS (every step "
    "predicted within 10%), 1 when it is FAIL, 2 on an error (e.g. no such profile).",
)
@click.option(
    "--profile-dir",
    type=InputFolder(),
    help="--check: the profile to check. Default: the one `--out --hardware --model --dtype --tp` name.",
)
@click.option(
    "--check-prefill",
    default="128,256,512,1024,2048",
    show_default=True,
    help="--check: prefill step sizes (new tokens of one request).",
)
@click.option("--check-decode", default="1,4,8,16,32", show_default=True, help="--check: decode batch sizes.")
@click.option(
    "--check-kv", type=int, default=512, show_default=True, callback=number_in(1, 10**7, what="a KV length"),
    help="--check: KV length of every decode request."
)
@click.pass_context
def profile_group(ctx: click.Context, **opts: object) -> None:
    """Measure a latency profile on this machine's GPU (or CPU), or check one.

    With --check the exit status is the verdict's: 0 PASS, 1 FAIL (2 on an error), so that a script
    or CI job can gate on it.
    """
    if ctx.invoked_subcommand is not None:
        return
    if not opts["model"]:
        raise click.UsageError("--model is required (e.g. --model JackFram/llama-160m)")
    _require_torch()
    from pdsim.models import load_model

    load_model(str(opts["model"]))  # unknown model: a clean error before torch starts up
    if opts["check"]:
        if not _check(opts):
            # SystemExit, not ctx.exit(1): pdsim's main runs click with standalone_mode=False, which turns
            # click's Exit into a return value that main drops, so the status would be 0.
            raise SystemExit(1)
    else:
        _profile(opts)


def _timing(opts: dict, device: str):  # noqa: ANN202  (TimingConfig; torch-free module import)
    from pdsim.profiler.timing import TimingConfig

    warmup = _default("warmup", device, opts["warmup"])
    repeats = _default("repeats", device, opts["repeats"])
    if repeats < 1 or warmup < 0:
        raise PdsimError(f"--repeats must be >= 1 and --warmup >= 0, got {repeats} and {warmup}")
    return TimingConfig(
        warmup=warmup,
        repeats=repeats,
        max_seconds_per_point=float(opts["max_seconds_per_point"]),
        min_repeats=min(3, repeats),
    )


def _passes(opts: dict) -> int:
    passes = int(opts["passes"])
    if passes < 1:
        raise PdsimError(f"--passes must be >= 1, got {passes}")
    return passes


def _hardware(opts: dict, device: str) -> str:
    import torch

    from pdsim.hardware import get_hardware

    if opts["threads"]:
        torch.set_num_threads(int(opts["threads"]))
    if device == "cuda":
        return gpu_hardware_name(str(opts["hardware"]) if opts["hardware"] else None, torch.cuda.get_device_name())
    if not opts["hardware"]:
        return f"CPU-{torch.get_num_threads()}core"  # CPU profiles are named after their thread count
    name = str(opts["hardware"])
    _check_folder_name(name)
    if get_hardware(name) is not None:
        # CPU timings filed under a GPU's name would price that GPU's steps (and replace or extend its profile).
        raise PdsimError(f"--hardware {name}: a GPU pdsim knows, but this runs on the CPU; leave --hardware out "
                         "(CPU-<threads>core) or run on that GPU")
    return name


def _profile(opts: dict) -> None:
    from pdsim.models import load_model
    from pdsim.profiler.device import pick_device
    from pdsim.profiler.grid import GridSpec
    from pdsim.profiler.progress import progress_enabled
    from pdsim.profiler.run import ProfileRequest, add_only, moe_note, run_profile, run_warnings

    device = pick_device(str(opts["device"]))
    try:
        grid = GridSpec(
            max_tokens=_default("max_tokens", device, opts["max_tokens"]),
            max_batch=_default("max_batch", device, opts["max_batch"]),
            max_kv=_default("max_kv", device, opts["max_kv"]),
            steps_per_octave=int(opts["steps_per_octave"]),
            attention_steps_per_octave=int(opts["attention_steps_per_octave"]),
        )
    except ValueError as e:
        raise PdsimError(f"grid option: {e}") from None
    req = ProfileRequest(
        model=str(opts["model"]),
        hardware=_hardware(opts, device),
        dtype=str(opts["dtype"]),
        tp=int(opts["tp"]),
        device=device,
        grid=grid,
        timing=_timing(opts, device),
        threads=opts["threads"],
        out=Path(opts["out"]),
        attention_backend=str(opts["attention_backend"]),
        elementwise=str(opts["elementwise"]),
        passes=_passes(opts),
        recheck_rounds=int(opts["recheck_rounds"]),
        recheck_tolerance=float(opts["recheck_tolerance"]),
    )
    if not opts["only"] and (note := moe_note(load_model(req.model))) is not None:
        click.echo(f"NOTE: {note}")
    if opts["only"]:
        out_dir = add_only(req, opts["only"], progress_enabled(bool(opts["quiet"])))
    else:
        out_dir = run_profile(req, progress_enabled(bool(opts["quiet"])))
    click.echo(f"wrote {out_dir}")
    click.echo(f"runs use it with --profiles-root {opts['out']} (or --profile-dir {out_dir})")
    if not opts["only"]:
        for line in run_warnings(json.loads((out_dir / "meta.json").read_text())):
            click.echo(line)


def _check(opts: dict) -> bool:
    """Run the self-check and print its report; True when its verdict is not FAIL."""
    from pdsim.perf.profile import profile_path
    from pdsim.profiler.check import CheckRequest, format_table, run_check
    from pdsim.profiler.device import pick_device
    from pdsim.profiler.progress import progress_enabled

    device = pick_device(str(opts["device"]))
    # Where `pdsim profile` wrote it, else (a path as from the repository) the bundled profile of that name.
    profile_dir = opts["profile_dir"] or InputFolder().convert(profile_path(
        Path(opts["out"]), _hardware(opts, device), str(opts["model"]), str(opts["dtype"]), int(opts["tp"])
    ), None, None)
    ctx = click.get_current_context()
    stated = {key: _hardware(opts, device) if key == "hardware" else opts[key] for key in ("tp", "dtype", "hardware")
              if opts["profile_dir"] and ctx.get_parameter_source(key) is not click.core.ParameterSource.DEFAULT}
    req = CheckRequest(
        model=str(opts["model"]),
        profile_dir=Path(profile_dir),
        device=device,
        timing=_timing(opts, device),
        threads=opts["threads"],
        prefill_tokens=_int_list(str(opts["check_prefill"]), "--check-prefill"),
        decode_batches=_int_list(str(opts["check_decode"]), "--check-decode"),
        decode_kv=int(opts["check_kv"]),
        attention_backend=str(opts["attention_backend"]),
        elementwise=str(opts["elementwise"]),
        passes=_passes(opts),
        stated=stated,
    )
    result = run_check(req, progress_enabled(bool(opts["quiet"])))
    click.echo(f"self-check of {profile_dir} on {device} ({os.cpu_count()} CPUs visible)")
    click.echo(format_table(result.rows))
    for note in result.notes:
        click.echo(note)
    # The goal is looked up now, not bound as a default, so that tests can move it.
    click.echo(check_verdict(result.rows, CHECK_GOAL))
    return not check_misses(result.rows, CHECK_GOAL)


CHECK_GOAL = 0.10  # the profiler's goal: every whole step predicted within 10% of its measured time


def check_misses(rows: Sequence[CheckRow], goal: float = CHECK_GOAL) -> list[CheckRow]:
    """The checked steps whose prediction is off by more than `goal` (relative): the verdict FAILs on any."""
    return [r for r in rows if abs(r.rel_error) > goal]


def check_verdict(rows: Sequence[CheckRow], goal: float = CHECK_GOAL) -> str:
    """One line: do all checked steps meet the goal; which miss, and whether a miss is within the
    measurement's own run-to-run spread (then the step time itself is not known to that accuracy)."""
    if not rows:
        return "verdict: nothing checked"
    misses = check_misses(rows, goal)
    if not misses:
        worst = max(rows, key=lambda r: abs(r.rel_error))
        return (f"verdict: PASS, all {len(rows)} steps within {goal:.0%} of the measured time "
                f"(worst {worst.label()} {worst.rel_error:+.1%}); measured with the profiler's stand-in kernels "
                "chained, not vLLM")
    noisy = sum(1 for r in misses if abs(r.rel_error) <= r.spread_rel)
    listed = ", ".join(f"{r.label()} {r.rel_error:+.1%}" for r in sorted(misses, key=lambda r: -abs(r.rel_error)))
    extra = f"; {noisy} of them within the measurement's own spread" if noisy else ""
    return f"verdict: FAIL, {len(misses)} of {len(rows)} steps outside {goal:.0%}: {listed}{extra}"


@profile_group.command("compare")
@click.argument("profile_a", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("profile_b", type=click.Path(path_type=Path, exists=True, file_okay=False))
def compare_command(profile_a: Path, profile_b: Path) -> None:
    """Compare two measured profiles point by point (run-to-run stability vs recorded spread)."""
    from pdsim.perf.profile import read_profile
    from pdsim.profiler.compare import compare_profiles, format_diffs

    click.echo(format_diffs(compare_profiles(profile_a, profile_b)))
    meta_a, meta_b = read_profile(profile_a).meta, read_profile(profile_b).meta
    for what in ("model", "hardware", "dtype", "tp"):  # then the diffs are between two setups, not two runs
        if getattr(meta_a, what) != getattr(meta_b, what):
            click.echo(f"NOTE: the profiles differ in {what} ({getattr(meta_a, what)} vs {getattr(meta_b, what)}): "
                       "the differences above are not run-to-run noise")


profile = profile_group  # the name pdsim/cli.py mounts
