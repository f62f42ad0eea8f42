"""The Learner's fit loop under torchrun: 2 CPU processes on gloo equal one process with the global batch."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import ddp_worker  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LOCAL_BATCH, WORLD = 8, 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("this torch build has no gloo backend")
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "TLKIT_PROGRESS": "0"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(WORLD),
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           str(Path(__file__).parent / "ddp_worker.py"), str(out), str(LOCAL_BATCH)]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def one_process():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield {b: ddp_worker.train(b) for b in (LOCAL_BATCH * WORLD, LOCAL_BATCH)}
    finally:
        torch.set_num_threads(before)


def test_each_process_sees_its_shard(ddp_results):
    steps_per_epoch = ddp_worker.N_SAMPLES // (LOCAL_BATCH * WORLD)
    for r in ddp_results:
        assert r["world_size"] == WORLD
        assert r["steps"] == ddp_worker.EPOCHS * steps_per_epoch


def test_processes_end_with_identical_weights(ddp_results):
    a, b = (r["state"] for r in ddp_results)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_ddp_equals_one_process_with_the_global_batch(ddp_results, one_process):
    single = one_process[LOCAL_BATCH * WORLD]["state"]
    ddp = ddp_results[0]["state"]
    for k in single:
        torch.testing.assert_close(ddp[k], single[k], rtol=1e-5, atol=1e-6)
    # and the comparison is sensitive: training with the per-process batch ends elsewhere
    local = one_process[LOCAL_BATCH]["state"]
    assert max((local[k] - single[k]).abs().max().item() for k in single) > 1e-3


def test_the_lessons_launcher_keeps_torchruns_own_files_in_its_folder(tmp_path):
    """`tlkit.ddp.run_two_processes` (lesson 07): two ranks come back, and torchrun's log folders are made
    inside the folder the caller deletes, not left behind in /tmp."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("this torch build has no gloo backend")
    from tlkit import ddp
    results = ddp.run_two_processes(tmp_path, batch_per_process=4)
    assert len(results) == 2
    assert list(tmp_path.glob("torchelastic_*")), sorted(p.name for p in tmp_path.iterdir())
