"""bf16 on a CPU that only emulates it: found from the CPU's flags and a measured matmul ratio, said in one line."""
from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

from bigrerank import hardware
from bigrerank.training import trainer

_spec = importlib.util.spec_from_file_location("bench_common", Path(__file__).resolve().parents[1] / "bench/common.py")
common = sys.modules["bench_common"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)

ZEN2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx avx2 fma\n"
SAPPHIRE_RAPIDS = "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"


def test_cpu_flags_are_read_from_cpuinfo_and_bf16_is_native_only_with_avx512_bf16_or_amx(tmp_path):
    (tmp_path / "zen2").write_text(ZEN2)
    (tmp_path / "spr").write_text(SAPPHIRE_RAPIDS)
    assert hardware.cpu_flags(tmp_path / "zen2") == {"fpu", "sse2", "avx", "avx2", "fma"}
    assert not hardware.native_bf16(hardware.cpu_flags(tmp_path / "zen2"))
    assert hardware.native_bf16(hardware.cpu_flags(tmp_path / "spr"))
    assert hardware.cpu_flags(tmp_path / "absent") == set()


def test_the_warning_gives_the_measured_ratio_and_says_nothing_where_bf16_is_fast(monkeypatch):
    monkeypatch.setattr(hardware, "native_bf16", lambda flags=None: False)
    warning = hardware.bf16_warning(slowdown=24.4)
    assert warning == ("bf16 matmuls run 24x slower than fp32 on this CPU (it emulates bf16: no AVX-512 BF16 or "
                       "AMX); drop --bf16 to run in fp32")
    assert hardware.bf16_warning(slowdown=0.4) is None
    assert hardware.bf16_warning(slowdown=1.5) is None


def test_the_measured_slowdown_is_a_positive_ratio_of_two_rates():
    assert hardware.matmul_gflops(hardware.torch.float32, size=64, seconds=0.01) > 0
    assert hardware.bf16_slowdown(size=64, seconds=0.01) > 0


def test_training_in_bf16_on_an_emulating_cpu_logs_one_warning_on_rank_0(monkeypatch, caplog):
    monkeypatch.setattr(hardware, "bf16_slowdown", lambda: 24.0)
    monkeypatch.setattr(hardware, "native_bf16", lambda flags=None: False)
    with caplog.at_level(logging.WARNING, logger="bigrerank.train"):
        trainer.warn_slow_bf16(SimpleNamespace(bf16=True))
        trainer.warn_slow_bf16(SimpleNamespace(bf16=False))
    assert [r.getMessage() for r in caplog.records] == [hardware.bf16_warning(24.0)]


def test_benchmarks_leave_emulated_bf16_out_and_say_so(monkeypatch, capsys):
    monkeypatch.setattr(hardware, "native_bf16", lambda flags=None: False)
    assert common.precisions("auto") == ["fp32"]
    assert common.precisions("fp32,bf16") == ["fp32"]
    assert "bf16 left out" in capsys.readouterr().out
    assert common.precisions("fp32,bf16", device="cuda") == ["fp32", "bf16"]
    monkeypatch.setattr(hardware, "native_bf16", lambda flags=None: True)
    assert common.precisions("auto") == ["fp32", "bf16"]
