"""The wheels and tokenizers `benchmarks/gpu_check.sh` needs on the borrowed GPU machine: `make gpu-bundle`.

That machine is a fixed image (Python 3.12 on x86-64 Linux with torch, transformers, peft, accelerate,
pandas, pyarrow and more: `gpu_image_packages.txt`) that reaches no network. This script runs where
pip can reach an index. It pins the packages the check needs that the image lacks (`NEEDED`) and
their dependencies, less the image's own packages and theirs, to the versions installed here (the
versions the tests ran). It downloads the wheels built
for that Python; a package published only as an sdist (deepspeed) is built here into a pure-Python
wheel. It also copies the cached real tokenizers the check reads. The result goes into
`gpu_bundle/` (ignored by git), written beside it and renamed into place. The device run carries
it, so it must stay under the carry limit, and the check installs it with `pip --no-index`.

    python tools/gpu_bundle.py [--out gpu_bundle] [--list] [--pin NAME==VERSION ...]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))  # realsize: where the check looks for cached tokenizers
NEEDED = ("pydantic", "typer", "trl", "datasets", "deepspeed")  # the check imports them; carried even if listed
IMAGE_LIST = Path(__file__).with_name("gpu_image_packages.txt")
TARGET = {"python_version": "3.12", "python_full_version": "3.12.0", "sys_platform": "linux",
          "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
          "implementation_name": "cpython", "platform_python_implementation": "CPython"}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
LIMIT_BYTES = 64 * 2**20  # what a device run carries beside the working tree
WHEELS = "wheels"
REQUIREMENTS = "requirements.txt"
TOKENIZERS = ("qwen2", "llama3")  # the cached real tokenizers the check reads (benchmarks/realsize.py)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: tuple[str, ...], stop: tuple[str, ...] = ()) -> set[str]:
    """The installed distributions `roots` need on the target, themselves included, not entering `stop`
    (extras are not followed)."""
    seen: set[str] = set()
    todo = [canonical(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen or name in stop:
            continue
        seen.add(name)
        for line in metadata.requires(name) or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({**TARGET, "extra": ""}):
                todo.append(canonical(req.name))
    return seen


def image_packages() -> set[str]:
    """What the image holds, less `NEEDED` (the check needs those at the versions tested here)."""
    listed = IMAGE_LIST.read_text().split("\n")
    names = {canonical(n) for line in listed if not line.startswith("#") for n in line.split()}
    return names - {canonical(n) for n in NEEDED}


def pins(overrides: list[str] = ()) -> list[str]:
    """`name==version` for every distribution the bundle holds: as installed here unless `overrides` pins it; a
    pinned image package is carried at that version (where the image's own is too old for what is bundled)."""
    image = image_packages()
    chosen = {name: metadata.version(name) for name in closure(NEEDED, stop=tuple(image))}
    for pin in overrides:
        name, _, version = pin.partition("==")
        if not version or canonical(name) not in chosen | dict.fromkeys(image):
            raise SystemExit(f"--pin {pin}: give name==version of a bundled package ({', '.join(sorted(chosen))}) "
                             f"or of one the image holds ({IMAGE_LIST.name})")
        chosen[canonical(name)] = version
    return sorted(f"{name}=={version}" for name, version in chosen.items())


def _pip(*args: str, quiet_failure: bool = False) -> None:
    """pip; with `quiet_failure` its complaint is dropped when the caller has another way."""
    out = subprocess.run([sys.executable, "-m", "pip", *args], stderr=subprocess.PIPE if quiet_failure else None, text=True)
    if out.returncode:
        raise subprocess.CalledProcessError(out.returncode, out.args, stderr=out.stderr)


def download(requirements: list[str], dest: Path) -> None:
    """Wheels for the target, one requirement at a time: what has no wheel for it is built here, and must be
    pure Python to run there."""
    wheels = dest / WHEELS
    wheels.mkdir(parents=True)
    target = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
              *(a for p in PLATFORMS for a in ("--platform", p))]
    for req in requirements:
        try:
            _pip("download", "-q", "--no-deps", *target, "-d", str(wheels), req, quiet_failure=True)
        except subprocess.CalledProcessError:
            before = set(wheels.iterdir())
            _pip("wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), req)
            built = [w for w in set(wheels.iterdir()) - before if not w.name.endswith("-py3-none-any.whl")]
            if built:
                raise SystemExit(f"{req} has no wheel for Python 3.12 x86-64 and builds only a platform one: {built}")
    (dest / REQUIREMENTS).write_text("".join(r + "\n" for r in requirements))
    from realsize import TOKENIZER_CACHE

    for name in TOKENIZERS:
        if not (TOKENIZER_CACHE / name / "tokenizer.json").exists():
            raise SystemExit(f"no cached tokenizer {TOKENIZER_CACHE / name}: run `make tokenizers` first")
        shutil.copytree(TOKENIZER_CACHE / name, dest / "tokenizers" / name)
    files = [f for f in dest.rglob("*") if f.is_file()]
    sizes = sorted(((f.stat().st_size, str(f.relative_to(dest))) for f in files), reverse=True)
    total = sum(s for s, _ in sizes)
    if total > LIMIT_BYTES:
        shutil.rmtree(dest)  # no half-usable bundle is left beside the folder
        largest = ", ".join(f"{n} {s / 2**20:.1f} MiB" for s, n in sizes[:5])
        raise SystemExit(f"the bundle is {total / 2**20:.1f} MiB, over the {LIMIT_BYTES / 2**20:.0f} MiB a device run "
                         f"carries; largest: {largest}")
    print(f"{len(list(wheels.iterdir()))} wheels and {len(TOKENIZERS)} tokenizers, {total / 2**20:.1f} MiB")


def main() -> None:
    from splitpersona.run import replace_dir

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "gpu_bundle")
    ap.add_argument("--list", action="store_true", help="Print the pinned requirements; download nothing.")
    ap.add_argument("--pin", action="append", default=[], metavar="NAME==VERSION",
                    help="Another version than the one installed here, or one of the image's packages carried at this version.")
    args = ap.parse_args()
    requirements = pins(args.pin)
    if args.list:
        print("\n".join(requirements))
        return
    replace_dir(args.out, lambda tmp: download(requirements, tmp))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
