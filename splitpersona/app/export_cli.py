"""`spt export`: a trained run in the files a serving engine loads.

    spt export llamacpp --run runs/demo/persona_masked --out exports/demo   # then exports/demo/serve.sh
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("llamacpp")
def llamacpp(
    run: Path = typer.Option(..., "--run", help="Training run directory (run.json, adapter/, tokenizer/)."),
    out: Path = typer.Option(..., "--out", help="New directory: base.gguf, persona.gguf, export.json, serve.sh."),
    outtype: str = typer.Option("f32", "--outtype", help="GGUF tensor type: f32, f16, bf16 or q8_0."),
    base_model: str = typer.Option(None, "--base-model", help="Base model id or path; default: the one in run.json."),
    ctx_size: int = typer.Option(None, "--ctx-size", help="Context per request in serve.sh; default: 2 x the run's max_length."),
    parallel: int = typer.Option(4, "--parallel", help="Requests served at once by serve.sh of an unmasked run (a masked run: one); PARALLEL overrides it."),
) -> None:
    """The base model and the persona adapter as GGUF for llama-server (masked runs keep their aLoRA gate)."""
    from splitpersona.llamacpp import export

    if outtype not in ("f32", "f16", "bf16", "q8_0"):
        raise typer.BadParameter(f"{outtype!r}; use f32, f16, bf16 or q8_0", param_hint="--outtype")
    manifest = export(run, out, outtype=outtype, base_model=base_model, ctx_size=ctx_size, parallel=parallel)
    rows = manifest["trained_token_rows"] + manifest["new_token_rows"]
    if rows:
        typer.echo(f"token rows {sorted(set(rows))} are in base.gguf: the main model never reads them before the split token")
    typer.echo(json.dumps({k: v for k, v in manifest.items() if k != "provenance"}))
    typer.echo(f"serve with: PORT=8080 {out / 'serve.sh'}")
