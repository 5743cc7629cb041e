"""scripts/benchmark.py on a tiny config: it runs, and writes the figures it promises."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import keras
import pytest

from nowcast.distribute import choose_precision

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("nowcast_benchmark_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_quick_run_writes_every_figure(benchmark, tmp_path, capsys):
    output = tmp_path / "bench.json"
    policy = keras.mixed_precision.global_policy().name
    report = benchmark.main(["--quick", "--output", str(output)])
    assert json.loads(output.read_text()) == report
    # --precision auto is training's choice, printed with its reason; the caller's policy stays.
    assert (report["precision"], report["precision_reason"]) == choose_precision("auto")
    assert f"precision {report['precision']}: " in capsys.readouterr().out
    assert keras.mixed_precision.global_policy().name == policy
    assert list(report["presets"]) == ["tiny"]
    entry = report["presets"]["tiny"]
    figures = ["train_step_speedup", "forward_speedup", "utilisation", "train_step_gflop"]
    figures += ["train_step_speedup_of_minima", "forward_speedup_of_minima"]
    if keras.backend.backend() == "tensorflow":
        figures += ["pipeline_headroom", "pipeline_windows_per_s"]
    for key in figures:
        assert _positive(entry[key]), (key, entry[key])
    assert _positive(entry["conv_gflop_per_s"])
    for build in ("fused", "keras"):
        for timings in (entry["train_step_s"][build], entry["forward_s"][build]):
            assert len(timings["all"]) == report["repeats"]
            assert all(_positive(t) for t in timings["all"])
            assert timings["min"] <= timings["median"]
        assert _positive(entry["train_gflop_per_s"][build])
        assert _positive(entry["memory"][build]["max_rss_mb"])
    # ConvLSTM2D's top forecaster stage has one zero input channel: 3*3*4*8 weights more.
    assert entry["params"]["keras"] - entry["params"]["fused"] == 3 * 3 * 4 * 8


def test_flop_count_of_the_tiny_model_by_hand(benchmark):
    fields = benchmark.config_option(
        "model", benchmark.PRESETS["tiny"].model, benchmark.ModelConfig
    )
    # 32x32 frames, 3 in, 3 out; one stage: stride 2 (16x16 maps), 4 downsample filters,
    # F = 8, 3x3 kernels; head 4 filters. 2 FLOPs per multiply-add of each convolution:
    encoder_conv = 3 * 2 * 256 * 9 * 1 * 4
    encoder_lstm = 3 * 2 * 256 * 9 * (4 + 8) * 32
    forecaster_lstm = 3 * 2 * 256 * 9 * 8 * 32  # the top stage has no input frames
    upsample = 3 * 2 * 256 * 9 * 8 * 4  # transposed: each input pixel meets the kernel once
    head = 3 * (2 * 1024 * 9 * 4 * 4 + 2 * 1024 * 4 * 1)
    expected = encoder_conv + encoder_lstm + forecaster_lstm + upsample + head
    assert benchmark.forward_flops(fields, 3, 3, 32, 32) == expected


def test_existing_output_is_kept_without_overwrite(benchmark, tmp_path, capsys):
    output = tmp_path / "bench.json"
    output.write_text("{}")
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(["--quick", "--output", str(output)])
    assert exit_info.value.code != 0
    assert "pass --overwrite" in capsys.readouterr().err
    assert output.read_text() == "{}"


def test_default_file_names_what_changes_the_figures(benchmark, monkeypatch):
    """`make bench` overwrites: a oneDNN run or a subset of presets must not replace another."""
    device, both = "cpu (x86_64, 2 cores)", benchmark.DEFAULT_PRESETS
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    plain = benchmark.default_output(device, "float32", "auto", both)
    assert plain.name == f"benchmark-cpu-{keras.backend.backend()}.json"
    subset = benchmark.default_output(device, "mixed_bfloat16", "on", ["default"])
    assert subset.name.endswith("-mixed_bfloat16-xla-default.json")
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")
    onednn = benchmark.default_output(device, "float32", "auto", both)
    if keras.backend.backend() == "tensorflow":
        assert onednn.name == "benchmark-cpu-tensorflow-onednn.json"
    else:
        assert onednn == plain


def test_reference_conv_times_bfloat16_too(benchmark):
    """Under TensorFlow a bfloat16 result cannot become a NumPy array as it is (it crashed
    `make bench ARGS="--precision mixed_bfloat16"`)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        call = benchmark.ReferenceConv(1, 8, 4, 3).make_call()
        assert float(call()) > 0
    finally:
        keras.config.set_dtype_policy(previous)
