"""`pdsim profile estimate`: write a roofline-estimated profile in the pdsim format (pdsim/cli.py
adds this command to the `profile` group)."""

from __future__ import annotations

import difflib
from pathlib import Path

import click

from pdsim.bundled import bundled_path
from pdsim.cli_checks import OutputFolder
from pdsim.errors import PdsimError
from pdsim.hardware import get_hardware, known_hardware
from pdsim.models import dtype_bytes, load_model, use_model_file
from pdsim.outputs import check_output_dir
from pdsim.perf.estimate import estimate_meta, estimate_rows
from pdsim.perf.profile import profile_path, write_profile


@click.command("estimate")
@click.option("--hardware", required=True, help=f"GPU name; one of: {', '.join(known_hardware())}")
@click.option(
    "--model", "model_name", required=True, help="Hugging Face model id, e.g. meta-llama/Llama-3.1-8B"
)
@click.option("--model-config", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="the model's Hugging Face config.json, for a model pdsim does not bundle (LLMServingSim's "
                   "model_config.json)")
@click.option("--dtype", default="bfloat16", show_default=True, help="Weights and KV cache dtype.")
@click.option("--tp", default=1, show_default=True, type=int, help="tensor-parallel degree")
@click.option("--quantization", type=click.Choice(["fp8", "fp8_block"]), default=None,
              help="fp8 weights (GEMMs at the fp8 peak; weight-only at the bf16 peak on GPUs without fp8 tensor "
                   "cores); writes <dtype> = the scheme (docs/precision.md)")
@click.option(
    "--out",
    "--output",
    "out",
    default="profiles",
    show_default=True,
    type=OutputFolder(),
    help="profile root; writes <out>/<hardware>/<org>/<model>/<dtype>/tp<N>/",
)
def estimate(hardware: str, model_name: str, model_config: Path | None, dtype: str, tp: int, quantization: str | None,
             out: Path) -> None:
    """Estimate a latency profile from hardware specs (roofline per op) and write it.

    It replaces an earlier estimate in that folder whole, and is refused over a measured profile."""
    check_output_dir(out, "--out")  # `--out afile/sub`: one line naming the file, not a NotADirectoryError
    spec = get_hardware(hardware)
    if spec is None:
        raise PdsimError(
            f"--hardware: unknown GPU {hardware!r}{_did_you_mean(hardware)}; known hardware: "
            f"{', '.join(known_hardware())}"
        )
    dtype_bytes(dtype)  # rejects unknown dtypes with the list of known ones
    if quantization and dtype not in ("bfloat16", "float16"):
        raise PdsimError(f"--quantization {quantization} with --dtype {dtype}: fp8 weights run over 16-bit activations "
                         "(bfloat16 or float16), as in vLLM")
    if model_config is not None and (note := use_model_file(model_name, model_config)) is not None:
        click.echo(f"note: --model-config: {note}", err=True)
    try:
        model = load_model(model_name)
    except PdsimError as e:
        if model_config is not None:
            raise
        raise PdsimError(f"{e}; for another model give its Hugging Face config.json with --model-config") from None
    meta = estimate_meta(spec, model, dtype, tp, quantization)
    directory = profile_path(out, spec.name, model.name, quantization or dtype, tp)
    meta.path = str(directory)
    dense, per_seq, prefill, decode = estimate_rows(spec, model, dtype, tp, quantization)
    write_profile(directory, meta, dense, per_seq, prefill, decode)
    click.echo(f"wrote estimated profile {directory} ({meta.device['gemm_precision']})")
    if Path(out).resolve() != bundled_path("profiles").resolve():  # runs look in the bundled profiles/ by default
        click.echo(f"runs use it with --profiles-root {out} (or --profile-dir {directory})")


def _did_you_mean(name: str) -> str:
    """`H100` -> `H100-SXM`: a known name that starts with it, or else the closest spelling."""
    known = known_hardware()
    folded = name.lower().replace("_", "-").replace(" ", "")
    starts = [k for k in known if k.lower().startswith(folded) or folded.startswith(k.lower())]
    close = starts or difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""
