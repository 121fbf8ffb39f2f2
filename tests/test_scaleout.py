"""Ray scale-out: a distributed run equals a serial one, survives a dead worker, resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from workbench.runner.bench import run_bench
from workbench.data.lamp import load_lamp4_news
from workbench.science.pcs import preference_scores
from workbench.data.history import profile_examples

ray = pytest.importorskip("ray", reason="the ray extra is installed by install.sh test")
from workbench.runner.scaleout import Cluster, run_bench_distributed  # noqa: E402

pytestmark = pytest.mark.ray
METHODS = ["generic", "rag"]


@pytest.fixture(scope="module")
def ray_session(smol_cache):
    # One local cluster for the module (the runs see it is up and leave it running); 1 thread
    # per worker, as on this 2-core machine. Workers read SmolLM2 from the tests' cache.
    os.environ.setdefault("RAY_worker_niceness", "0")  # as workbench.runner.scaleout does
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", object_store_memory=128 * 1024**2,
             runtime_env={"env_vars": {"WORKBENCH_CACHE": str(smol_cache), "OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def serial(tiny, tmp_path_factory):
    data = load_lamp4_news()
    result = run_bench(tiny, data, METHODS, tmp_path_factory.mktemp("serial"), n=6, progress=False)
    return data, result


def _lines(out) -> list[dict]:
    return [json.loads(line) for line in (out / "outputs.jsonl").read_text().splitlines()]


def test_distributed_bench_equals_serial_and_resumes(ray_session, serial, tmp_path):
    data, reference = serial
    two = Cluster(workers=2, threads_per_worker=1)
    first = run_bench_distributed("tiny-random", data, METHODS, tmp_path, two, n=3, progress=False)
    kept = {(r["method"], r["id"]): r["prediction"] for r in _lines(tmp_path)}
    # resumed with batched units (consecutive users, 4 rows at a time): still the serial outputs
    result = run_bench_distributed("tiny-random", data, METHODS, tmp_path, two, n=6, progress=False, batch_size=4)

    cols = ["method", "id", "prediction", "rouge1", "rougeL"]
    assert result.outputs[cols].equals(reference.outputs[cols])  # example for example, in the serial order
    scores = [c for c in reference.summary.columns if c != "seconds_per_example"]
    assert result.summary[scores].equals(reference.summary[scores])  # same intervals: same row order
    lines = _lines(tmp_path)
    assert len(lines) == 12 and len({(r["method"], r["id"]) for r in lines}) == 12  # nothing twice
    assert {k: v for k, v in kept.items()} == {(r["method"], r["id"]): r["prediction"] for r in lines[:6]}
    assert len(first.outputs) == 6
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["model"] == "tiny-random" and run["n"] == 6 and run["dtype"] == "float32"


def test_a_killed_worker_loses_nothing(ray_session, serial, tmp_path):
    data, reference = serial
    killed: list[int] = []

    def kill_one(pool) -> None:
        if not killed:  # after the first finished unit: a real crash (SIGKILL), not a polite stop
            pid = pool.pids()[0]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    result = run_bench_distributed("tiny-random", data, METHODS, tmp_path, Cluster(workers=2, threads_per_worker=1),
                                   n=6, progress=False, _after_result=kill_one)
    assert killed
    lines = _lines(tmp_path)
    assert sorted((r["method"], r["id"]) for r in lines) == sorted(zip(reference.outputs["method"], reference.outputs["id"]))
    assert result.outputs[["method", "id", "prediction"]].equals(reference.outputs[["method", "id", "prediction"]])


def test_per_user_lora_spread_over_workers_equals_serial(ray_session, tiny, tmp_path):
    # lora-user trains an adapter per user: on the workers each trains its users' adapters
    # (seeded), and the outputs equal a serial run's.
    from workbench.methods import GenerationSettings, make_methods

    data = load_lamp4_news()
    (method,) = make_methods(["lora-user"], GenerationSettings(max_new_tokens=4))
    method.epochs, method.max_records, method.lr, method.cache = 1, 3, 1e-2, False
    serial = run_bench(tiny, data, [method], tmp_path / "serial", n=6, progress=False)
    spread = run_bench_distributed("tiny-random", data, [method], tmp_path / "spread",
                                   Cluster(workers=2, threads_per_worker=1), n=6, progress=False)
    cols = ["method", "id", "prediction", "lora_loss"]
    assert spread.outputs[cols].equals(serial.outputs[cols])
    assert serial.outputs["lora_records"].eq(3).all()


def test_distributed_pcs_equals_serial(ray_session, tiny):
    examples = profile_examples(load_lamp4_news(), n=3, k=2)
    serial = preference_scores(tiny, examples, mode="exact", contrast="history", progress=False)
    spread = preference_scores(tiny, examples, mode="exact", contrast="history", progress=False,
                               cluster=Cluster(workers=2, threads_per_worker=1))
    assert np.array_equal(spread.per_example, serial.per_example)
    assert spread.meta["example_ids"] == serial.meta["example_ids"]


def test_cluster_arguments_are_checked():
    with pytest.raises(ValueError, match="workers"):
        Cluster(workers=0)
    with pytest.raises(ValueError, match="gpus_per_worker"):
        Cluster(workers=2, gpus_per_worker=-1)
    assert "2 workers on local, 1 threads each" in repr(Cluster(workers=2, threads_per_worker=1))


def test_cli_worker_options_without_workers_are_an_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "workbench.app.cli", "bench", "--model", "tiny-random",
                           "--threads-per-worker", "2", "--out", str(tmp_path / "b")],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "need --workers" in proc.stderr


def test_without_ray_the_error_names_the_extra(monkeypatch):
    from workbench.runner import scaleout

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"workbench\[ray\]"):
        scaleout.require_ray()


@pytest.mark.real
def test_distributed_bench_on_smollm2_equals_serial(ray_session, smol, tmp_path):
    data = load_lamp4_news()
    serial = run_bench(smol, data, ["rag"], tmp_path / "serial", n=4, progress=False)
    spread = run_bench_distributed("smollm2-135m", data, ["rag"], tmp_path / "ray", Cluster(workers=2, threads_per_worker=1),
                                   n=4, device="cpu", progress=False)
    assert spread.outputs["prediction"].tolist() == serial.outputs["prediction"].tolist()
    assert all(p.strip() for p in serial.outputs["prediction"])  # real headlines, not empty strings
