"""``funcgrad train`` from the command line: options, output, checkpoints, errors."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from funcgrad import cli

FASHION = Path("/usr/share/datasets/fashion-mnist")


def run(capsys, *argv):
    status = cli.main(["train", *argv])
    out = capsys.readouterr()
    return status, out.out, out.err


def epoch_lines(out):
    return [line for line in out.splitlines() if line.startswith("epoch ")]


def numbers(out):
    """The metric columns of each epoch line: without "epoch i/N" and the seconds."""
    return [line.split("  ")[1:-1] for line in epoch_lines(out)]


@pytest.mark.parametrize("model", ["linear", "xor", "mlp", "transformer"])
def test_every_model_trains_on_moons_and_reports_test_accuracy(capsys, model):
    status, out, err = run(
        capsys, "--model", model, "--dataset", "moons", "--epochs", "2", "--batch-size", "64"
    )
    assert status == 0, err
    lines = epoch_lines(out)
    assert [line.split("  ")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert re.search(r"loss \d\.\d{4}  accuracy \d\.\d{4}  eval_loss", lines[0])
    final = out.strip().splitlines()[-1]
    assert re.fullmatch(r"test accuracy \d\.\d{4}", final)
    assert float(final.split()[-1]) > 0.75  # moons after 2 epochs: far above chance


def test_funcgrad_engine_and_the_regression_set(capsys):
    status, out, err = run(
        capsys,
        "--model",
        "mlp",
        "--dataset",
        "linear",
        "--epochs",
        "3",
        "--engine",
        "funcgrad",
        "--batch-size",
        "32",
        "--optimizer",
        "momentum",
        "--lr",
        "0.01",
        "--lr-decay",
    )
    assert status == 0, err
    assert "funcgrad gradients" in out.splitlines()[0]
    assert len(epoch_lines(out)) == 3
    assert "accuracy" not in out  # a regression: loss only
    mse = float(out.strip().splitlines()[-1].removeprefix("test mse "))
    assert mse < 0.1  # noise variance 0.01


def test_save_then_resume_continues_the_same_run(capsys, tmp_path):
    path = tmp_path / "run.fgz"
    common = ["--model", "mlp", "--dataset", "xor", "--batch-size", "50", "--seed", "3"]
    status, straight, _ = run(capsys, *common, "--epochs", "4")
    assert status == 0
    status, first, _ = run(capsys, *common, "--epochs", "2", "--save", str(path))
    assert status == 0 and path.exists()
    assert numbers(first) == numbers(straight)[:2]
    status, second, _ = run(capsys, *common, "--epochs", "4", "--resume", str(path))
    assert status == 0
    # Epochs 3 and 4 of the resumed run print the same numbers as the uninterrupted run
    # (all but the timing column).
    assert numbers(second) == numbers(straight)[2:]
    assert second.strip().splitlines()[-1] == straight.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "cnn", "--dataset", "moons"], "--model cnn needs images"),
        (["--model", "transformer", "--dataset", "linear"], "transformer is a classifier"),
        (["--model", "mlp", "--dataset", "moons", "--devices", "64"], "device_count=64"),
        (["--model", "mlp", "--dataset", "moons", "--batch-size", "5000"], "batch_size=5000"),
        (["--model", "mlp", "--dataset", "moons", "--resume", "missing.fgz"], "missing.fgz"),
    ],
)
def test_impossible_requests_fail_with_one_clear_line(capsys, argv, message):
    status, _, err = run(capsys, *argv, "--epochs", "1")
    assert status == 1
    assert err.startswith("funcgrad train: error: ") and message in err
    assert "Traceback" not in err


def test_unknown_choices_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--model", "resnet", "--dataset", "moons"])
    assert info.value.code == 2
    assert "invalid choice: 'resnet'" in capsys.readouterr().err


def test_the_installed_command_shards_over_devices_in_a_fresh_process():
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu"
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "funcgrad.cli",
            "train",
            "--model",
            "mlp",
            "--dataset",
            "moons",
            "--epochs",
            "2",
            "--batch-size",
            "64",
            "--devices",
            "4",
            "--engine",
            "funcgrad",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "on 4 devices" in out.stdout
    assert out.stdout.strip().splitlines()[-1].startswith("test accuracy ")


@pytest.mark.skipif(
    not FASHION.is_dir(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)
@pytest.mark.parametrize("conv_impl", [None, "im2col"])  # None: the default, im2col_vjp
def test_fashion_mnist_cnn_on_a_slice_of_the_training_set(capsys, conv_impl):
    extra = [] if conv_impl is None else ["--conv-impl", conv_impl]
    status, out, err = run(
        capsys,
        "--model",
        "cnn",
        "--dataset",
        "fashion-mnist",
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--train-size",
        "1024",
        "--engine",
        "funcgrad",
        *extra,
    )
    assert status == 0, err
    assert "(1024 examples, 10000 test)" in out.splitlines()[0]
    assert float(out.strip().splitlines()[-1].split()[-1]) > 0.4  # 16 steps: well above 0.1
