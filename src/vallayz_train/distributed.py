"""Data-parallel training across processes started by ``torchrun``.

``torchrun --nproc-per-node N -m vallayz fit ...`` starts N copies of the ordinary command; each
reads its place from the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``). The trainer
then cuts every global batch into equal slices, each process computes the loss of its own
slices, and the gradients are averaged across processes with one all-reduce before the
optimizer step, so every process holds the same weights after every step. Only the first
process (rank 0) writes the run folder; validation runs there and its outcome is broadcast.

The process group is set up here and by the command line, never by the library.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import zlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from vallayz.errors import VallayzUserError

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
"""The variables ``torchrun`` sets in each process it starts."""


@dataclass(frozen=True)
class World:
    """This process's place among the processes of a data-parallel run."""

    # Index of this process among all processes, 0 .. size - 1; rank 0 writes the run folder.
    rank: int = 0
    # Number of processes.
    size: int = 1
    # Index of this process on its machine (its GPU, when training on CUDA).
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes checkpoints, logs and the summary."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether there is more than one process (and a process group to talk through)."""
        return self.size > 1


def world_from_env(environ: dict[str, str] | None = None) -> World | None:
    """The world ``torchrun`` describes in the environment, or ``None`` outside ``torchrun``.

    Raises:
        VallayzUserError: when only some of the variables are set, or they are not integers
            with ``0 <= RANK < WORLD_SIZE``.
    """
    env = dict(os.environ if environ is None else environ)
    given = [name for name in ENV if name in env]
    if not given:
        return None
    if len(given) != len(ENV):
        missing = [name for name in ENV if name not in env]
        raise VallayzUserError(
            f"the environment sets {', '.join(given)} but not {', '.join(missing)}; start "
            "distributed training with torchrun --nproc-per-node N -m vallayz fit ..., or unset "
            "them to train in one process"
        )
    try:
        rank, size, local = (int(env[name]) for name in ENV)
    except ValueError as err:
        raise VallayzUserError(
            f"RANK, WORLD_SIZE and LOCAL_RANK must be integers ({err}); start distributed "
            "training with torchrun"
        ) from err
    if size < 1 or not 0 <= rank < size or local < 0:
        raise VallayzUserError(
            f"RANK={rank}, WORLD_SIZE={size}, LOCAL_RANK={local} do not describe a process "
            "group (0 <= RANK < WORLD_SIZE); start distributed training with torchrun"
        )
    return World(rank=rank, size=size, local_rank=local)


def start(world: World, device: str) -> str:
    """Joins the process group of ``world`` (NCCL on CUDA, gloo on CPU) and returns the device
    this process trains on: ``cuda:LOCAL_RANK`` for ``"cuda"``, else ``device`` unchanged.

    ``MASTER_ADDR`` and ``MASTER_PORT`` come from ``torchrun``.
    """
    if device.startswith("cuda:"):
        raise VallayzUserError(
            f"device {device!r} names one GPU, but under torchrun each process takes the GPU of "
            "its LOCAL_RANK; use --device cuda (and CUDA_VISIBLE_DEVICES to choose the GPUs)"
        )
    if device == "cuda":
        if not torch.cuda.is_available():
            raise VallayzUserError(
                "--device cuda was asked for but CUDA is not available; use --device cpu"
            )
        if world.local_rank >= torch.cuda.device_count():
            raise VallayzUserError(
                f"process {world.rank} has LOCAL_RANK {world.local_rank} but this machine has "
                f"{torch.cuda.device_count()} GPU(s); start at most that many processes per "
                "node (--nproc-per-node)"
            )
        device = f"cuda:{world.local_rank}"
        torch.cuda.set_device(device)
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if not dist.is_initialized():
        store = rendezvous(world)
        dist.init_process_group(
            backend,
            store=store,
            rank=world.rank,
            world_size=world.size,
            timeout=timedelta(minutes=30),
        )
    return device


def _reachable(address: str, port: int, seconds: float) -> bool:
    """Whether something accepts a connection at ``address:port`` within ``seconds`` (tried
    again every fifth of a second), checked before the store's client connects, whose own
    timeout prints C++ stack traces."""
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection((address, port), timeout=max(min(left, 1.0), 0.05)):
                return True
        except OSError:
            if left <= 0:
                return False
            time.sleep(min(0.2, max(left, 0.0)))


RENDEZVOUS_ENV = "VALLAYZ_RENDEZVOUS_TIMEOUT"
"""Seconds the processes of a run started without ``torchrun`` wait for each other (default
:data:`RENDEZVOUS_SECONDS`)."""
RENDEZVOUS_SECONDS = 30.0

# How the message of a failed rendezvous ends.
_START_HINT = (
    "start distributed training with torchrun --nproc-per-node N -m vallayz fit ..., or "
    "unset RANK, WORLD_SIZE and LOCAL_RANK to train in one process"
)


def rendezvous(world: World, environ: dict[str, str] | None = None) -> Any:
    """The store through which the processes of ``world`` meet, or ``None`` under ``torchrun``
    (whose agent already holds one that ``env://`` joins).

    Started by hand (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` set without ``torchrun``), the
    processes meet at ``MASTER_ADDR:MASTER_PORT`` within :data:`RENDEZVOUS_ENV` seconds, and a
    process the others never join fails with a message rather than waiting for half an hour.

    Raises:
        VallayzUserError: when ``MASTER_ADDR`` or ``MASTER_PORT`` is missing or invalid, or the
            processes did not all meet in time.
    """
    env = dict(os.environ if environ is None else environ)
    if env.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        return None
    address, port, seconds = _meeting_point(world, env)
    print(
        f"process {world.rank} of {world.size}: waiting up to {seconds:g} s for the others at "
        f"{address}:{port} ({RENDEZVOUS_ENV} changes it)",
        file=sys.stderr,
        flush=True,
    )
    if world.rank != 0 and not _reachable(address, port, seconds):
        raise VallayzUserError(
            f"nothing answered at MASTER_ADDR={address}, MASTER_PORT={port} within {seconds:g} s "
            f"(process 0 of the run listens there); start every process of the run with the "
            f"same MASTER_ADDR and MASTER_PORT, or {_START_HINT}"
        )
    store = _tcp_store(world, address, port, seconds)
    store.set_timeout(timedelta(minutes=30))
    return store


def _meeting_point(world: World, env: dict[str, str]) -> tuple[str, int, float]:
    """``MASTER_ADDR``, ``MASTER_PORT`` and the seconds of :data:`RENDEZVOUS_ENV` in ``env``,
    checked.

    Raises:
        VallayzUserError: when the address or the port is missing or invalid, or the seconds
            are not a positive number.
    """
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not env.get(name)]
    if missing:
        raise VallayzUserError(
            f"RANK and WORLD_SIZE={world.size} are set but not {' or '.join(missing)}, so the "
            f"processes have nowhere to meet; {_START_HINT}"
        )
    address, port_text = env["MASTER_ADDR"], env["MASTER_PORT"]
    try:
        port = int(port_text)
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise VallayzUserError(f"MASTER_PORT={port_text!r} is not a port (1..65535); {_START_HINT}")
    try:
        seconds = float(env.get(RENDEZVOUS_ENV, RENDEZVOUS_SECONDS))
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise VallayzUserError(
            f"{RENDEZVOUS_ENV}={env[RENDEZVOUS_ENV]!r} must be a positive number of seconds"
        )
    try:
        socket.getaddrinfo(address, port)
    except (OSError, UnicodeError) as err:
        raise VallayzUserError(
            f"MASTER_ADDR={address!r} does not name a reachable host ({err}); give the address "
            f"of the machine of process 0, or {_START_HINT}"
        ) from err
    return address, port, seconds


def _tcp_store(world: World, address: str, port: int, seconds: float) -> Any:
    """The TCP store at ``address:port`` (served by process 0), once every process of
    ``world`` has joined it.

    Raises:
        VallayzUserError: when the processes did not all join within ``seconds``.
    """
    try:
        return dist.TCPStore(  # type: ignore[attr-defined]
            address,
            port,
            world.size,
            is_master=world.rank == 0,
            timeout=timedelta(seconds=seconds),
            wait_for_workers=True,
        )
    except (RuntimeError, OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise VallayzUserError(
            f"the {world.size} processes did not meet at {address}:{port} within {seconds:g} s "
            f"({reason}); start every process of the run with the same MASTER_ADDR and "
            f"MASTER_PORT, or {_START_HINT}"
        ) from err


def stop() -> None:
    """Leaves the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    """Waits until every process of ``world`` gets here (nothing in one process)."""
    if world.distributed:
        dist.barrier()


def _device() -> torch.device:
    """Where the process group's tensors must live: this process's GPU for NCCL, else CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _to_bytes(value: Any) -> torch.Tensor:
    data = json.dumps(value).encode()
    return torch.tensor(list(data), dtype=torch.uint8, device=_device())


def broadcast(world: World, value: Any) -> Any:
    """Rank 0's ``value`` (a JSON-serialisable object), on every process."""
    if not world.distributed:
        return value
    data = _to_bytes(value) if world.is_main else torch.empty(0, dtype=torch.uint8)
    size = torch.tensor([data.numel()], dtype=torch.int64, device=_device())
    dist.broadcast(size, src=0)
    if not world.is_main:
        data = torch.empty(int(size), dtype=torch.uint8, device=_device())
    dist.broadcast(data, src=0)
    return json.loads(bytes(data.cpu().tolist()).decode())


def gather(world: World, value: Any) -> list[Any]:
    """Every process's ``value`` (a JSON-serialisable object), in rank order, on every
    process."""
    if not world.distributed:
        return [value]
    data = _to_bytes(value)
    size = torch.tensor([data.numel()], dtype=torch.int64, device=_device())
    sizes = [torch.empty_like(size) for _ in range(world.size)]
    dist.all_gather(sizes, size)
    longest = max(int(n) for n in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8, device=_device())
    padded[: data.numel()] = data
    parts = [torch.empty_like(padded) for _ in range(world.size)]
    dist.all_gather(parts, padded)
    return [
        json.loads(bytes(part[: int(n)].cpu().tolist()).decode())
        for part, n in zip(parts, sizes, strict=True)
    ]


def broadcast_parameters(world: World, model: nn.Module) -> None:
    """Copies rank 0's parameters and buffers into every other process's model, so that all
    start from the same weights whatever each process initialised or loaded."""
    if not world.distributed:
        return
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, src=0)


def combine_terms(
    world: World, failure: int, shards: list[dict[str, float]]
) -> tuple[int, dict[str, float]]:
    """The largest of every process's ``failure`` code, and each loss term's mean over the
    slices of the global batch that have it (``shards``: the terms of this process's slices);
    both identical on every process.

    A term that some slices lack (a pair of modalities absent from a slice's rows) is the mean
    over the slices that have it. The term names are exchanged only when the processes' names
    differ, so a step costs two small all-reduces besides the gradients'.
    """
    # In order of first appearance, so that one process logs the terms in the method's order.
    names = list(dict.fromkeys(name for terms in shards for name in terms))
    if world.distributed:
        key = zlib.crc32("\x1f".join(names).encode())
        flags = torch.tensor([failure, key, -key], dtype=torch.int64, device=_device())
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        failure = int(flags[0])
        if int(flags[1]) != -int(flags[2]):  # the largest key is not also the smallest
            names = list(dict.fromkeys(name for part in gather(world, names) for name in part))
    sums = torch.zeros(2, len(names), dtype=torch.float64)
    for terms in shards:
        for i, name in enumerate(names):
            if name in terms:
                sums[0, i] += terms[name]
                sums[1, i] += 1
    if world.distributed:
        sums = sums.to(_device())
        dist.all_reduce(sums)
    means = (sums[0] / sums[1]).tolist()
    return failure, dict(zip(names, means, strict=True))


def average_gradients(world: World, parameters: list[nn.Parameter]) -> None:
    """Replaces each parameter's gradient by its mean over the processes, in one all-reduce.

    A parameter that no process gave a gradient (a modality absent from every slice) keeps
    ``grad = None``, as in one process, so AdamW skips it there too; one that only some
    processes gave a gradient counts zero for the others.
    """
    if not world.distributed or not parameters:
        return
    device = parameters[0].device
    chunks = [
        (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
        for p in parameters
    ]
    present = torch.tensor(
        [p.grad is not None for p in parameters], dtype=torch.float32, device=device
    )
    flat = torch.cat([*chunks, present])
    dist.all_reduce(flat)
    flat[: -len(parameters)] /= world.size
    seen = flat[-len(parameters) :] > 0
    offset = 0
    for parameter, has_grad in zip(parameters, seen.tolist(), strict=True):
        size = parameter.numel()
        if has_grad:
            grad = flat[offset : offset + size].view_as(parameter).to(parameter.dtype)
            parameter.grad = grad.clone()
        else:
            parameter.grad = None
        offset += size
