"""A persona on llama.cpp: where llama-server and the GGUF converters are, and a run exported for them.

llama-server is the one serving engine that applies an activated LoRA the way a masked persona needs:
an adapter GGUF that carries `adapter.alora.invocation_tokens` is off for every prompt token before
the invocation and on from there, and the server keeps the KV cache up to that point, so a review
reads the main model's own cache. An unmasked persona is an ordinary LoRA there.

`export` writes, with llama.cpp's own converters:
  base.gguf      the base model, with every token row the run uses (new token rows, trained rows)
  persona.gguf   the LoRA adapter (its aLoRA invocation tokens kept)
  export.json    what was exported, from which run, and what a server of it must report
  serve.sh       starts llama-server on both, the adapter loaded but off until a request selects it

The tree is $SPT_LLAMACPP, else $SPT_CACHE/llama.cpp (default ~/.cache/splitpersona/llama.cpp), which
`make llamacpp` fills from the pinned source; the server is build/bin/llama-server in it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Literal

from splitpersona.io import DataError, write_json
from splitpersona.run import adapter_dir, load_run_tokenizer, provenance

OutType = Literal["f32", "f16", "bf16", "q8_0"]
EXPORT_FILE = "export.json"
BUILD_HINT = "build it with `make llamacpp` (or point SPT_LLAMACPP at a llama.cpp tree with build/bin/llama-server)"


def tree() -> Path:
    if os.environ.get("SPT_LLAMACPP"):
        return Path(os.environ["SPT_LLAMACPP"])
    return Path(os.environ.get("SPT_CACHE") or Path.home() / ".cache/splitpersona") / "llama.cpp"


def server_binary() -> Path:
    path = tree() / "build" / "bin" / "llama-server"
    if not path.exists():
        raise FileNotFoundError(f"no llama-server at {path}: {BUILD_HINT}")
    return path


def _converter(name: str) -> Path:
    path = tree() / name
    if not path.exists():
        raise FileNotFoundError(f"no {name} in {tree()}: {BUILD_HINT}")
    return path


def _convert(script: str, *args: str) -> None:
    """One of llama.cpp's converters, with the gguf-py of its own tree (the two are versioned together)."""
    root = tree()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root / "gguf-py"), str(root)]), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(_converter(script)), *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{script} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def _token_rows(model, adapter_name: str) -> dict[int, object]:
    """The rows a run's adapter trains in the input embedding (peft trainable tokens), by token id."""
    import torch

    config = model.peft_config[adapter_name]
    ids = config.trainable_token_indices
    if not ids:
        return {}
    if isinstance(ids, dict):
        if set(ids) - {"embed_tokens"}:
            raise ValueError(f"trained token rows outside the input embedding ({sorted(ids)}) cannot be exported")
        ids = ids["embed_tokens"]
    with torch.no_grad():
        rows = model.get_input_embeddings()(torch.tensor([ids]))[0]
    return {i: rows[k].detach().clone() for k, i in enumerate(ids)}


def _write_base(run_dir: Path, base_model: str, tokenizer, info, out: Path) -> dict[str, object]:
    """The base model as a Hugging Face directory: the run's tokenizer, and every token row the run
    reads put into the embedding (the main model never reads them before the split token)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from splitpersona.token import fit_embeddings

    base = AutoModelForCausalLM.from_pretrained(base_model, dtype="auto")
    new_rows = fit_embeddings(base, tokenizer, info.tokens)
    peft = PeftModel.from_pretrained(base, adapter_dir(run_dir))
    rows = _token_rows(peft, peft.active_adapter)
    base = peft.unload()  # the base model as loaded, every adapter module taken out again: one load of the weights
    with torch.no_grad():
        emb = base.get_input_embeddings().weight
        for i, row in rows.items():
            emb[i] = row.to(emb.dtype)
    base.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"new_token_rows": new_rows, "trained_token_rows": sorted(rows), "vocab_rows": int(emb.shape[0]),
            "hidden_size": int(emb.shape[1])}


def _write_lora(run_dir: Path, out: Path) -> dict[str, object]:
    """The adapter without its trained token rows (they went into the base): LoRA weights only."""
    from safetensors.torch import load_file, save_file

    src = adapter_dir(run_dir)
    config = json.loads((src / "adapter_config.json").read_text())
    config["trainable_token_indices"] = None
    weights = load_file(src / "adapter_model.safetensors")
    kept = {k: v for k, v in weights.items() if "lora_" in k}
    dropped = sorted(set(weights) - set(kept))
    if any("token_adapter" not in k for k in dropped):
        raise ValueError(f"{src}: adapter weights llama.cpp cannot load: {[k for k in dropped if 'token_adapter' not in k]}")
    out.mkdir(parents=True)
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    save_file(kept, out / "adapter_model.safetensors")
    return {"alora_invocation_tokens": config.get("alora_invocation_tokens")}


def serve_script(*, ctx_size: int, parallel: int, outtype: OutType) -> str:
    """serve.sh: the server on loopback, port $PORT; the adapter loaded at scale 0, selected per request.

    No host-memory prompt cache (`--cache-ram 0`): a cached prompt must never be restored under another
    adapter than the one that computed it; each slot still keeps its own cache, which is what a review reuses.
    An f32 export is served in f32 throughout (f32 KV cache, no flash attention, whose CPU kernel rounds
    queries to f16), so that it computes what transformers computes in f32.
    """
    binary = shlex.quote(str(server_binary()))
    exact = " -fa off -ctk f32 -ctv f32" if outtype == "f32" else ""
    return f"""#!/bin/sh
# Serve this export with llama-server. PORT (default 8080); PARALLEL requests at once (default {parallel}), each
# with CTX tokens of context (default {ctx_size}); LLAMA_SERVER (default: the one `make llamacpp` built).
# Extra arguments go to llama-server (e.g. --host 0.0.0.0, -ngl 99 on a GPU build, -t 8).
here=$(cd "$(dirname "$0")" && pwd)
parallel=${{PARALLEL:-{parallel}}}
ctx=${{CTX:-{ctx_size}}}
exec "${{LLAMA_SERVER:-{binary}}}" -m "$here/base.gguf" --lora "$here/persona.gguf" --lora-init-without-apply \\
    --host 127.0.0.1 --port "${{PORT:-8080}}" --parallel "$parallel" --ctx-size $((ctx * parallel)) \\
    --cache-ram 0 --no-webui{exact} "$@"
"""


def export(
    run_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    outtype: OutType = "f32",
    base_model: str | None = None,
    ctx_size: int | None = None,
    parallel: int = 4,
) -> dict[str, object]:
    """Write base.gguf, persona.gguf, export.json and serve.sh into `out` (a new directory, written beside and renamed)."""
    run_dir, out = Path(run_dir), Path(out)
    if out.exists():
        raise DataError(out, "already exists; choose a new directory")
    tokenizer, info = load_run_tokenizer(run_dir)
    base_model = base_model or info.base_model
    server_binary()  # refuse before hours of conversion, not after
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with tempfile.TemporaryDirectory() as work:
            work = Path(work)
            base = _write_base(run_dir, base_model, tokenizer, info, work / "base")
            lora = _write_lora(run_dir, work / "lora")
            _convert("convert_hf_to_gguf.py", str(work / "base"), "--outtype", outtype, "--outfile", str(tmp / "base.gguf"))
            _convert("convert_lora_to_gguf.py", str(work / "lora"), "--base", str(work / "base"), "--outtype", outtype,
                     "--outfile", str(tmp / "persona.gguf"))
        manifest = {
            "run": str(run_dir.resolve()), "base_model": base_model, "outtype": outtype, "masked": info.lora_mask,
            "split_id": info.tokens.split_id, "control_id": info.tokens.control_id, **base, **lora,
            "provenance": provenance(),
        }
        write_json(tmp / EXPORT_FILE, manifest)
        script = tmp / "serve.sh"
        slots = 1 if info.lora_mask else parallel  # see splitpersona.served: aLoRA requests across slots go wrong
        script.write_text(serve_script(ctx_size=ctx_size or 2 * info.max_length, parallel=slots, outtype=outtype))
        script.chmod(0o755)
        tmp.chmod(0o755)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
