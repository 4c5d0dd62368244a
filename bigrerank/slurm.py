"""Slurm allocations -> torch.distributed environment and DeepSpeed hostfiles, without `scontrol`.

    python -m bigrerank.slurm env        # inside an srun task: `export MASTER_ADDR=… RANK=…` lines for `eval`
    python -m bigrerank.slurm rendezvous # anywhere in the allocation: MASTER_ADDR and MASTER_PORT only

`hostfile_slots` is what `bigrerank hostfile` writes: one `host slots=N` line per allocated node.
"""
from __future__ import annotations

import os
import re
import shlex
import sys
from typing import Mapping

from .errors import InputError

ENVIRONMENT = "slurm environment"
PORT_BASE, PORT_SPAN = 10000, 20000  # derived ports stay in 10000..29999, below Linux's ephemeral range
_BRACKETS = re.compile(r"\[([^\[\]]*)\]")
_TASK_COUNT = re.compile(r"(\d+)(?:\(x(\d+)\))?")


def _require(env: Mapping[str, str], name: str, hint: str = "run inside a slurm job step (srun)") -> str:
    value = env.get(name, "").strip()
    if not value:
        raise InputError(ENVIRONMENT, f"not set; {hint}", field=name)
    return value


def _require_int(env: Mapping[str, str], name: str, minimum: int = 0) -> int:
    value = _require(env, name)
    if not value.isdigit() or int(value) < minimum:
        raise InputError(ENVIRONMENT, f"expected an integer >= {minimum}, got '{value}'", field=name)
    return int(value)


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets: 'a[1,3],b' -> ['a[1,3]', 'b']."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _expand_range(spec: str, hostlist: str, name: str) -> list[str]:
    """'01-03' -> ['01', '02', '03'] (zero padding kept); '7' -> ['7']."""
    low, sep, high = spec.partition("-")
    if not low.isdigit() or (sep and not high.isdigit()):
        raise InputError(ENVIRONMENT, f"bad range '{spec}' in host list '{hostlist}'", field=name)
    if not sep:
        return [low]
    if int(high) < int(low):
        raise InputError(ENVIRONMENT, f"descending range '{spec}' in host list '{hostlist}'", field=name)
    return [str(n).zfill(len(low)) for n in range(int(low), int(high) + 1)]


def _expand_item(item: str, hostlist: str, name: str) -> list[str]:
    match = _BRACKETS.search(item)
    if match is None:
        if "[" in item or "]" in item or not item:
            raise InputError(ENVIRONMENT, f"malformed host list '{hostlist}'", field=name)
        return [item]
    head, tail = item[:match.start()], item[match.end():]
    numbers = [n for spec in match.group(1).split(",") for n in _expand_range(spec, hostlist, name)]
    tails = _expand_item(tail, hostlist, name) if tail else [""]
    return [f"{head}{n}{rest}" for n in numbers for rest in tails]


def expand_hostlist(hostlist: str, name: str = "SLURM_JOB_NODELIST") -> list[str]:
    """Slurm's compressed host list in allocation order: 'gpu[01-02,07],login5' -> gpu01 gpu02 gpu07 login5."""
    hosts = [host for item in _split_top_level(hostlist.strip()) for host in _expand_item(item, hostlist, name)]
    if len(set(hosts)) != len(hosts):
        raise InputError(ENVIRONMENT, f"host list '{hostlist}' names a host twice", field=name)
    return hosts


def expand_tasks_per_node(spec: str, name: str = "SLURM_TASKS_PER_NODE") -> list[int]:
    """Slurm's per-node counts, one per node: '2(x3),1' -> [2, 2, 2, 1]."""
    counts = []
    for item in spec.strip().split(","):
        match = _TASK_COUNT.fullmatch(item)
        if match is None:
            raise InputError(ENVIRONMENT, f"expected counts like '2(x3),1', got '{spec}'", field=name)
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def master_port(env: Mapping[str, str]) -> int:
    """MASTER_PORT when set, else a port derived from the job id (the same on every node and after a requeue)."""
    if env.get("MASTER_PORT", "").strip():
        port = _require_int(env, "MASTER_PORT", minimum=1)
        if port > 65535:
            raise InputError(ENVIRONMENT, f"port {port} is above 65535", field="MASTER_PORT")
        return port
    return PORT_BASE + _require_int(env, "SLURM_JOB_ID") % PORT_SPAN


def _step_value(env: Mapping[str, str], step_name: str, job_name: str) -> tuple[str, str]:
    """(name, value) of the job step's variable when srun set it, else of the job's."""
    name = step_name if env.get(step_name, "").strip() else job_name
    return name, _require(env, name)


def rendezvous_env(env: Mapping[str, str]) -> dict[str, str]:
    """MASTER_ADDR (the first host of the job step, else of the job) and MASTER_PORT."""
    nodes_name, nodelist = _step_value(env, "SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST")
    return {"MASTER_ADDR": expand_hostlist(nodelist, nodes_name)[0], "MASTER_PORT": str(master_port(env))}


def distributed_env(env: Mapping[str, str]) -> dict[str, str]:
    """torch.distributed variables of this srun task: MASTER_ADDR/PORT, RANK, LOCAL_RANK, WORLD_SIZE,
    LOCAL_WORLD_SIZE, NODE_RANK. Ranks are global (one task per GPU); the master is the step's first host."""
    nodes_name, nodelist = _step_value(env, "SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST")
    hosts = expand_hostlist(nodelist, nodes_name)
    tasks_name, tasks_spec = _step_value(env, "SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE")
    tasks = expand_tasks_per_node(tasks_spec, tasks_name)
    if len(tasks) != len(hosts):
        raise InputError(ENVIRONMENT, f"{len(tasks)} per-node counts for {len(hosts)} hosts ({nodelist})",
                         field=tasks_name)
    rank, local_rank = _require_int(env, "SLURM_PROCID"), _require_int(env, "SLURM_LOCALID")
    world_size, node_rank = _require_int(env, "SLURM_NTASKS", minimum=1), _require_int(env, "SLURM_NODEID")
    if sum(tasks) != world_size:
        raise InputError(ENVIRONMENT, f"{tasks_spec} sums to {sum(tasks)}, not SLURM_NTASKS={world_size}",
                         field=tasks_name)
    if rank >= world_size:
        raise InputError(ENVIRONMENT, f"{rank} is not below SLURM_NTASKS={world_size}", field="SLURM_PROCID")
    if node_rank >= len(hosts):
        raise InputError(ENVIRONMENT, f"{node_rank} is not below the node count {len(hosts)}", field="SLURM_NODEID")
    if local_rank >= tasks[node_rank]:
        raise InputError(ENVIRONMENT, f"{local_rank} is not below the {tasks[node_rank]} tasks on node {node_rank}",
                         field="SLURM_LOCALID")
    return {
        **rendezvous_env(env), "RANK": str(rank), "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(world_size),
        "LOCAL_WORLD_SIZE": str(tasks[node_rank]), "NODE_RANK": str(node_rank),
    }


def shell_exports(variables: Mapping[str, str]) -> str:
    """`export NAME=value` lines, quoted for `eval` in bash."""
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in variables.items())


def _gpus_on_node(env: Mapping[str, str]) -> int | None:
    value = env.get("SLURM_GPUS_ON_NODE", "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise InputError(ENVIRONMENT, f"expected a positive integer, got '{value}'", field="SLURM_GPUS_ON_NODE")
    return int(value)


def hostfile_slots(env: Mapping[str, str], slots_from: str = "auto") -> list[tuple[str, int]]:
    """(host, slots) per allocated node. `gpus`: SLURM_GPUS_ON_NODE on every node (DeepSpeed starts one
    process per GPU); `tasks`: SLURM_TASKS_PER_NODE; `auto`: gpus when the job holds GPUs, else tasks."""
    hint = "run inside a slurm allocation (sbatch or salloc)"
    hosts = expand_hostlist(_require(env, "SLURM_JOB_NODELIST", hint))
    gpus = _gpus_on_node(env) if slots_from in ("auto", "gpus") else None
    if slots_from == "gpus" and gpus is None:
        raise InputError(ENVIRONMENT, "not set; the job holds no GPUs (use --gpus-per-node)",
                         field="SLURM_GPUS_ON_NODE")
    if gpus is not None:
        return [(host, gpus) for host in hosts]
    tasks = expand_tasks_per_node(_require(env, "SLURM_TASKS_PER_NODE", hint))
    if len(tasks) != len(hosts):
        raise InputError(ENVIRONMENT, f"{len(tasks)} per-node counts for {len(hosts)} hosts",
                         field="SLURM_TASKS_PER_NODE")
    return list(zip(hosts, tasks))


def hostfile_text(slots: list[tuple[str, int]]) -> str:
    return "".join(f"{host} slots={count}\n" for host, count in slots)


def _print_exports(argv: list[str]) -> int:
    """`python -m bigrerank.slurm env|rendezvous`: the variables as `export` lines for `eval`."""
    if argv not in (["env"], ["rendezvous"]):
        print("usage: python -m bigrerank.slurm env | rendezvous   (the hostfile: bigrerank hostfile)", file=sys.stderr)
        return 2
    derive = distributed_env if argv == ["env"] else rendezvous_env
    try:
        sys.stdout.write(shell_exports(derive(os.environ)))
    except InputError as e:
        print(f"bigrerank.slurm: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_print_exports(sys.argv[1:]))
