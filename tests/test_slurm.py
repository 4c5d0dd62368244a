"""Slurm allocation -> torch.distributed environment and DeepSpeed hostfile, from synthetic SLURM_* variables."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bigrerank import cli, slurm
from bigrerank.commands import hostfile
from bigrerank.errors import InputError

REQUIRED = ("SLURM_JOB_NODELIST", "SLURM_TASKS_PER_NODE", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS",
            "SLURM_NODEID", "SLURM_JOB_ID")


def task_envs(nodelist: str, tasks_per_node: str, counts: list[int], job_id: int = 4242) -> list[dict[str, str]]:
    """The SLURM_* variables srun gives each task of a block-distributed job step, in global rank order."""
    envs = []
    for node, count in enumerate(counts):
        for local in range(count):
            envs.append({
                "SLURM_JOB_ID": str(job_id), "SLURM_JOB_NODELIST": nodelist, "SLURM_TASKS_PER_NODE": tasks_per_node,
                "SLURM_NTASKS": str(sum(counts)), "SLURM_PROCID": str(len(envs)), "SLURM_LOCALID": str(local),
                "SLURM_NODEID": str(node),
            })
    return envs


@pytest.mark.parametrize("nodelist, tasks, counts, first", [
    ("gpu[01-02]", "2(x2)", [2, 2], "gpu01"),
    ("node[7,9-11]", "8(x4)", [8, 8, 8, 8], "node7"),
    ("a100-[3-4],h100-1", "4(x2),2", [4, 4, 2], "a100-3"),
])
def test_every_rank_gets_a_consistent_distributed_env(nodelist, tasks, counts, first):
    derived = [slurm.distributed_env(env) for env in task_envs(nodelist, tasks, counts)]
    world = sum(counts)
    assert sorted(int(d["RANK"]) for d in derived) == list(range(world))
    assert {d["MASTER_ADDR"] for d in derived} == {first}
    assert len({d["MASTER_PORT"] for d in derived}) == 1
    assert {d["WORLD_SIZE"] for d in derived} == {str(world)}
    expected_local = [(node, local, count) for node, count in enumerate(counts) for local in range(count)]
    assert [(int(d["NODE_RANK"]), int(d["LOCAL_RANK"]), int(d["LOCAL_WORLD_SIZE"])) for d in derived] == expected_local


def test_four_nodes_of_eight_ranks_place_rank_r_on_node_r_div_8():
    derived = [slurm.distributed_env(env) for env in task_envs("gpu[001-004]", "8(x4)", [8] * 4)]
    for d in derived:
        assert int(d["NODE_RANK"]) == int(d["RANK"]) // 8
        assert int(d["LOCAL_RANK"]) == int(d["RANK"]) % 8
    assert derived[0]["MASTER_ADDR"] == "gpu001"


def test_master_port_derives_from_job_id_in_safe_range_and_honours_override():
    port = lambda env: int(slurm.distributed_env(env)["MASTER_PORT"])
    env = task_envs("n1", "1", [1], job_id=123456)[0]
    assert port(env) == port(dict(env)) == 10000 + 123456 % 20000
    assert port(env) != port(task_envs("n1", "1", [1], job_id=123457)[0])
    assert all(10000 <= port(task_envs("n1", "1", [1], job_id=j)[0]) < 30000 for j in (0, 19999, 20000, 10**9))
    assert port({**env, "MASTER_PORT": "29500"}) == 29500
    for bad in ("abc", "0", "70000"):
        with pytest.raises(InputError, match="MASTER_PORT"):
            slurm.distributed_env({**env, "MASTER_PORT": bad})


def test_rendezvous_needs_only_the_allocation():
    env = {"SLURM_JOB_NODELIST": "gpu[3-4]", "SLURM_JOB_ID": "77"}
    assert slurm.rendezvous_env(env) == {"MASTER_ADDR": "gpu3", "MASTER_PORT": "10077"}
    assert slurm.rendezvous_env(env) == {k: slurm.distributed_env(t)[k] for k in ("MASTER_ADDR", "MASTER_PORT")
                                         for t in task_envs("gpu[3-4]", "1(x2)", [1, 1], job_id=77)[:1]}


def test_step_variables_take_precedence_over_job_variables():
    env = task_envs("n[1-4]", "2(x4)", [2, 2, 2, 2])[3]
    step = {**env, "SLURM_STEP_NODELIST": "n[3-4]", "SLURM_STEP_TASKS_PER_NODE": "2,2", "SLURM_NTASKS": "4"}
    derived = slurm.distributed_env(step)
    assert (derived["MASTER_ADDR"], derived["WORLD_SIZE"], derived["NODE_RANK"]) == ("n3", "4", "1")


@pytest.mark.parametrize("hostlist, hosts", [
    ("gpu[01-04,07]", ["gpu01", "gpu02", "gpu03", "gpu04", "gpu07"]),
    ("node[1-2],login5", ["node1", "node2", "login5"]),
    ("n[9-11]", ["n9", "n10", "n11"]),
    ("n[098-101]", ["n098", "n099", "n100", "n101"]),
    ("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
    ("gpu[1-2]-ib,cpu[3]", ["gpu1-ib", "gpu2-ib", "cpu3"]),
    ("single", ["single"]),
    ("a.example.org,b.example.org", ["a.example.org", "b.example.org"]),
])
def test_expand_hostlist(hostlist, hosts):
    assert slurm.expand_hostlist(hostlist) == hosts


@pytest.mark.parametrize("hostlist",
                         ["", "gpu[1-", "gpu1]", "gpu[]", "gpu[a-b]", "gpu[3-1]", "a,,b", "n[1-2],n2", "n[1-]"])
def test_malformed_hostlist_is_an_input_error_naming_the_variable(hostlist):
    with pytest.raises(InputError, match="SLURM_JOB_NODELIST"):
        slurm.expand_hostlist(hostlist)


@pytest.mark.parametrize("spec, counts",
                         [("8", [8]), ("2(x3),1", [2, 2, 2, 1]), ("4(x2)", [4, 4]), ("1,2,3", [1, 2, 3])])
def test_expand_tasks_per_node(spec, counts):
    assert slurm.expand_tasks_per_node(spec) == counts


@pytest.mark.parametrize("spec", ["", "2(x)", "x", "2(3)", "2,", "-1"])
def test_malformed_tasks_per_node_is_an_input_error(spec):
    with pytest.raises(InputError, match="SLURM_TASKS_PER_NODE"):
        slurm.expand_tasks_per_node(spec)


@pytest.mark.parametrize("name", REQUIRED)
def test_missing_variable_is_named(name):
    env = task_envs("n[1-2]", "2(x2)", [2, 2])[0]
    del env[name]
    with pytest.raises(InputError, match=name) as error:
        slurm.distributed_env(env)
    assert "not set" in str(error.value) and str(error.value).startswith("slurm environment")


@pytest.mark.parametrize("change, variable", [
    ({"SLURM_PROCID": "4"}, "SLURM_PROCID"),
    ({"SLURM_LOCALID": "2"}, "SLURM_LOCALID"),
    ({"SLURM_NODEID": "2"}, "SLURM_NODEID"),
    ({"SLURM_NTASKS": "5"}, "SLURM_TASKS_PER_NODE"),
    ({"SLURM_TASKS_PER_NODE": "2(x3)"}, "SLURM_TASKS_PER_NODE"),
    ({"SLURM_PROCID": "one"}, "SLURM_PROCID"),
])
def test_inconsistent_allocation_is_an_input_error(change, variable):
    env = task_envs("n[1-2]", "2(x2)", [2, 2])[0]
    with pytest.raises(InputError, match=variable):
        slurm.distributed_env({**env, **change})


def test_hostfile_from_tasks_per_node():
    env = {"SLURM_JOB_NODELIST": "gpu[01-03],cpu7", "SLURM_TASKS_PER_NODE": "2(x3),1"}
    assert slurm.hostfile_text(slurm.hostfile_slots(env)) == \
        "gpu01 slots=2\ngpu02 slots=2\ngpu03 slots=2\ncpu7 slots=1\n"


def test_hostfile_counts_gpus_when_the_job_holds_them():
    env = {"SLURM_JOB_NODELIST": "gpu[1-2]", "SLURM_TASKS_PER_NODE": "1(x2)", "SLURM_GPUS_ON_NODE": "8"}
    assert slurm.hostfile_slots(env) == [("gpu1", 8), ("gpu2", 8)]
    assert slurm.hostfile_slots(env, "tasks") == [("gpu1", 1), ("gpu2", 1)]
    with pytest.raises(InputError, match="SLURM_GPUS_ON_NODE"):
        slurm.hostfile_slots({**env, "SLURM_GPUS_ON_NODE": ""}, "gpus")
    with pytest.raises(InputError, match="SLURM_GPUS_ON_NODE"):
        slurm.hostfile_slots({**env, "SLURM_GPUS_ON_NODE": "eight"})


def test_hostfile_rejects_count_mismatch_and_missing_allocation():
    with pytest.raises(InputError, match="SLURM_TASKS_PER_NODE"):
        slurm.hostfile_slots({"SLURM_JOB_NODELIST": "n[1-3]", "SLURM_TASKS_PER_NODE": "2(x2)"})
    with pytest.raises(InputError, match="SLURM_JOB_NODELIST.*allocation"):
        slurm.hostfile_slots({"SLURM_TASKS_PER_NODE": "2"})


def test_hostfile_command_writes_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_NODELIST", "node[1-2]")
    monkeypatch.setenv("SLURM_TASKS_PER_NODE", "4(x2)")
    monkeypatch.delenv("SLURM_GPUS_ON_NODE", raising=False)
    target = tmp_path / "out" / "hostfile"
    assert cli.main(["hostfile", "--output", str(target)]) == 0
    assert target.read_text() == "node1 slots=4\nnode2 slots=4\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["hostfile"]


def test_hostfile_command_error_exits_2_and_keeps_the_old_file(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SLURM_JOB_NODELIST", raising=False)
    target = tmp_path / "hostfile"
    target.write_text("old slots=1\n")
    assert cli.main(["hostfile", "--output", str(target)]) == 2
    assert "SLURM_JOB_NODELIST" in capsys.readouterr().err
    assert target.read_text() == "old slots=1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostfile"]


def test_hostfile_command_prints_to_stdout(monkeypatch, capsys):
    monkeypatch.setenv("SLURM_JOB_NODELIST", "n1")
    monkeypatch.setenv("SLURM_TASKS_PER_NODE", "3")
    monkeypatch.delenv("SLURM_GPUS_ON_NODE", raising=False)
    assert hostfile.main([]) == 0
    assert capsys.readouterr().out == "n1 slots=3\n"


def test_shell_exports_survive_eval_in_bash():
    exports = slurm.shell_exports({"MASTER_ADDR": "host 'x'", "RANK": "3"})
    out = subprocess.run(["bash", "-c", 'eval "$1"; printf "%s|%s" "$MASTER_ADDR" "$RANK"', "_", exports],
                         capture_output=True, text=True, check=True).stdout
    assert out == "host 'x'|3"


def test_module_entry_exports_the_env_and_fails_cleanly_outside_slurm():
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "MASTER_PORT"}
    task = task_envs("gpu[1-2]", "2(x2)", [2, 2])[3]
    script = 'eval "$("$0" -m bigrerank.slurm env)" && echo "$RANK $LOCAL_RANK $WORLD_SIZE $MASTER_ADDR $NODE_RANK"'
    out = subprocess.run(["bash", "-c", script, sys.executable], env={**clean, **task},
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == ["3", "1", "4", "gpu1", "1"]
    failed = subprocess.run([sys.executable, "-m", "bigrerank.slurm", "env"], env=clean, capture_output=True, text=True)
    assert failed.returncode == 2 and failed.stdout == ""
    assert "SLURM_JOB_NODELIST" in failed.stderr and "Traceback" not in failed.stderr
