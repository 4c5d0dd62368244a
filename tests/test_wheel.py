"""A wheel installed into a fresh environment works from a directory that knows nothing of the source tree: the
demo (its training runs as `python -m bigrerank.launch`), `bigrerank plan` (a suggestion of another ZeRO stage
names a packaged config) and `python -m bigrerank.launch`."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bigrerank.distributed import LAUNCHER_VARS
from tests.helpers import ROOT
from tests.tiny import tiny_model_dir, write_groups



def _run(argv: list, cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, argv))}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv python, venv bin, an environment without PYTHONPATH or a launcher's variables, an unrelated working
    directory)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"  # built from a copy, so the build leaves nothing in the checkout
    source.mkdir()
    shutil.copy(ROOT / "setup.py", source)
    shutil.copytree(ROOT / "bigrerank", source / "bigrerank", ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", *LAUNCHER_VARS)}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INDEX="1")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", source],
         tmp, env)
    (wheel,) = (tmp / "dist").glob("bigrerank-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", venv], tmp, env)
    python = venv / "bin" / "python"
    _run([python, "-m", "pip", "install", "--no-deps", "--force-reinstall", wheel], tmp, env)
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    where = _run([python, "-c", "import bigrerank; print(bigrerank.__file__)"], elsewhere, env).stdout.strip()
    assert Path(where).is_relative_to(venv) and not Path(where).is_relative_to(ROOT), where
    return python, venv / "bin", env, elsewhere


@pytest.mark.slow
def test_the_demo_runs_from_the_wheel(installed, tmp_path):
    python, bin_dir, env, elsewhere = installed
    model = tiny_model_dir(tmp_path / "model", init_range=0.2)
    assert "usage: bigrerank demo" in _run([bin_dir / "bigrerank", "demo", "--help"], elsewhere, env).stdout
    done = _run([bin_dir / "bigrerank", "demo", "--quick", "--out", "demo", "--model", model, "--steps", "2",
                 "--rerank_depth", "5"], elsewhere, env)
    assert "-m bigrerank.launch" in done.stdout
    assert (elsewhere / "demo" / "model" / "model.safetensors").is_file()
    assert set(json.loads((elsewhere / "demo" / "results.json").read_text())["results"]) == {
        "BM25", "BM25 >> reranker (top 5)"}


@pytest.mark.slow
def test_plan_suggests_a_packaged_zero_config_from_the_wheel(installed, tmp_path):
    python, bin_dir, env, elsewhere = installed
    model = tiny_model_dir(tmp_path / "model")
    flags = ["--model", model, "--ds_config", "ds_configs/zero0.json", "--train_group_size", "2", "--max_len", "8",
             "--per_device_train_batch_size", "1", "--gpus_per_node", "4", "--host_memory", "1TiB", "--json"]

    def plan(*extra):
        return json.loads(_run([bin_dir / "bigrerank", "plan", *flags, *extra], elsewhere, env).stdout)

    total = plan("--gpu_memory", "1TiB")["per_rank"]["total"]
    tight = plan("--gpu_memory", f"{int(total * 0.8)}B")  # the model states do not fit: ZeRO-2 splits them
    assert not tight["fits"]
    suggested = shlex.split(tight["suggestion"])
    config = Path(suggested[suggested.index("--ds_config") + 1])
    assert config.name == "zero2.json" and config.is_file() and config.is_relative_to(python.parents[1]), config
    applied = json.loads(_run([bin_dir / "bigrerank", "plan", *suggested[2:], "--gpus_per_node", "4",
                               "--host_memory", "1TiB", "--gpu_memory", f"{int(total * 0.8)}B", "--json"],
                              elsewhere, env).stdout)
    assert applied["fits"]


@pytest.mark.slow
def test_launch_trains_from_the_wheel(installed, tmp_path):
    python, _, env, elsewhere = installed
    model, data = tiny_model_dir(tmp_path / "model"), write_groups(tmp_path / "groups.jsonl", queries=8)
    _run([python, "-m", "bigrerank.launch", "--model_name_or_path", model, "--train_path", data,
          "--output_dir", "trained", "--train_group_size", "4", "--max_len", "32", "--per_device_train_batch_size", "2",
          "--max_steps", "2", "--save_steps", "10"], elsewhere, {**env, "OMP_NUM_THREADS": "1"})
    assert (elsewhere / "trained" / "model.safetensors").is_file()
    assert [json.loads(line)["step"] for line in (elsewhere / "trained" / "train_log.jsonl").read_text().splitlines()]
