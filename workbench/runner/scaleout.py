"""Spread a benchmark or PCS run over Ray workers: the same results as one process, faster.

Ray is an optional extra (``pip install "workbench[ray]"``). Each worker is a Ray actor that
loads the model once and runs whole units of work — one (method, user) of a benchmark, so
per-user state (vectors, descriptions) is built once; one example of a PCS sweep. The driver
is the only process that writes: it appends a unit's records to ``outputs.jsonl`` when the unit
is complete, so an interrupted distributed run resumes like a local one, and a worker that dies
loses nothing but the unit it was running, which is queued again for another worker.

Greedy decoding and exact masking are deterministic, so a distributed run's predictions and
scores equal a serial run's (tests check it); the tables are summarized in the serial order.
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from workbench._util import check_int, check_number, dir_lock

RAY_EXTRA = 'pip install "workbench[ray]"  (or: pip install ray)'


def require_ray():
    """The ``ray`` module, or an ImportError naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise ImportError(f"--workers / --ray-address need Ray, an optional extra: {RAY_EXTRA}") from None
    return ray


@dataclass(frozen=True)
class Cluster:
    """Where the workers run and what each gets.

    Args:
        workers: number of worker processes (each loads the model once).
        address: an existing Ray cluster to join (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``);
            None starts a local one on this machine for the run and stops it afterwards.
        gpus_per_worker: GPUs Ray reserves for each worker (0: CPU); a worker with a GPU runs the
            model on it.
        threads_per_worker: torch threads per worker; None: this machine's cores split evenly
            (local cluster) or 1 (a joined cluster, where Ray's ``num_cpus`` decides placement).
        timeout_s: how long to wait for the cluster at ``address`` to answer before giving up
            with workbench's own message (:func:`check_address`), instead of Ray's retries.
    """

    workers: int = 2
    address: str | None = None
    gpus_per_worker: float = 0
    threads_per_worker: int | None = None
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        check_int("workers", self.workers, minimum=1)
        check_number("timeout_s", self.timeout_s, above=0)
        if self.threads_per_worker is not None:
            check_int("threads_per_worker", self.threads_per_worker, minimum=1)
        if not (isinstance(self.gpus_per_worker, (int, float)) and 0 <= self.gpus_per_worker):
            raise ValueError(f"gpus_per_worker must be a number >= 0, got {self.gpus_per_worker!r}")

    @property
    def threads(self) -> int:
        if self.threads_per_worker is not None:
            return self.threads_per_worker
        return max(1, (os.cpu_count() or 1) // self.workers) if self.address is None else 1

    def __repr__(self) -> str:
        where = self.address or "local"
        gpus = f", {self.gpus_per_worker} GPU each" if self.gpus_per_worker else ""
        return f"Cluster({self.workers} workers on {where}, {self.threads} threads each{gpus})"

    def map_examples(self, model_name: str, examples: list, kwargs: dict, **options: Any) -> list:
        """:func:`map_examples` on this cluster (what :func:`workbench.science.pcs.preference_scores` calls)."""
        return map_examples(model_name, examples, kwargs, self, **options)


def cluster_for(workers: int | None = None, address: str | None = None, gpus_per_worker: float | None = None,
                threads_per_worker: int | None = None, timeout_s: float = 10.0) -> "Cluster | None":
    """The cluster a run asked for, or None for a run in this process (no workers, no address).

    Checked before any data or model is read: worker options without workers, a missing ``ray``
    extra, and an address nobody answers (within ``timeout_s``) are clear errors.
    """
    if workers is None and address is None:
        if gpus_per_worker or threads_per_worker:
            raise ValueError("--gpus-per-worker / --threads-per-worker need --workers N (or --ray-address)")
        return None
    require_ray()  # a missing extra fails before the data or the model is read
    cluster = Cluster(workers=workers or 1, address=address, gpus_per_worker=gpus_per_worker,
                      threads_per_worker=threads_per_worker, timeout_s=timeout_s)
    check_address(cluster.address, cluster.timeout_s)  # nobody answering fails in seconds, in our words
    return cluster


def check_address(address: str | None, timeout_s: float = 10.0) -> None:
    """Fail fast, with workbench's own message, when nobody answers at a Ray ``address``
    (``host:port`` or ``ray://host:port``; ``auto`` and None are Ray's to resolve): Ray itself
    retries for minutes, printing only its internal log lines. Raises a ValueError for an
    address that is not ``host:port``, a ConnectionError when nothing answers in ``timeout_s``."""
    if address is None or address in ("auto", "local"):
        return
    where = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = where.rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--ray-address {address!r}: give host:port (e.g. head-node:6379), ray://host:10001 or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        why = "timed out" if isinstance(e, socket.timeout) else (e.strerror or type(e).__name__)
        raise ConnectionError(
            f"no Ray cluster answers at {address} ({why}, waited up to {timeout_s:g} s); start one there "
            f"(`ray start --head --port {port}`), check the address, or leave --ray-address out to run on "
            "this machine") from None


class _Pool:
    """Ray actors running one unit at a time; dead ones are replaced and their unit re-queued."""

    def __init__(self, cluster: Cluster, make_actor: Callable[[], Any], max_replacements: int | None = None):
        self.ray = require_ray()
        self.cluster = cluster
        self._make = make_actor
        self.actors = [make_actor() for _ in range(cluster.workers)]
        self.replaced = 0
        self.max_replacements = 2 * cluster.workers if max_replacements is None else max_replacements

    def run(self, units: list, call: Callable[[Any, Any], Any], on_result: Callable[[Any, Any], None],
            after_result: Callable[[Any], None] | None = None) -> None:
        """Run every unit (``call(actor, unit)`` returns an ObjectRef); ``on_result(unit, value)``
        in the driver as each finishes. A unit whose worker died is queued again."""
        ray = self.ray
        queue, idle, running = deque(units), list(self.actors), {}
        while queue or running:
            while queue and idle:
                actor, unit = idle.pop(), queue.popleft()
                running[call(actor, unit)] = (actor, unit)
            ready, _ = ray.wait(list(running), num_returns=1)
            ref = ready[0]
            actor, unit = running.pop(ref)
            try:
                value = ray.get(ref)
            except ray.exceptions.RayActorError as e:
                queue.appendleft(unit)
                idle.append(self._replace(actor, e))
                continue
            except ray.exceptions.RayTaskError as e:
                raise e.as_instanceof_cause() from None  # the method's own error, as serial would raise it
            idle.append(actor)
            on_result(unit, value)
            if after_result is not None:
                after_result(self)

    def _replace(self, dead: Any, error: Exception) -> Any:
        self.replaced += 1
        if self.replaced > self.max_replacements:
            raise RuntimeError(f"{self.replaced} workers died (last: {error}); giving up — see the Ray logs "
                               "(/tmp/ray/session_latest/logs) for why, e.g. out of memory") from error
        print(f"workbench: a worker died ({type(error).__name__}); its unit runs again on a new worker")
        new = self._make()
        self.actors[self.actors.index(dead)] = new
        return new

    def pids(self) -> list[int]:
        return self.ray.get([a.pid.remote() for a in self.actors])


class _Session:
    """``ray.init`` for the run; a cluster we started is shut down afterwards."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster

    def __enter__(self) -> Any:
        ray = require_ray()
        self.started = not ray.is_initialized()
        if self.started:
            kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "WARNING", "log_to_driver": True}
            if self.cluster.address is None:
                kwargs["num_cpus"] = self.cluster.workers * self.cluster.threads
                kwargs["object_store_memory"] = 256 * 1024**2  # the data and results are small
            else:
                check_address(self.cluster.address, self.cluster.timeout_s)
                kwargs["address"] = self.cluster.address
            # Workers import workbench from this interpreter's environment and find files
            # relative to the driver's directory.
            kwargs["runtime_env"] = {"env_vars": {"OMP_NUM_THREADS": str(self.cluster.threads),
                                                  "TOKENIZERS_PARALLELISM": "false"}}
            # Ray starts workers niced (15); here they do the run's work, so they get the
            # priority a serial run would have.
            os.environ.setdefault("RAY_worker_niceness", "0")
            ray.init(**kwargs)
        return ray

    def __exit__(self, *exc: Any) -> None:
        if self.started:
            require_ray().shutdown()


@dataclass(frozen=True)
class _Shape:
    """What the driver knows of the workers' model (it loads none): enough to check settings."""

    name: str
    n_layers: int
    n_heads: int


def _worker_class(ray: Any, cluster: Cluster) -> Any:
    class Worker:
        """Loads the model once; runs benchmark units and PCS examples."""

        def __init__(self, model_name: str, device: Any, dtype: Any, threads: int, payload: Any = None):
            import torch

            from workbench.core.loading import load_model

            torch.set_num_threads(threads)
            if cluster.gpus_per_worker and device is None:
                device = "cuda"
            self.model = load_model(model_name, device=device, dtype=dtype, progress=False)
            self.payload = payload
            self.prepared: set[str] = set()

        def pid(self) -> int:
            return os.getpid()

        def about(self) -> dict:
            m = self.model
            return {"model": m.name, "model_source": m.source, "dtype": str(m.dtype).replace("torch.", ""),
                    "device": str(m.device), "shape": _Shape(m.name, m.n_layers, m.n_heads)}

        def bench_unit(self, method_name: str, user_ids: list[str], pending_ids: list[str], batch_size: int = 1) -> list[dict]:
            from workbench.runner.bench import run_users

            methods, examples, dataset = self.payload
            m = methods[method_name]
            if method_name not in self.prepared:
                m.prepare_run(self.model, examples, dataset)
                self.prepared.add(method_name)
            wanted = set(pending_ids)
            user_examples = {u: [ex for ex in examples if ex.user_id == u] for u in user_ids}
            pending = {u: [ex for ex in exs if ex.id in wanted] for u, exs in user_examples.items()}
            return list(run_users(self.model, m, user_examples, pending, batch_size))

        def pcs_example(self, index: int, kwargs: dict) -> Any:
            from workbench.science.pcs import example_head_effects

            return example_head_effects(self.model, self.payload[index], **kwargs)

    options: dict[str, Any] = {"num_cpus": cluster.threads, "max_restarts": 0}
    if cluster.gpus_per_worker:
        options["num_gpus"] = cluster.gpus_per_worker
    return ray.remote(**options)(Worker)


def run_bench_distributed(
    model_name: str,
    dataset: Any,
    methods: list[str] | list[Any],
    out_dir: str | Path,
    cluster: Cluster,
    n: int | None = None,
    settings: Any = None,
    users: dict | None = None,
    device: Any = None,
    dtype: Any = None,
    progress: bool = True,
    tuned: list | None = None,
    batch_size: int = 1,
    _after_result: Callable[[_Pool], None] | None = None,
) -> Any:
    """:func:`workbench.runner.bench.run_bench` on Ray workers: the same directory, records and tables.

    The model is loaded by each worker (by ``model_name``), never by the driver. Units of work are
    (method, user) pairs, largest first; the driver appends each unit's records when it completes.
    ``_after_result`` is a test hook, called with the worker pool after each completed unit.
    """
    from workbench.runner.bench import check_batch_size, check_run, plan_run

    batch_size = check_batch_size(batch_size)
    check_run(model_name, dataset, methods, out_dir, n=n, settings=settings, users=users, tuned=tuned)  # before Ray
    ms, examples, out, info = plan_run(dataset, methods, out_dir, n, settings, users, tuned)
    check_address(cluster.address, cluster.timeout_s)
    with dir_lock(out, "benchmark directory"):  # the driver is the directory's one writer
        return _run_distributed(model_name, dataset, ms, examples, out, info, cluster, device, dtype, progress,
                                _after_result, batch_size)


def _run_distributed(model_name: str, dataset: Any, ms: list, examples: list, out: Path, info: dict, cluster: Cluster,
                     device: Any, dtype: Any, progress: bool, _after_result: Callable[[_Pool], None] | None,
                     batch_size: int = 1) -> Any:
    from tqdm.auto import tqdm

    from workbench.runner.bench import OUTPUTS_FILE, append_record, finish_run, group_by_user, open_run, read_outputs

    outputs_path = out / OUTPUTS_FILE
    done = read_outputs(outputs_path)
    units = bench_units(ms, group_by_user(examples), done, batch_size)

    with _Session(cluster) as ray:
        payload = ray.put(({m.name: m for m in ms}, examples, dataset))
        actor_class = _worker_class(ray, cluster)

        def make() -> Any:
            return actor_class.remote(model_name, device, dtype, cluster.threads, payload)

        pool = _Pool(cluster, make)
        about = ray.get(pool.actors[0].about.remote())
        shape = about.pop("shape")
        for m in ms:  # what depends on the model's shape, before any unit runs
            m.check_settings(shape)
        merged, done = open_run(out, {**about, **info})
        bar = tqdm(total=sum(len(u[2]) for u in units), desc=f"bench ({cluster.workers} workers)",
                   disable=not progress or not units)
        t0 = time.perf_counter()

        def on_result(unit: tuple, records: list[dict]) -> None:
            for rec in records:
                append_record(outputs_path, rec)
                done[(rec["method"], rec["id"])] = rec
            bar.update(len(records))
            bar.set_postfix_str(f"{unit[0]} {', '.join(unit[1])}")

        pool.run(units, lambda actor, u: actor.bench_unit.remote(*u), on_result, _after_result)
        bar.close()
        if units and progress:
            print(f"{sum(len(u[2]) for u in units)} outputs in {time.perf_counter() - t0:.0f} s on {cluster}"
                  + (f"; {pool.replaced} dead workers replaced" if pool.replaced else ""))
    return finish_run(out, done, merged, ms, examples)


def bench_units(ms: list, by_user: dict[str, list], done: dict, batch_size: int = 1) -> list[tuple]:
    """Units of work: ``(method, users, pending ids, batch_size)``. With ``batch_size`` 1 a unit is one
    user's pending examples; else consecutive users are joined until the unit holds at least
    ``batch_size`` examples, which the worker decodes ``batch_size`` at a time as a serial run
    would. Long units first (less idle tail)."""
    units = []
    for m in ms:
        users: list[str] = []
        ids: list[str] = []
        for user_id, exs in by_user.items():
            mine = [ex.id for ex in exs if (m.name, ex.id) not in done]
            if not mine:
                continue
            users.append(user_id)
            ids.extend(mine)
            if len(ids) >= batch_size:
                units.append((m.name, users, ids, batch_size))
                users, ids = [], []
        if ids:
            units.append((m.name, users, ids, batch_size))
    return sorted(units, key=lambda u: -len(u[2]))


def map_examples(model_name: str, examples: list, kwargs: dict, cluster: Cluster, device: Any = None,
                 dtype: Any = None, on_each: Callable[[], None] | None = None,
                 _after_result: Callable[[_Pool], None] | None = None) -> list:
    """``pcs.example_head_effects(model, example, **kwargs)`` of every example on Ray workers,
    returned in the examples' order; ``on_each()`` after each one (e.g. a progress bar)."""
    results: dict[int, Any] = {}
    with _Session(cluster) as ray:
        payload = ray.put(list(examples))
        actor_class = _worker_class(ray, cluster)
        pool = _Pool(cluster, lambda: actor_class.remote(model_name, device, dtype, cluster.threads, payload))

        def on_result(index: int, value: Any) -> None:
            results[index] = value
            if on_each is not None:
                on_each()

        pool.run(list(range(len(examples))), lambda actor, i: actor.pcs_example.remote(i, kwargs), on_result,
                 _after_result)
    return [results[i] for i in range(len(examples))]
