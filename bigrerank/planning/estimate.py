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
Offloaded states (`offload_optimizer`, `offload_param`) move to the host; ZeRO 1-2's optimizer offload adds
its staging buffers (`offload_buffers`). Loading: a rank reads the checkpoint
onto the host (ZeRO-3: whole, then keeps its partition) and casts it to w bytes or flattens its trainable part before training starts, so
the host peak is the larger of that and the training peak; on a CPU-only run the tensors so replaced stay in
the process's heap (`freed_while_loading`); training leaves freed blocks there too, one more recompute's
activations in a step that recomputes (gradient-cache chunks, checkpointed layers) and LoRA's temporaries; the
larger of loading's and training's counts (`heap_free`).
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


def offload_buffers(setup: Setup, hardware: Hardware) -> tuple[float, float]:
    """(host, device) bytes of ZeRO 1-2's optimizer-offload buffers, from `DeepSpeedZeroOptimizer.__init__`
    (deepspeed/runtime/zero/stage_1_and_2.py): `param_buffer_of_bit16_for_cpu_offload_groups`, a w-byte copy
    of the rank's partition on the host that the CPU step writes the updated weights into, and the
    `temp_grad_buffer_for_cpu_offload` / `_for_gpu_offload` pair, w bytes of the largest trainable parameter
    each, one on the host and one on the device."""
    w = 2 if setup.half_precision else 4
    largest = max(setup.shape.trainable_sizes, default=0)
    return w * setup.shape.trainable_params / hardware.world + w * largest, w * largest


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
    if offload_states and stage in (1, 2):
        host_buffers, device["offload_gradient_staging"] = offload_buffers(setup, hardware)
        host["cpu_offload_buffers"] = host_buffers
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


def freed_recompute_activations(setup: Setup, pairs: int, alive: int, alive_activations: float) -> float:
    """Host bytes a CPU-only step that recomputes leaves in glibc's heap: one more recompute's activations
    (a gradient-cache chunk's, `alive_activations`, or with checkpointing one layer's of the pairs alive).

    glibc's `free` (malloc/malloc.c) raises the mmap threshold to the size of a freed mmapped block, up to
    `DEFAULT_MMAP_THRESHOLD_MAX` (32 MiB), so after the first recompute its activation tensors come from the
    heap, which goes back to the system only above its highest live block (`systrim`). Each recompute's
    backward frees its activations while it allocates blocks that outlive it (the step's gradients, kept
    local by `coalesce_grad_reduction`; ZeRO-3's re-gathered parameters), which split the freed space, so the
    next recompute is partly served from the top of the heap. Measured on MiniLM as the peak RSS above the
    same run's with a fixed threshold (`MALLOC_MMAP_THRESHOLD_=131072`: every tensor mmapped, returned when
    freed): 0.9 chunk's activations under ZeRO-2 (8 pairs of 128 tokens a chunk), 1.0 under ZeRO-3 offload and
    1.5 per rank under collaborative ZeRO-3 (8 pairs of 256), 2.6 layers with checkpointing (64 pairs of 128);
    the planner counts one. A plain step recomputes nothing."""
    if setup.checkpointing:
        w = 2 if setup.half_precision else 4
        return alive * setup.max_len * activations.layer_bytes_per_token(setup.shape, setup.max_len, w, False)
    return alive_activations if setup.chunk_size and pairs > alive else 0.0


def freed_lora_temporaries(setup: Setup, alive: int) -> float:
    """Host bytes of the LoRA forward's temporaries that a CPU-only run leaves in glibc's heap.

    peft's `lora.Linear.forward` (peft/tuners/lora/layer.py) computes `result + lora_B(lora_A(dropout(x))) *
    scaling`: lora_B's output, its scaled copy and the base layer's output (replaced by the sum) are three
    tensors of the projection's output width that die inside the forward, between tensors autograd keeps, so
    their heap blocks (below the 32 MiB mmap threshold) stay resident; counted all (none reused), for every
    layer whose activations are kept (one, the layer recomputed, with checkpointing). Measured on a MiniLM
    forward of 8 pairs of 256 tokens: 460 MiB free in the heap at its end against 147 MiB without LoRA, 313 MiB
    with two of the three computed in place; the training run's peak RSS was 500 MiB above its own with a
    fixed mmap threshold (this counts 486)."""
    shape = setup.shape
    if not shape.lora_rank:
        return 0.0
    b = 2 if setup.half_precision else 4
    layers = 1 if setup.checkpointing else shape.layers
    return 3 * b * shape.lora_outputs_per_layer * layers * setup.max_len * alive


def heap_free(setup: Setup, pairs: int, alive: int, alive_activations: float) -> dict:
    """{component: bytes} of the free blocks a CPU-only run's heap keeps resident, and `heap_free`: what
    counts. malloc serves a request from a free block that fits before it extends the heap (`_int_malloc`),
    so training's allocations reuse what loading freed first: the larger of the two counts, not their sum."""
    freed = {"freed_while_loading": freed_while_loading(setup),
             "freed_recompute_activations": freed_recompute_activations(setup, pairs, alive, alive_activations),
             "freed_lora_temporaries": freed_lora_temporaries(setup, alive)}
    training = freed["freed_recompute_activations"] + freed["freed_lora_temporaries"]
    return {**freed, "heap_free": max(freed["freed_while_loading"], training)}


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
        live = {k: int(v) for k, v in {**device, **host}.items()}
        heap = {k: int(v) for k, v in heap_free(setup, pairs, alive, device["activations"]).items()}
        per_rank = {**live, **heap, "loading": int(load)}
        per_rank["total"] = max(sum(live.values()) + heap["heap_free"], per_rank["loading"])
        per_node = {k: v * ranks for k, v in per_rank.items()}
    budget = {"per_rank": hardware.gpu_memory if on_gpu else None, "per_node": hardware.host_memory}
    margins = [budget["per_node"] - per_node["total"]]
    if on_gpu:
        margins.append(budget["per_rank"] - per_rank["total"])
    margin = min(margins)
    return Plan(per_rank, per_node, budget, margin >= 0, int(margin))
