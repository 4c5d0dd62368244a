"""Per-rank (device) and per-node (host) memory of one training configuration, component by component.

Model states, with P parameters of which T train (LoRA: the adapters and the head), N data-parallel ranks and
w bytes per weight (2 in bf16/fp16, else 4):
- parameters: wP, or under ZeRO-3 the rank's partition wP/N plus the small "persistent" tensors kept whole;
- gradients: wT (ZeRO 0/1), wT/N (ZeRO 2/3); ZeRO-0 in bf16/fp16 also accumulates them in float32, 4T;
- optimizer states: float32 master weights, float32 gradient partition and the two Adam moments, 16 bytes per
  trainable parameter split over the ranks, from DeepSpeed's own estimator
  (`estimate_zero3_model_states_mem_needs` with CPU offload, which reports exactly these states); ZeRO-0 in
  float32 steps the parameters themselves: the two moments, 8T;
- ZeRO-3 live parameters: the module being computed gathered whole (and its gradient before the
  reduce-scatter) plus the prefetch bucket, capped by `stage3_max_live_parameters`;
- communication buckets: the gradient reduce bucket;
- optimizer step workspace: PyTorch's AdamW (`torch_adam`) makes one float32 temporary of the tensor it steps
  (the rank's flat partition under ZeRO 1-3, the largest tensor under ZeRO-0); DeepSpeed's CPU Adam steps in
  place.
Offloaded states (`offload_optimizer`, `offload_param`) move to the host. Loading: a rank reads the checkpoint
onto the host (ZeRO-3: whole, then keeps its partition) and casts it to w bytes or flattens its trainable part before training starts, so
the host peak is the larger of that and the training peak; on a CPU-only run the tensors so replaced stay in
the process's heap (`freed_while_loading`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import activations
from .shape import ModelShape

DEEPSPEED_REDUCE_BUCKET = 500_000_000   # DeepSpeed's defaults where the config sets nothing
DEEPSPEED_PREFETCH_BUCKET = 50_000_000
DEEPSPEED_PERSISTENCE_THRESHOLD = 100_000
DEEPSPEED_MAX_LIVE = 1_000_000_000
DEEPSPEED_SUB_GROUP = 1_000_000_000
GLIBC_MMAP_THRESHOLD_MAX = 32 * 2 ** 20


@dataclass(frozen=True)
class Hardware:
    nodes: int = 1
    gpus_per_node: int = 0
    cpu_processes_per_node: int = 1      # ranks per node of a CPU-only run
    gpu_memory: int | None = None
    host_memory: int = 0

    @property
    def ranks_per_node(self) -> int:
        return self.gpus_per_node or self.cpu_processes_per_node

    @property
    def world(self) -> int:
        return self.nodes * self.ranks_per_node


@dataclass(frozen=True)
class Setup:
    """What the memory depends on; `ds` is the resolved DeepSpeed config."""
    shape: ModelShape
    ds: dict
    group_size: int
    max_len: int
    per_device_batch: int
    chunk_size: int = 0
    collaborative: bool = False
    checkpointing: bool = False
    half_precision: bool = False


@dataclass
class Plan:
    per_rank: dict = field(default_factory=dict)   # device bytes (per process on a CPU-only run)
    per_node: dict = field(default_factory=dict)   # host bytes
    budget: dict = field(default_factory=dict)
    fits: bool = True
    margin: int = 0                                # budget minus need of the tighter of rank and node


def _zero(ds: dict) -> dict:
    return ds.get("zero_optimization", {}) or {}


def _offloaded(ds: dict, key: str) -> bool:
    return (_zero(ds).get(key) or {}).get("device", "none") in ("cpu", "nvme")


def deepspeed_optimizer_states(trainable: int, hardware: Hardware) -> float:
    """Float32 master, gradient partition and Adam moments per rank, by DeepSpeed's estimator (16 B/param/N)."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    per_node, *_ = estimate_zero3_model_states_mem_needs(
        trainable, 0, num_gpus_per_node=hardware.ranks_per_node, num_nodes=hardware.nodes, cpu_offload=True,
        cpu_offload_params=False, zero_init=True, additional_buffer_factor=1.0)
    return per_node / hardware.ranks_per_node


def alive_pairs(setup: Setup, world: int) -> tuple[int, int]:
    """(pairs in this rank's micro-batch, pairs whose activations are alive at once)."""
    width = -(-setup.group_size // world) if setup.collaborative and world > 1 else setup.group_size
    pairs = setup.per_device_batch * width
    return pairs, min(setup.chunk_size, pairs) if setup.chunk_size else pairs


def model_states(setup: Setup, hardware: Hardware) -> tuple[dict, dict]:
    """({component: bytes} on each rank's device, {component: bytes} each rank puts on the host)."""
    shape, ds, n = setup.shape, setup.ds, hardware.world
    stage = int(_zero(ds).get("stage", 0))
    w = 2 if setup.half_precision else 4
    total, trainable = shape.total_params, shape.trainable_params
    device, host = {}, {}
    if stage == 3:
        threshold = _zero(ds).get("stage3_param_persistence_threshold", DEEPSPEED_PERSISTENCE_THRESHOLD)
        persistent = sum(size for size in shape.param_sizes if size <= threshold)
        params = w * (total / n + persistent * (1 - 1 / n))
    else:
        params = w * total
    (host if stage == 3 and _offloaded(ds, "offload_param") else device)["parameters"] = params
    grads = w * trainable / (n if stage >= 2 else 1)
    if stage in (1, 2) and setup.half_precision:
        grads += w * trainable / n  # the step flattens the partition's 16-bit gradients, then casts to float32
    if stage == 0 and setup.half_precision:
        grads += 4 * trainable
    device["gradients"] = grads
    if stage == 0 and not setup.half_precision:
        states = 8 * trainable
    else:
        states = deepspeed_optimizer_states(trainable, hardware) - (4 * trainable / n if stage == 0 else 0)
    offload_states = stage > 0 and _offloaded(ds, "offload_optimizer")
    (host if offload_states else device)["optimizer_states"] = states
    if stage == 3:
        largest = shape.largest_module_params
        prefetch = _zero(ds).get("stage3_prefetch_bucket_size", DEEPSPEED_PREFETCH_BUCKET)
        live = min(_zero(ds).get("stage3_max_live_parameters", DEEPSPEED_MAX_LIVE), largest + prefetch)
        device["zero3_live_parameters"] = w * (live + largest)
    if stage > 0:
        device["communication_buckets"] = w * min(_zero(ds).get("reduce_bucket_size", DEEPSPEED_REDUCE_BUCKET),
                                                  trainable)
    torch_adam = bool(((ds.get("optimizer") or {}).get("params") or {}).get("torch_adam"))
    if not offload_states and (torch_adam or stage == 0):
        stepped = max(shape.trainable_sizes, default=0) if stage == 0 else min(trainable / n, DEEPSPEED_SUB_GROUP)
        device["optimizer_step_workspace"] = 4 * stepped
    return device, host


def loading_peak(setup: Setup, hardware: Hardware) -> float:
    """Host bytes a rank holds while it loads the checkpoint and DeepSpeed casts and flattens it."""
    shape, stage = setup.shape, int(_zero(setup.ds).get("stage", 0))
    c, w = shape.checkpoint_bytes, 2 if setup.half_precision else 4
    if stage == 3:  # every rank reads the whole checkpoint, then keeps its partition
        return c * shape.total_params + w * shape.total_params / hardware.world
    cast = c * shape.total_params + (w * shape.total_params if c != w else 0)
    flatten = w * shape.total_params + (w * shape.trainable_params if stage in (1, 2) else 0)
    return max(cast, flatten)


def freed_while_loading(setup: Setup) -> float:
    """Host bytes of the tensors freed while the engine is set up that glibc keeps: blocks below its mmap threshold
    (at most 32 MiB) go back to the heap, not to the system. ZeRO 0-2 free the checkpoint's tensors when they
    are cast, and the trainable ones when ZeRO 1-2 flattens them; ZeRO-3 frees each tensor built whole before
    it is partitioned and the whole checkpoint read into the partitions."""
    shape, stage = setup.shape, int(_zero(setup.ds).get("stage", 0))
    c, w = shape.checkpoint_bytes, 2 if setup.half_precision else 4

    def kept(sizes, nbytes):
        return sum(nbytes * size for size in sizes if nbytes * size <= GLIBC_MMAP_THRESHOLD_MAX)

    if stage == 3:
        return float(kept(shape.param_sizes, w) + kept(shape.param_sizes, c))
    replaced = shape.param_sizes if c != w else shape.trainable_sizes if stage in (1, 2) else ()
    return float(kept(replaced, c))


def estimate(setup: Setup, hardware: Hardware) -> Plan:
    on_gpu = hardware.gpus_per_node > 0
    device, host = model_states(setup, hardware)
    pairs, alive = alive_pairs(setup, hardware.world)
    w = 2 if setup.half_precision else 4
    device["activations"] = alive * activations.pair_bytes(setup.shape, setup.max_len, w, on_gpu,
                                                           setup.checkpointing)
    device["score_buffers"] = activations.score_bytes(setup.shape, pairs, alive)
    load = loading_peak(setup, hardware)
    ranks = hardware.ranks_per_node
    if on_gpu:
        per_rank = {k: int(v) for k, v in device.items()}
        per_rank["total"] = sum(per_rank.values())
        steady = {f"offloaded_{k}": int(v * ranks) for k, v in host.items()}
        per_node = {**steady, "loading": int(load * ranks)}
        per_node["total"] = max(sum(steady.values()), per_node["loading"])
    else:
        per_rank = {k: int(v) for k, v in {**device, **host}.items()}
        per_rank["freed_while_loading"] = int(freed_while_loading(setup))
        per_rank["loading"] = int(load)
        per_rank["total"] = max(sum(v for k, v in per_rank.items() if k != "loading"), per_rank["loading"])
        per_node = {k: v * ranks for k, v in per_rank.items()}
    budget = {"per_rank": hardware.gpu_memory if on_gpu else None, "per_node": hardware.host_memory}
    margins = [budget["per_node"] - per_node["total"]]
    if on_gpu:
        margins.append(budget["per_rank"] - per_rank["total"])
    margin = min(margins)
    return Plan(per_rank, per_node, budget, margin >= 0, int(margin))
