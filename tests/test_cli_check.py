"""``funcgrad check``: prints the reports, exits 0 when every gradient agrees and 1 otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import pytest

from funcgrad import cli, cli_check, manual


def run(capsys, *argv):
    status = cli.main(["check", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_linear_prints_every_pair_and_exits_zero(capsys):
    status, out, _ = run(capsys, "--model", "linear")
    assert status == 0
    assert out.startswith("linear: one neuron y = x @ W + b, 2 inputs, MSE, batch 32 [float32]")
    for pair in ("fg~jax", "manual~jax", "fd~jax"):
        assert pair in out
    assert "OK: all 6 comparisons within tolerance" in out
    assert "funcgrad check: OK: linear OK" in out


def test_xor_checks_the_delta_terms_as_intermediates(capsys):
    status, out, _ = run(capsys, "--model", "xor", "--wide")
    assert status == 0
    lines = out.splitlines()
    assert lines[1].split() == ["leaf", "shape", "dtype", "fg~jax", "manual~jax", "fd~jax"]
    assert lines[2].startswith("tag:net_out") and lines[3].startswith("tag:net_hidden")


def test_a_wrong_hand_derived_gradient_exits_one_and_names_the_leaf(capsys, monkeypatch):
    def wrong(params, x, y):
        g = manual.linear.grad(params, x, y)
        return {"W": g["W"], "b": -g["b"]}

    monkeypatch.setitem(
        cli_check.CASES, "linear",
        lambda key, dtype: cli_check.Case("planted", manual.linear.loss,
                                          cli_check._linear(key, dtype).args, {"manual": wrong}),
    )
    status, out, _ = run(capsys, "--model", "linear")
    assert status == 1
    assert "FAILED: 1 of 6 comparisons out of tolerance: b (manual~jax)" in out
    assert "funcgrad check: FAILED: linear FAILED" in out


def test_an_error_is_reported_as_the_models_verdict_and_the_next_model_still_runs(
    capsys, monkeypatch
):
    def broken(key, dtype):
        raise RuntimeError("no such primitive rule\nsecond line")

    monkeypatch.setitem(cli_check.CASES, "linear", broken)
    monkeypatch.setattr(cli_check, "MODELS", ("linear", "xor"))
    status, out, err = run(capsys, "--model", "all")
    assert status == 1
    assert "linear: ERROR RuntimeError: no such primitive rule" in err
    assert "second line" not in err
    assert "xor OK" in out and "linear ERROR RuntimeError" in out


def test_x64_runs_everything_in_float64(capsys):
    status, out, _ = run(capsys, "--model", "linear", "--x64")
    assert status == 0
    assert "[float64]" in out and "float64 rtol=1e-10 atol=1e-12" in out
    assert not any("gross errors" in line for line in out.splitlines())
    assert jnp.zeros(1).dtype == jnp.float32  # x64 was scoped to the command


def test_json_is_one_document_with_a_report_per_model(capsys):
    status, out, err = run(capsys, "--model", "linear", "--json")
    assert status == 0
    (report,) = json.loads(out)
    assert report["model"] == "linear" and report["ok"] is True
    assert {row["pair"] for row in report["rows"]} == {"fg~jax", "manual~jax", "fd~jax"}
    assert "funcgrad check: OK" in err


def test_bad_arguments(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["check", "--model", "resnet"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'resnet'" in capsys.readouterr().err
    status, _, err = run(capsys, "--model", "linear", "--fd-elements", "0")
    assert status == 2 and "--fd-elements must be at least 1" in err


def test_every_model_has_a_case_and_all_runs_each(monkeypatch, capsys):
    assert set(cli_check.CASES) == set(cli_check.MODELS)
    seen = []
    real = cli_check.check
    monkeypatch.setattr(cli_check, "check",
                        lambda name, **kw: seen.append(name) or real("linear", **kw))
    status, _, _ = run(capsys)
    assert status == 0 and seen == list(cli_check.MODELS)


@pytest.mark.parametrize("name", ["mlp", "cnn", "transformer"])
def test_the_bigger_models_build_and_trace(name):
    import jax

    case = cli_check.CASES[name](jax.random.key(0), jnp.float32)
    out = jax.eval_shape(case.loss, *case.args)
    assert out.shape == () and out.dtype == jnp.float32
    for grad in case.reference.values():
        grads = jax.eval_shape(grad, *case.args)
        assert jax.tree.structure(grads) == jax.tree.structure(case.args[0])


def test_the_console_script(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    script = os.path.join(os.path.dirname(sys.executable), "funcgrad")
    done = subprocess.run([script, "check", "--model", "linear", "--x64"], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "funcgrad check: OK: linear OK" in done.stdout
