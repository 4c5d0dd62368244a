"""Weight decay reaches the matrices on every ZeRO stage: under ZeRO-3 the parameters are partitioned placeholders
by the time the optimizer's groups are built, and their shape must come from `ds_shape`."""
from __future__ import annotations

import pytest

from tests.dist_harness import run_ranks
from tests.tiny import tiny_model_dir, write_groups


def record_groups(argv: list[str], path: str) -> None:
    import json

    from bigrerank.commands.train import parse
    from bigrerank.training import trainer

    setup = trainer.prepare(*parse(argv))
    groups = setup.engine.optimizer.optimizer.param_groups
    with open(path, "w") as f:
        json.dump([group["weight_decay"] for group in groups], f)


@pytest.mark.slow
@pytest.mark.parametrize("config", ["zero2", "zero3"])
def test_matrices_decay_and_biases_do_not_on_every_stage(tmp_path, config):
    import json

    model, train = tiny_model_dir(tmp_path / "model"), write_groups(tmp_path / "groups.jsonl")
    argv = ["--model_name_or_path", str(model), "--train_path", str(train), "--output_dir", str(tmp_path / "out"),
            "--ds_config", f"ds_configs/{config}.json", "--train_group_size", "4", "--max_len", "32",
            "--per_device_train_batch_size", "2", "--max_steps", "1", "--weight_decay", "0.1"]
    run_ranks(1, record_groups, argv, str(tmp_path / "groups.json"))
    assert sorted(json.loads((tmp_path / "groups.json").read_text())) == [0.0, 0.1]
