"""The `fastconv` command line, run as a subprocess (`python -m fastconv ...`) with tiny settings.

Every run checks the exit status, the output, and that stderr holds no traceback. Peers and
optional packages that are installed here are hidden with `sys.modules[name] = None` to check
the paths taken without them.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastconv
from fastconv import cli, cli_bench
from fastconv.profiling import layer_macs, model_macs, profile_plan
from fastconv.runtime import isa_cap

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
MOBILENET_WEIGHTS = DATA / "mobilenet_v2" / "mobilenet_v2-b0353104.pth"
COFFEE = DATA / "photos" / "coffee.png"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run(*args, hide=(), expect=0):
    """Runs the CLI with ``args``; ``hide`` lists modules made unimportable. Checks the exit
    status and that no traceback reached stderr."""
    if hide:
        blocker = f"import sys\nfor name in {list(hide)!r}: sys.modules[name] = None\n"
        command = [sys.executable, "-c", blocker + "from fastconv.cli import main\n"
                   "sys.exit(main(sys.argv[1:]))"]
    else:
        command = [sys.executable, "-m", "fastconv"]
    result = subprocess.run(command + [str(a) for a in args], capture_output=True, text=True,
                            cwd=ROOT, timeout=900)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == expect, (result.returncode, result.stdout, result.stderr)
    return result


def table_rows(stdout, model):
    return [line.split() for line in stdout.splitlines() if line.split()[:1] == [model]]


# --help, info, summary ---------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["bench", "summary", "info", "convert", "predict", "profile"])
def test_every_command_has_help(command):
    result = run(command, "--help")
    assert result.stdout.startswith(f"usage: fastconv {command}")


def test_no_command_is_a_usage_error():
    result = run(expect=2)
    assert "usage: fastconv" in result.stderr and "COMMAND" in result.stderr


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "fastconv"
    if not script.exists():
        pytest.skip("the console script is not installed (pip install -e . installs it)")
    result = subprocess.run([str(script), "summary", "lenet5"], capture_output=True, text=True)
    assert result.returncode == 0 and "Total params: 61,706" in result.stdout


def test_info_shows_config_and_optional_packages():
    out = run("info").stdout
    assert re.search(rf"^version +: {re.escape(fastconv.__version__)}$", out, re.MULTILINE)
    assert "isa " in out and "num_threads" in out and "kernels" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert set(cli.OPTIONAL_PACKAGES) <= set(lines)
    for package, version in cli.package_versions().items():
        assert (version or "not installed") == lines[package].split(None, 1)[1][:16].strip()
    assert cli.package_versions()["torch"] is not None  # installed in the test environment


def test_summary_of_zoo_models_and_their_options():
    assert "Total params: 11,689,512" in run("summary", "resnet18").stdout
    assert "Total params: 138,365,992" in run("summary", "vgg16", "--batch-norm").stdout
    out = run("summary", "lenet5", "--variant", "1998", "--plan").stdout
    assert "Total params: 60,000" in out and "Plan (the fused steps" in out


# profile -----------------------------------------------------------------------------------------

def test_profile_lists_steps_slowest_first_with_shares():
    out = run("profile", "lenet5", "--repeats", "3").stdout
    lines = [line for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert len(lines) == len(fastconv.models.lenet5().plan_summary(print_fn=None).splitlines())
    ms = [float(line.split()[1]) for line in lines]
    shares = [float(line.split()[2].rstrip("%")) for line in lines]
    assert ms == sorted(ms, reverse=True)
    assert abs(sum(shares) - 100) < 1.0
    conv = next(line for line in lines if "conv2d[" in line)
    assert float(conv.split()[3]) > 0  # GFLOP/s shown for convolutions
    assert "sum of the steps" in out and "predict" in out


def test_profile_plan_counts_every_step_and_the_macs():
    model = fastconv.models.resnet18()
    x = np.zeros((2, 3, 224, 224), np.float32)
    rows = profile_plan(model, x, repeats=2)
    assert len(rows) == len(model.plan_summary(print_fn=None).splitlines())
    assert model_macs(model) == 1_814_073_344  # torchvision's 1.81 GMACs
    counted = sum(r["macs"] for r in rows)
    assert counted == 2 * model_macs(model)  # every MAC credited to exactly one step, batch 2
    assert all(len(r["times_ms"]) == 2 and r["median_ms"] > 0 for r in rows)
    assert layer_macs(model)["conv1"] == 118_013_952


@pytest.mark.parametrize("name,size,fused", [("resnet50", 96, "conv2d[gemm+shortcut]"),
                                             ("mobilenet_v2", 224, "conv2d[depth-first:")])
def test_profile_credits_fused_steps_with_every_layer_s_macs(name, size, fused):
    model = getattr(fastconv.models, name)(input_shape=(3, size, size))
    with isa_cap("avx2"):  # where ResNet-50's shortcuts fuse (conv_sum_applies)
        rows = profile_plan(model, np.zeros((1, 3, size, size), np.float32), repeats=1)
    assert any(r["step"].startswith(fused) for r in rows)
    assert sum(r["macs"] for r in rows) == model_macs(model)


# bench -------------------------------------------------------------------------------------------

def test_bench_table_json_and_plot(tmp_path):
    json_path, png_path = tmp_path / "bench.json", tmp_path / "bench.png"
    result = run("bench", "lenet5", "--rounds", "2", "--json", json_path, "--plot", png_path)
    out = result.stdout
    header = next(line for line in out.splitlines() if line.startswith("model"))
    for column in ("GFLOP/img", "median ms", "p90 ms", "img/s", "GFLOP/s", "% peak", "fc/torch",
                   "fc/torch_cl", "fc/ort"):
        assert column in header
    (row,) = table_rows(out, "lenet5")
    assert row[3] == "0.001" and float(row[4]) > 0 and len(row) == 12  # 2 * 416,520 FLOP
    assert "% peak: of the measured peak" in out
    worst_ratio = max(float(r) for r in row[9:])  # fastconv over the fastest peer
    geometric_mean = float(out.split("Geometric mean of fastconv / best peer: ")[1].split()[0])
    assert abs(geometric_mean - worst_ratio) <= 0.006  # one cell: its table ratio, rounded
    assert result.stderr == ""  # no progress bar when stdout is not a terminal
    report = json.loads(json_path.read_text())
    assert report["environment"]["fastconv"]["isa"] == fastconv.show_config("dicts")["isa"]
    assert report["environment"]["torch"] and report["peak_gflops"]
    (cell,) = report["cells"]
    assert set(cell["results"]) == {"fastconv", "torch", "torch_cl", "onnxruntime"}
    assert len(cell["results"]["fastconv"]["times_ms"]) == 2 and cell["profile"]
    assert cell["threads"] == fastconv.get_num_threads()
    assert png_path.read_bytes()[:8] == PNG_SIGNATURE


def test_bench_batch_threads_and_chosen_peers():
    out = run("bench", "lenet5", "--rounds", "2", "--batch", "1,2", "--threads", "1",
              "--compare", "torch").stdout
    rows = table_rows(out, "lenet5")
    assert [(r[1], r[2]) for r in rows] == [("1", "1"), ("2", "1")]
    assert all(len(r) == 10 for r in rows)  # one peer column
    assert "fc/ort" not in out


def test_bench_without_torch_runs_fastconv_alone():
    result = run("bench", "lenet5", "--rounds", "2", hide=("torch", "torchvision"))
    assert "missing peers:" in result.stdout and "torch" in result.stdout
    (row,) = table_rows(result.stdout, "lenet5")
    assert len(row) == 9  # no peer columns
    assert "Geometric mean" not in result.stdout


def test_plot_without_matplotlib_fails_before_timing(tmp_path):
    result = run("bench", "lenet5", "--plot", tmp_path / "p.png", hide=("matplotlib",), expect=1)
    assert "matplotlib" in result.stderr and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1


def test_bench_without_tqdm_still_works():
    result = run("bench", "lenet5", "--rounds", "2", "--compare", "none", hide=("tqdm",))
    assert len(table_rows(result.stdout, "lenet5")) == 1


def test_geometric_mean_is_over_the_fastest_peer():
    cells = [{"ratios": {"torch": 0.5, "onnxruntime": 2.0}}, {"ratios": {"torch": 8.0}},
             {"ratios": {}}]
    assert cli_bench.geometric_mean_over_best_peer(cells) == pytest.approx(4.0)
    assert cli_bench.geometric_mean_over_best_peer([{"ratios": {}}]) is None


def test_other_processes_share_and_the_warning(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    # 1 s of wall time, 1.5 CPU-seconds busy on the machine, 1 of them ours: 0.5 of 2 cores.
    assert cli_bench.other_processes_share((0.0, 10.0, 1.0), (1.0, 11.5, 2.0)) == 0.25
    assert cli_bench.other_processes_share(None, (1.0, 11.5, 2.0)) is None
    quiet = {"model": "a", "results": {"fastconv": {"median_ms": 1.0, "p90_ms": 1.1}},
             "percent_of_peak": 50.0,
             "other_processes_cpu_share": 0.01, "notes": [], "ratios": {}}
    busy = {**quiet, "model": "b", "other_processes_cpu_share": 0.25}
    unsteady = {**quiet, "model": "c", "results": {"fastconv": {"median_ms": 1.0, "p90_ms": 2.0}}}
    report = {"peak_gflops": {"2": 100.0}, "peers": [], "cells": [quiet, busy, unsteady]}
    warning = cli_bench.report_footer(report)[-1]
    assert warning.startswith("Warning: other processes") and "timing b, c:" in warning


def test_progress_is_silent_without_a_terminal(capsys):
    progress = cli_bench.Progress(total=3, enabled=True)  # pytest captures stdout: not a tty
    progress.stage("x")
    progress.advance()
    progress.write("a line")
    progress.close()
    assert progress.bar is None and capsys.readouterr().out == "a line\n"


# convert and predict -----------------------------------------------------------------------------

def test_convert_torch_state_dict_with_verify(tmp_path):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    source, target = tmp_path / "resnet18.pt", tmp_path / "resnet18.safetensors"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), source)
    out = run("convert", source, target, "--arch", "resnet18", "--verify").stdout
    assert f"wrote {target}: resnet18 from torch, 11,689,512 parameters" in out
    difference = float(out.split("largest difference ")[1].split()[0])
    assert difference < 1e-3
    model = fastconv.load(target)
    assert model.count_params() == 11_689_512 and model.info["source"].startswith("torch:")
    assert "Total params: 11,689,512" in run("summary", target).stdout


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's legacy ONNX exporter
def test_convert_onnx_export(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    net = cli_bench.torch_network("lenet5", torch, None)
    source, target = tmp_path / "lenet.onnx", tmp_path / "lenet.safetensors"
    torch.onnx.export(net, torch.zeros(1, 1, 32, 32), source, dynamo=False)
    out = run("convert", source, target, "--verify").stdout
    assert "from onnx" in out and "verification against onnxruntime" in out
    assert float(out.split("largest difference ")[1].split()[0]) < 1e-4
    x = np.random.default_rng(0).standard_normal((2, 1, 32, 32)).astype(np.float32)
    with torch.inference_mode():
        expected = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(fastconv.load(target).predict(x), expected, atol=1e-4)
    assert "conv2d[" in run("profile", target, "--repeats", "2").stdout
    out = run("bench", target, "--rounds", "2").stdout  # a file runs alone, under its name
    (row,) = table_rows(out, "lenet.safetensors")
    assert row[9:] == ["-", "-", "-"]


@pytest.mark.skipif(not (DATA / "caffe_lenet").is_dir() or not (DATA / "keras_lenet").is_dir(),
                    reason="../shared/data (Caffe and Keras LeNets) is absent")
def test_convert_caffe_and_a_weights_only_keras_file(tmp_path):
    caffe = DATA / "caffe_lenet"
    target = tmp_path / "caffe_lenet.safetensors"
    out = run("convert", caffe / "lenet_iter_10000.caffemodel", target,
              "--prototxt", caffe / "lenet.prototxt").stdout
    assert "from caffe, 431,080 parameters" in out
    assert fastconv.load(target).info["source"] == "caffe:lenet_iter_10000.caffemodel"
    result = run("convert", DATA / "keras_lenet" / "Model1.h5", tmp_path / "k.safetensors",
                 expect=1)
    assert "holds weights only" in result.stderr


@pytest.mark.skipif(not (MOBILENET_WEIGHTS.exists() and COFFEE.exists()),
                    reason="../shared/data (MobileNetV2 weights, photos) is absent")
def test_predict_espresso_with_real_mobilenet(tmp_path):
    target = tmp_path / "mobilenet_v2.safetensors"
    run("convert", MOBILENET_WEIGHTS, target, "--arch", "mobilenet_v2",
        "--preprocessing", "imagenet")
    result = run("predict", COFFEE, "--model", target, "--top", "3")
    lines = result.stdout.splitlines()
    assert lines[0] == str(COFFEE) and len(lines) == 4
    assert lines[1].split()[:2] == ["1.", "espresso"]
    probabilities = [float(line.split("%")[0].split()[-1]) for line in lines[1:]]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 100
    assert result.stderr == ""


def test_predict_uses_recorded_labels_and_softmax(tmp_path):
    pytest.importorskip("PIL")
    from PIL import Image

    model = fastconv.models.lenet5()
    model.info["labels"] = [f"digit {i}" for i in range(10)]
    model.save(tmp_path / "lenet.safetensors")
    Image.fromarray(np.full((28, 28), 200, np.uint8)).save(tmp_path / "digit.png")
    result = run("predict", tmp_path / "digit.png", "--model", tmp_path / "lenet.safetensors",
                 "--top", "20")
    lines = result.stdout.splitlines()[1:]
    assert len(lines) == 10 and all("digit " in line for line in lines)  # --top capped at 10
    assert abs(sum(float(line.split("%")[0].split()[-1]) for line in lines) - 100) < 0.1
    assert "records no preprocessing" in result.stderr


# Errors ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["bench", "resnet7"], "unknown model 'resnet7'"),
    (["summary", "nonet"], "unknown model 'nonet'"),
    (["profile", "nonet"], "unknown model 'nonet'"),
    (["summary", "vgg16", "--variant", "caffe"], "vgg16 does not take --variant"),
    (["summary", "missing/model.safetensors"], "no such model file"),
    (["predict", "missing.png", "--model", "m.safetensors"], "no such image file: missing.png"),
    (["convert", "missing.pt", "out.safetensors"], "no such source file: missing.pt"),
    (["bench", "lenet5", "--compare", "tensorflow"], "unknown peer 'tensorflow'"),
])
def test_user_mistakes_give_one_error_line(args, message):
    result = run(*args, expect=1)
    assert message in result.stderr and result.stderr.startswith(f"fastconv {args[0]}: error:")
    assert len(result.stderr.strip().splitlines()) == 1


def test_convert_needs_arch_for_torch_and_prototxt_for_caffe(tmp_path):
    (tmp_path / "w.pth").write_bytes(b"x")
    (tmp_path / "w.caffemodel").write_bytes(b"x")
    (tmp_path / "w.bin").write_bytes(b"x")
    out = tmp_path / "out.safetensors"
    assert "--arch" in run("convert", tmp_path / "w.pth", out, expect=1).stderr
    assert "--prototxt" in run("convert", tmp_path / "w.caffemodel", out, expect=1).stderr
    assert "--from" in run("convert", tmp_path / "w.bin", out, expect=1).stderr
    damaged = run("convert", tmp_path / "w.pth", out, "--arch", "lenet5", expect=1).stderr
    assert "cannot be read as a PyTorch state_dict" in damaged
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["convert", "a.pt", "b.safetensors", "--from", "tensorflow"], "invalid choice: 'tensorflow'"),
    (["bench", "--rounds", "0"], "expected a positive integer"),
    (["bench", "--batch", "1,x"], "expected a positive integer"),
    (["bench", "--warmup", "-1"], "expected an integer >= 0"),
    (["profile", "lenet5", "--bogus"], "unrecognized arguments: --bogus"),
    (["predict", "x.png"], "the following arguments are required: --model"),
])
def test_bad_options_are_usage_errors(args, message):
    result = run(*args, expect=2)
    assert message in result.stderr and "usage: fastconv" in result.stderr
