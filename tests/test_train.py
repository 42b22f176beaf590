"""fit(): small models on synthetic data, with both gradient engines, in seconds."""

import io
import json
import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import funcgrad as fg
from funcgrad import train
from funcgrad.models import linear, mlp
from funcgrad.train import compiler_options as train_compiler_options

ENGINES = ("jax", "funcgrad")


@pytest.fixture(scope="module")
def moons():
    x, y = fg.data.two_moons(jax.random.key(0), 1024, noise=0.1)
    (x_tr, y_tr), (x_te, y_te) = fg.data.train_val_split(jax.random.key(1), x, y, 0.25)
    return (x_tr, y_tr), (x_te, y_te)


def moons_loss():
    return train.classifier_loss(mlp.apply)


def leaves_equal(a, b):
    return all(
        np.array_equal(np.asarray(u), np.asarray(v))
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_moons_mlp_reaches_97_percent(moons, engine):
    train_data, test_data = moons
    params = mlp.init(jax.random.key(2), [2, 16, 16, 1])
    params, history = train.fit(
        moons_loss(),
        params,
        train_data,
        optimizer=optax.adam(1e-2),
        epochs=20,
        batch_size=32,
        key=jax.random.key(3),
        has_aux=True,
        eval_data=test_data,
        grad_engine=engine,
    )
    assert history["eval_accuracy"][-1] >= 0.97
    assert history["loss"][-1] < history["loss"][0]
    assert set(history) == {
        "loss",
        "accuracy",
        "eval_loss",
        "eval_accuracy",
        "epoch_time",
        "wall_time",
    }
    assert all(len(v) == 20 for v in history.values())
    assert all(isinstance(v, float) for values in history.values() for v in values)


def test_both_engines_train_to_the_same_params(moons):
    train_data, _ = moons
    params = mlp.init(jax.random.key(4), [2, 16, 16, 1])
    results = [
        train.fit(
            moons_loss(),
            params,
            train_data,
            optimizer=optax.adam(1e-2),
            epochs=3,
            batch_size=64,
            key=jax.random.key(5),
            has_aux=True,
            grad_engine=engine,
        )
        for engine in ENGINES
    ]
    (p_jax, h_jax), (p_fg, h_fg) = results
    for a, b in zip(jax.tree.leaves(p_jax), jax.tree.leaves(p_fg)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(h_jax["loss"], h_fg["loss"], rtol=1e-5)


@pytest.mark.parametrize("engine", ENGINES)
def test_xor_needs_and_gets_a_hidden_layer(engine):
    x, y = fg.data.xor(jax.random.key(0), 400, noise=0.1)
    params = mlp.init(jax.random.key(1), [2, 8, 1])
    loss_fn = train.classifier_loss(mlp.apply, activation="tanh")
    _, history = train.fit(
        loss_fn,
        params,
        (x, y),
        optimizer=optax.adam(3e-2),
        epochs=15,
        batch_size=40,
        key=jax.random.key(2),
        has_aux=True,
        grad_engine=engine,
    )
    assert history["accuracy"][-1] >= 0.98


@pytest.mark.parametrize(
    "optimizer",
    [
        optax.sgd(0.1),
        optax.sgd(0.05, momentum=0.9),
        optax.adam(0.05),
        optax.adamw(0.05, weight_decay=1e-4),
        optax.sgd(optax.linear_schedule(0.1, 0.01, transition_steps=100)),
    ],
    ids=["sgd", "momentum", "adam", "adamw", "sgd-linear-decay"],
)
def test_linear_regression_recovers_the_true_parameters(optimizer):
    x, y = fg.data.linear_regression(jax.random.key(0), 512, dim=2, noise=0.01)
    params = linear.init(jax.random.key(1), 2, 1)
    params, history = train.fit(
        train.regression_loss(linear.apply),
        params,
        (x, y),
        optimizer=optimizer,
        epochs=30,
        batch_size=32,
        key=jax.random.key(2),
        grad_engine="funcgrad",
    )
    np.testing.assert_allclose(params["W"][:, 0], [2.0, -1.0], atol=0.02)
    np.testing.assert_allclose(params["b"], [0.5], atol=0.02)
    assert history["loss"][-1] < 1e-3


def test_a_schedule_that_reaches_zero_freezes_the_params():
    x, y = fg.data.linear_regression(jax.random.key(0), 64, dim=1)
    # 64 / 16 = 4 steps per epoch: the learning rate is 0 from step 8, i.e. from epoch 2 on.
    schedule = optax.linear_schedule(0.1, 0.0, transition_steps=8)
    frames = []
    train.fit(
        train.regression_loss(linear.apply),
        linear.init(jax.random.key(1), 1),
        (x, y),
        optimizer=optax.sgd(schedule),
        epochs=4,
        batch_size=16,
        key=jax.random.key(2),
        callbacks=[lambda state: frames.append(state["params"])],
    )
    assert not leaves_equal(frames[0], frames[1])
    assert leaves_equal(frames[1], frames[2]) and leaves_equal(frames[2], frames[3])


def test_callbacks_see_every_epoch_and_can_stop_training(moons):
    train_data, _ = moons
    seen = []

    def record(state):
        seen.append(state)

    def stop_after_three(state):
        return state["epoch"] == 2

    params, history = train.fit(
        moons_loss(),
        mlp.init(jax.random.key(0), [2, 8, 1]),
        train_data,
        optimizer=optax.adam(1e-2),
        epochs=10,
        batch_size=100,
        key=jax.random.key(1),
        has_aux=True,
        callbacks=[record, stop_after_three],
    )
    n_steps = len(train_data[0]) // 100  # 768 // 100 = 7: the remainder of 68 is dropped
    assert [s["epoch"] for s in seen] == [0, 1, 2]
    assert [s["step"] for s in seen] == [n_steps, 2 * n_steps, 3 * n_steps]
    assert all(s["epochs"] == 10 for s in seen)
    assert seen[0]["step_losses"].shape == (n_steps,)
    assert float(seen[0]["step_losses"].mean()) == pytest.approx(history["loss"][0])
    assert int(seen[-1]["opt_state"][0].count) == 3 * n_steps
    assert leaves_equal(seen[-1]["params"], params)
    assert len(history["loss"]) == 3


def test_fit_copies_params_and_leaves_the_callers_arrays_alone():
    x, y = fg.data.linear_regression(jax.random.key(0), 64)
    params = linear.init(jax.random.key(1), 1)
    before = jax.tree.map(np.array, params)
    trained, _ = train.fit(
        train.regression_loss(linear.apply),
        params,
        (x, y),
        optimizer=optax.sgd(0.1),
        epochs=2,
        batch_size=16,
        key=jax.random.key(2),
    )
    assert leaves_equal(params, before)  # still readable and unchanged
    assert not leaves_equal(trained, before)


def test_eval_counts_every_example_including_a_short_last_batch(moons):
    _, (x_te, y_te) = moons  # 256 examples: batches of 100, 100 and a short one of 56
    params = mlp.init(jax.random.key(0), [2, 8, 1])
    loss_fn = moons_loss()
    expected_loss, expected_aux = loss_fn(params, x_te, y_te)
    metrics = train.evaluate(
        lambda p, x, y: dict(
            zip(("loss", "accuracy"), (loss_fn(p, x, y)[0], loss_fn(p, x, y)[1]["accuracy"]))
        ),
        params,
        (x_te, y_te),
        batch_size=100,
    )
    assert metrics["loss"] == pytest.approx(float(expected_loss), rel=1e-5)
    assert metrics["accuracy"] == pytest.approx(float(expected_aux["accuracy"]), abs=1e-6)


def test_one_hot_labels_and_a_custom_eval_fn():
    x, y = fg.data.xor(jax.random.key(0), 200)
    one_hot = jax.nn.one_hot(y, 2)
    loss_fn = train.classifier_loss(mlp.apply)  # (batch, 2) logits, one-hot labels: softmax CE
    params = mlp.init(jax.random.key(1), [2, 8, 2])
    expected = float(fg.losses.softmax_cross_entropy(mlp.apply(params, x), y))
    assert float(loss_fn(params, x, one_hot)[0]) == pytest.approx(expected, rel=1e-6)

    def errors(p, xb, yb):
        return {"error": 1.0 - loss_fn(p, xb, yb)[1]["accuracy"]}

    _, history = train.fit(
        loss_fn,
        params,
        (x, one_hot),
        optimizer=optax.adam(3e-2),
        epochs=10,
        batch_size=20,
        key=jax.random.key(2),
        has_aux=True,
        eval_data=(x, one_hot),
        eval_fn=errors,
    )
    assert list(history) == ["loss", "accuracy", "eval_error", "epoch_time", "wall_time"]
    assert history["eval_error"][-1] == pytest.approx(1 - history["accuracy"][-1], abs=0.1)
    assert history["eval_error"][-1] < 0.1


def test_print_epochs_writes_one_line_per_epoch(capsys):
    x, y = fg.data.linear_regression(jax.random.key(0), 64)
    train.fit(
        train.regression_loss(linear.apply),
        linear.init(jax.random.key(1), 1),
        (x, y),
        optimizer=optax.sgd(0.1),
        epochs=3,
        batch_size=16,
        key=jax.random.key(2),
        callbacks=[train.print_epochs()],
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("  ")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert "loss " in lines[0]


# ---------------------------------------------------------------------------------------------
# Progress


class FakeTerminal(io.StringIO):
    """What tqdm sees on a terminal: a tty that takes UTF-8."""

    encoding = "utf-8"

    def isatty(self):
        return True


def linear_fit_args():
    x, y = fg.data.linear_regression(jax.random.key(0), 64)
    return (train.regression_loss(linear.apply), linear.init(jax.random.key(1), 1), (x, y))


LINEAR_FIT = dict(optimizer=optax.sgd(0.1), epochs=2, batch_size=8, key=jax.random.key(2))


def test_on_a_terminal_one_bar_counts_the_steps_of_the_run(monkeypatch):
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    _, history = train.fit(*linear_fit_args(), **LINEAR_FIT)  # default: drawn on a terminal
    draws = terminal.getvalue().split("\r")
    assert draws[0] == ""  # every draw starts at the beginning of the line
    assert draws[1] == "epoch 1/2:   0%|          | 0/16 [00:00<?, ?step/s]"
    assert draws[-1].startswith("epoch 2/2: 100%|██████████| 16/16 [00:00<00:00, ")
    assert draws[-1].endswith(f"step/s, loss={history['loss'][-1]:.4g}]\n")
    assert terminal.getvalue().count("\n") == 1  # one bar for the whole run, left on screen

    terminal.seek(0)
    terminal.truncate()
    train.fit(*linear_fit_args(), **LINEAR_FIT, progress=False)
    assert terminal.getvalue() == ""


def test_progress_draws_into_a_pipe_only_when_asked(capsys):
    train.fit(*linear_fit_args(), **LINEAR_FIT)  # stderr is captured: not a terminal, no bar
    assert capsys.readouterr() == ("", "")
    train.fit(*linear_fit_args(), **LINEAR_FIT, progress=True)
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("\repoch 1/2:   0%|") and "\repoch 2/2: 100%|" in err
    assert "| 16/16 [" in err and "loss=" in err and err.endswith("]\n")


def test_printing_callbacks_and_the_bar_do_not_mix(moons, capsys):
    train_data, test_data = moons
    train.fit(moons_loss(), mlp.init(jax.random.key(0), [2, 8, 1]), train_data,
              optimizer=optax.adam(1e-2), epochs=3, batch_size=100, key=jax.random.key(1),
              has_aux=True, eval_data=test_data, callbacks=[train.print_epochs()],
              progress=True)
    out, err = capsys.readouterr()
    lines = out.splitlines()  # the epoch lines are whole lines, with no bar in them
    assert [line.split("  ")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert not any("|" in line for line in lines)
    last = err.split("\r")[-1]  # the bar shows the last epoch's metrics, train and eval
    assert last.startswith("epoch 3/3: 100%|██████████| 21/21 [")
    for name in ("loss", "accuracy", "eval_loss", "eval_accuracy"):
        assert f" {name}=" in last or f", {name}=" in last


def test_a_run_stopped_by_a_callback_ends_its_bar_where_it_stopped(capsys):
    train.fit(*linear_fit_args(), **{**LINEAR_FIT, "epochs": 5}, progress=True,
              callbacks=[lambda state: state["epoch"] == 1])
    last = capsys.readouterr().err.split("\r")[-1]
    assert last.startswith("epoch 2/5: 100%|██████████| 16/16 [")
    assert last.endswith(", stopped early]\n")


def test_the_epoch_reports_from_inside_jit_to_the_bar_whose_id_it_gets(monkeypatch):
    """The compiled epoch is shared by every fit with the same settings: which bar it advances
    is an argument of each call, so two runs never advance each other's bars."""
    from tqdm.std import tqdm as text_bar

    from funcgrad.train import progress as train_progress
    from funcgrad.train.programs import ProgramSettings, programs_for

    class RecordingBar(text_bar):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, file=io.StringIO(), **kwargs)
            self.seen = []  # the count after every update

        def update(self, n=1):
            super().update(n)
            self.seen.append(self.n)

    monkeypatch.setattr(train_progress, "tqdm", RecordingBar)
    loss_fn, params, data = linear_fit_args()
    optimizer = optax.sgd(0.1)
    settings = ProgramSettings("jax", False, None, batch_size=4, with_progress=True)
    programs = programs_for(loss_fn, optimizer, settings)
    key = jax.random.key(2)
    order = programs.order(key, 64)  # 16 steps
    a, b = (
        train_progress.FitProgress(enabled=True, first_epoch=0, epochs=2, num_steps=16)
        for _ in range(2)
    )
    with a, b, a.epoch(1) as (id_a, every_a), b.epoch(0) as (id_b, _):
        assert every_a == 1 and id_a != id_b  # first epoch: every 1/20 of it, at least 1 step
        args = programs.epoch_args(params, optimizer.init(params), key, order, data, id_a, 4)
        jax.block_until_ready(programs.epoch(*args))
        # From epoch 1's start (16 steps in): every 4th step but the last (the caller draws it).
        assert a.bar.seen == [20, 24, 28] and b.bar.seen == []
        args = programs.epoch_args(params, optimizer.init(params), key, order, data, id_b, 5)
        jax.block_until_ready(programs.epoch(*args))
        assert a.bar.seen == [20, 24, 28] and b.bar.seen == [5, 10, 15]
        no_bar = programs.epoch_args(params, optimizer.init(params), key, order, data)
        jax.block_until_ready(programs.epoch(*no_bar))
        assert a.bar.seen == [20, 24, 28] and b.bar.seen == [5, 10, 15]
    train_progress.report_progress(id_a, 10)  # after its epoch: ignored
    assert a.bar.seen == [20, 24, 28]


def test_without_progress_the_epoch_program_has_no_host_callback():
    from funcgrad.train.programs import ProgramSettings, programs_for

    loss_fn, params, data = linear_fit_args()
    optimizer = optax.sgd(0.1)
    for with_progress in (False, True):
        settings = ProgramSettings("jax", False, None, batch_size=4, with_progress=with_progress)
        programs = programs_for(loss_fn, optimizer, settings)
        key = jax.random.key(2)
        args = programs.epoch_args(params, optimizer.init(params), key, programs.order(key, 64),
                                   data)
        assert ("_callback" in programs.epoch.lower(*args).as_text()) == with_progress


def test_reports_every_twentieth_of_the_first_epoch_then_about_every_tenth_of_a_second():
    from funcgrad.train.progress import REPORT_SECONDS, FitProgress

    progress = FitProgress(enabled=True, first_epoch=0, epochs=3, num_steps=1000)
    assert progress.report_every() == 50  # the step time is not known yet
    progress.seconds_per_step = REPORT_SECONDS / 400
    assert progress.report_every() == 400
    progress.seconds_per_step = REPORT_SECONDS / 10_000  # tiny steps: no report inside an epoch
    assert progress.report_every() == 10_000
    progress.seconds_per_step = REPORT_SECONDS  # slow steps: still at most 20 reports an epoch
    assert progress.report_every() == 50
    assert FitProgress(enabled=True, first_epoch=0, epochs=1, num_steps=7).report_every() == 1


# ---------------------------------------------------------------------------------------------
# Divergence


@pytest.mark.parametrize("engine", ENGINES)
def test_a_huge_learning_rate_stops_with_the_last_finite_state(tmp_path, engine):
    x, y = fg.data.linear_regression(jax.random.key(0), 256, dim=2)
    params = linear.init(jax.random.key(1), 2)
    path = tmp_path / "run.fgz"
    with pytest.raises(train.TrainingDivergedError) as info:
        train.fit(
            train.regression_loss(linear.apply),
            params,
            (x, y),
            optimizer=optax.sgd(1e3),
            epochs=50,
            batch_size=16,
            key=jax.random.key(2),
            grad_engine=engine,
            checkpoint_path=path,
        )
    err = info.value
    assert isinstance(err, FloatingPointError)
    assert err.epoch == 0 and 0 < err.step < 16
    assert err.global_step == err.step
    # The loss overflows first, or an update makes a weight non-finite: either is named.
    assert not np.isfinite(err.loss) or err.leaf in ("W", "b")
    assert f"step {err.step} of epoch 0" in str(err) and f"the loss was {err.loss}" in str(err)
    if err.leaf is not None:
        assert f"{err.leaf} is the first non-finite parameter leaf" in str(err)
    # The carried state is finite, and it is exactly the state before the bad step: one more
    # plain SGD step from it on the same batch gives a non-finite parameter.
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(err.params))
    xb, yb = fg.data.batches(jax.random.fold_in(jax.random.key(2), 0), x, y, 16)
    loss, grads = jax.value_and_grad(train.regression_loss(linear.apply))(
        err.params, xb[err.step], yb[err.step]
    )
    stepped = jax.tree.map(lambda p, g: p - 1e3 * g, err.params, grads)
    assert not (
        np.isfinite(float(loss))
        and all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(stepped))
    )
    # ... and the same state was saved beside the (absent: no epoch finished) epoch checkpoint.
    assert err.checkpoint_path == tmp_path / "run.diverged.fgz"
    saved = fg.checkpoint.load(err.checkpoint_path)
    assert leaves_equal(saved["params"], err.params)
    assert saved["step"] == err.global_step
    assert saved["metadata"]["diverged"] == {"epoch": 0, "step": err.step, "leaf": err.leaf}
    assert not path.exists()


def test_divergence_in_a_later_epoch_keeps_the_finished_epochs(tmp_path):
    x, y = fg.data.linear_regression(jax.random.key(0), 64, dim=1)
    # The learning rate grows past the stability limit during the third epoch.
    schedule = optax.linear_schedule(0.01, 200.0, transition_steps=12)
    path = tmp_path / "ckpt.fgz"
    with pytest.raises(train.TrainingDivergedError) as info:
        train.fit(
            train.regression_loss(linear.apply),
            linear.init(jax.random.key(1), 1),
            (x, y),
            optimizer=optax.sgd(schedule),
            epochs=10,
            batch_size=16,
            key=jax.random.key(2),
            checkpoint_path=path,
        )
    err = info.value
    assert err.epoch >= 1
    assert len(err.history["loss"]) == err.epoch
    assert err.global_step == err.epoch * 4 + err.step
    assert int(err.opt_state[1].count) == err.global_step  # the schedule counts steps
    assert fg.checkpoint.load(path)["metadata"]["epoch"] == err.epoch  # last finished epoch
    with pytest.raises(ValueError, match="diverged run"):
        train.fit(
            train.regression_loss(linear.apply),
            linear.init(jax.random.key(1), 1),
            (x, y),
            optimizer=optax.sgd(schedule),
            epochs=10,
            batch_size=16,
            key=jax.random.key(2),
            resume_from=err.checkpoint_path,
        )


def test_a_nan_in_the_data_is_reported_with_the_loss():
    x, y = fg.data.linear_regression(jax.random.key(0), 64, dim=1)
    x = x.at[10].set(jnp.nan)
    with pytest.raises(train.TrainingDivergedError, match="the loss was nan") as info:
        train.fit(
            train.regression_loss(linear.apply),
            linear.init(jax.random.key(1), 1),
            (x, y),
            optimizer=optax.sgd(0.01),
            epochs=2,
            batch_size=8,
            key=jax.random.key(2),
        )
    err = info.value
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(jax.random.key(2), 0), 64))
    assert err.epoch == 0 and err.step == int(np.flatnonzero(perm == 10)[0]) // 8


# ---------------------------------------------------------------------------------------------
# Checkpoints and resuming


def resume_setup(dropout_rate=0.0):
    x, y = fg.data.two_moons(jax.random.key(0), 300, noise=0.2)
    params = mlp.init(jax.random.key(1), [2, 16, 16, 1])
    optimizer = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(optax.linear_schedule(1e-2, 1e-3, transition_steps=60), weight_decay=1e-3),
    )
    common = dict(
        optimizer=optimizer,
        batch_size=32,
        key=jax.random.key(7),
        has_aux=True,
        eval_data=(x[:100], y[:100]),
    )
    loss_fn = train.classifier_loss(mlp.apply, dropout_rate=dropout_rate)
    return loss_fn, params, (x, y), common


@pytest.mark.parametrize("dropout_rate", [0.0, 0.3])
@pytest.mark.parametrize("engine", ENGINES)
def test_resuming_reproduces_the_uninterrupted_run_exactly(tmp_path, engine, dropout_rate):
    loss_fn, params, data, common = resume_setup(dropout_rate)
    straight, h_straight = train.fit(loss_fn, params, data, epochs=4, grad_engine=engine, **common)
    path = tmp_path / "ckpt.fgz"
    train.fit(loss_fn, params, data, epochs=2, grad_engine=engine, checkpoint_path=path, **common)
    assert fg.checkpoint.inspect(path)["step"] == 2 * (300 // 32)
    resumed, h_resumed = train.fit(
        loss_fn,
        params,
        data,
        epochs=4,
        grad_engine=engine,
        resume_from=path,
        checkpoint_path=path,
        **common,
    )
    assert leaves_equal(straight, resumed)
    for name in ("loss", "accuracy", "eval_loss", "eval_accuracy"):
        assert h_resumed[name] == h_straight[name]
    assert len(h_resumed["wall_time"]) == 4
    assert fg.checkpoint.load(path)["metadata"]["epoch"] == 4


def test_resuming_with_a_different_key_or_batch_size_is_refused(tmp_path):
    loss_fn, params, data, common = resume_setup()
    path = tmp_path / "ckpt.fgz"
    train.fit(loss_fn, params, data, epochs=1, checkpoint_path=path, **common)
    with pytest.raises(ValueError, match="different key"):
        train.fit(
            loss_fn,
            params,
            data,
            epochs=2,
            resume_from=path,
            **{**common, "key": jax.random.key(8)},
        )
    with pytest.raises(ValueError, match="batch_size=32"):
        train.fit(loss_fn, params, data, epochs=2, resume_from=path, **{**common, "batch_size": 16})


def test_initial_epoch_and_opt_state_continue_a_run_by_hand():
    loss_fn, params, data, common = resume_setup()
    straight, _ = train.fit(loss_fn, params, data, epochs=2, **common)
    states = []
    first, _ = train.fit(loss_fn, params, data, epochs=1, callbacks=[states.append], **common)
    second, history = train.fit(
        loss_fn, first, data, epochs=2, initial_epoch=1, opt_state=states[-1]["opt_state"], **common
    )
    assert leaves_equal(straight, second)
    assert len(history["loss"]) == 1


# ---------------------------------------------------------------------------------------------
# Argument checking


def fit_linear(**overrides):
    x, y = fg.data.linear_regression(jax.random.key(0), 64)
    args = dict(
        loss_fn=train.regression_loss(linear.apply),
        params=linear.init(jax.random.key(1), 1),
        train_data=(x, y),
        optimizer=optax.sgd(0.1),
        epochs=1,
        batch_size=16,
        key=jax.random.key(2),
    )
    args.update(overrides)
    return train.fit(args.pop("loss_fn"), args.pop("params"), args.pop("train_data"), **args)


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"batch_size": 65}, ValueError, "batch_size=65 is larger than the 64"),
        ({"batch_size": 0}, ValueError, "batch_size must be an int >= 1"),
        ({"epochs": -1}, ValueError, "epochs must be an int >= 0"),
        (
            {"train_data": (jnp.zeros((64, 1)), jnp.zeros((63,)))},
            ValueError,
            "64 inputs but 63 targets",
        ),
        ({"train_data": jnp.zeros((64, 1))}, TypeError, "pair"),
        ({"grad_engine": "torch"}, ValueError, "grad_engine must be one of"),
        (
            {"params": {"W": jnp.zeros((1, 1), jnp.int32), "b": jnp.zeros((1,))}},
            TypeError,
            "params leaf W has dtype int32",
        ),
        ({"params": {"W": "weights", "b": jnp.zeros((1,))}}, TypeError, "params leaf W is a str"),
        ({"optimizer": "adam"}, TypeError, "optax GradientTransformation"),
        ({"key": 0}, TypeError, "key must be one jax.random key"),
        ({"has_aux": True}, TypeError, "does not return a pair"),
        (
            {"loss_fn": lambda p, x, y: linear.apply(p, x)},
            TypeError,
            "must return a scalar loss",
        ),
        (
            {"loss_fn": train.classifier_loss(linear.apply)},
            TypeError,
            "pass has_aux=True",
        ),
        ({"eval_data": (jnp.zeros((3, 1)), jnp.zeros((2,)))}, ValueError, "eval_data has 3"),
        ({"callbacks": [None]}, TypeError, "callback must be callable"),
        ({"compiler_options": ["xla_cpu_enable_fast_math"]}, TypeError, "dict of XLA option"),
        ({"compiler_options": {"xla_cpu_enable_fast_math": None}}, TypeError, "str, bool, int"),
        (
            {"compiler_options": {"xla_no_such_option": True}},
            ValueError,
            "XLA rejected compiler_options.*xla_no_such_option",
        ),
    ],
)
def test_bad_arguments_are_named(overrides, error, match):
    with pytest.raises(error, match=match):
        fit_linear(**overrides)


def test_a_mesh_without_the_data_axis_is_refused():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("model",))
    with pytest.raises(ValueError, match="no 'data' axis"):
        fit_linear(mesh=mesh)


def test_default_compiler_options_are_for_cpu_only_and_fall_back_to_none(monkeypatch):
    cpu = train.default_compiler_options("cpu")
    assert cpu == train_compiler_options._CPU_COMPILER_OPTIONS, (
        "this jaxlib's XLA rejects fit's CPU option: fit still works (with XLA's defaults) but "
        "has lost its Eigen matmuls; find the option's new name and update _CPU_COMPILER_OPTIONS"
    )
    assert train.default_compiler_options("gpu") == {}
    assert train.default_compiler_options("tpu") == {}
    # An XLA that no longer knows the option: fit compiles with XLA's defaults and trains.
    renamed = {"xla_renamed_in_a_later_release": "x"}
    monkeypatch.setattr(train_compiler_options, "_CPU_COMPILER_OPTIONS", renamed)
    assert train.default_compiler_options("cpu") == {}
    _, history = fit_linear(epochs=2)
    assert len(history["loss"]) == 2


def test_compiler_options_default_and_xla_defaults_train_alike():
    """fit's CPU options change which library runs the matmuls, not what is computed."""
    (x, y) = fg.data.two_moons(jax.random.key(0), 512, noise=0.1)
    params = mlp.init(jax.random.key(1), [2, 16, 16, 1])
    runs = [
        train.fit(
            moons_loss(),
            params,
            (x, y),
            optimizer=optax.adam(1e-2),
            epochs=3,
            batch_size=64,
            key=jax.random.key(2),
            has_aux=True,
            compiler_options=options,
        )
        for options in (None, {})
    ]
    (p_fit, h_fit), (p_xla, h_xla) = runs
    np.testing.assert_allclose(h_fit["loss"], h_xla["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(p_fit), jax.tree.leaves(p_xla), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_zero_epochs_returns_the_params_unchanged():
    params = linear.init(jax.random.key(1), 1)
    out, history = fit_linear(params=params, epochs=0)
    assert leaves_equal(out, params)
    assert history["loss"] == []


# ---------------------------------------------------------------------------------------------
# Many devices


MESH_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np, optax
    import funcgrad as fg
    from funcgrad import train
    from funcgrad.models import mlp

    engine = sys.argv[1]
    assert len(jax.devices()) == 8, jax.devices()
    x, y = fg.data.two_moons(jax.random.key(0), 1000, noise=0.1)
    params = mlp.init(jax.random.key(1), [2, 16, 16, 1])
    common = dict(optimizer=optax.adam(1e-2), epochs=3, batch_size=64, key=jax.random.key(2),
                  has_aux=True, eval_data=(x[:200], y[:200]), eval_batch_size=48,
                  grad_engine=engine)
    single, h1 = train.fit(train.classifier_loss(mlp.apply), params, (x, y), **common)
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    seen = []
    sharded, h8 = train.fit(train.classifier_loss(mlp.apply), params, (x, y), mesh=mesh,
                            callbacks=[lambda s: seen.append(s["params"])], progress=True,
                            **common)
    leaf = jax.tree.leaves(seen[-1])[0]
    try:
        train.fit(train.classifier_loss(mlp.apply), params, (x, y), mesh=mesh,
                  **{**common, "batch_size": 60})
        uneven = "accepted"
    except ValueError as e:
        uneven = str(e)
    print(json.dumps({
        "diff": max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(sharded))),
        "scale": max(float(np.max(np.abs(np.asarray(a)))) for a in jax.tree.leaves(single)),
        "loss1": h1["loss"], "loss8": h8["loss"],
        "acc1": h1["eval_accuracy"], "acc8": h8["eval_accuracy"],
        "replicated": bool(leaf.sharding.is_fully_replicated),
        "devices": len(leaf.sharding.device_set),
        "uneven": uneven,
    }))
    """
)


@pytest.mark.parametrize("engine", ENGINES)
def test_sharded_over_8_devices_matches_one_device(engine):
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    out = subprocess.run(
        [sys.executable, "-c", MESH_SCRIPT, engine],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # Same batches in the same order; only the order of the batch reductions differs
    # (per-device partial sums, then an all-reduce), so float32 rounding drifts a little over
    # 45 Adam steps: a few ulps per step, amplified by training, far below the weights' scale.
    assert result["diff"] <= 1e-4 * max(result["scale"], 1.0)
    np.testing.assert_allclose(result["loss8"], result["loss1"], rtol=1e-4)
    assert result["acc8"] == pytest.approx(result["acc1"], abs=1 / 200)
    assert result["replicated"] and result["devices"] == 8
    assert "batch_size=60 does not split evenly over the 8 devices" in result["uneven"]
    # The sharded run's bar (reported from the sharded program) counts its 3 × 15 steps once.
    counts = [int(n) for n in re.findall(r"\| (\d+)/45 \[", out.stderr)]
    assert counts and counts[-1] == 45 and max(counts) == 45 and counts == sorted(counts)


MULTI_HOST_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax
    process, port, checkpoint = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    jax.distributed.initialize(  # CPU collectives: gloo, JAX's default
        coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process
    )
    import numpy as np, optax
    import funcgrad as fg
    from funcgrad import train
    from funcgrad.models import mlp

    # The README's recipe: every process passes the same data and key; the mesh spans the
    # devices of every process.
    x, y = fg.data.two_moons(jax.random.key(0), 1000, noise=0.1)
    params = mlp.init(jax.random.key(1), [2, 16, 16, 1])
    common = dict(optimizer=optax.adam(1e-2), epochs=3, batch_size=64, key=jax.random.key(2),
                  has_aux=True, eval_data=(x[:200], y[:200]), eval_batch_size=48,
                  grad_engine="funcgrad")
    single, h1 = train.fit(train.classifier_loss(mlp.apply), params, (x, y), **common)
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    sharded, h4 = train.fit(train.classifier_loss(mlp.apply), params, (x, y), mesh=mesh,
                            checkpoint_path=checkpoint, **common)
    leaf = jax.tree.leaves(sharded)[0]
    print(json.dumps({
        "process": jax.process_index(), "processes": jax.process_count(),
        "devices": len(leaf.sharding.device_set), "local": jax.local_device_count(),
        "diff": max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(sharded))),
        "loss1": h1["loss"], "loss4": h4["loss"],
        "acc1": h1["eval_accuracy"], "acc4": h4["eval_accuracy"],
        "params": [np.asarray(a).tolist() for a in jax.tree.leaves(sharded)],
    }))
    """
)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_with_jax_distributed_match_one_device(tmp_path):
    """Multi-host as the README describes it, on one machine: two processes with two CPU devices
    each, joined by ``jax.distributed.initialize`` (gloo collectives), one mesh of 4 devices."""
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu"
    )
    checkpoint = tmp_path / "run.fgz"
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MULTI_HOST_SCRIPT, str(i), port, str(checkpoint)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    try:
        outputs = [proc.communicate(timeout=600) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    results = []
    for proc, (stdout, stderr) in zip(procs, outputs):
        assert proc.returncode == 0, stderr[-3000:]
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    for i, result in enumerate(results):
        assert result["process"] == i and result["processes"] == 2
        assert result["devices"] == 4 and result["local"] == 2
        # Same batches as one device; only the reduction order differs (see the 8-device test).
        assert result["diff"] <= 1e-4
        np.testing.assert_allclose(result["loss4"], result["loss1"], rtol=1e-4)
        assert result["acc4"] == pytest.approx(result["acc1"], abs=1 / 200)
    assert results[0]["params"] == results[1]["params"]  # every process holds the same state
    # Process 0 wrote the checkpoint (once, atomically); it loads as the trained state.
    restored = fg.checkpoint.load(checkpoint)
    for got, want in zip(jax.tree.leaves(restored["params"]), results[0]["params"], strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want, np.float32))
    assert [p.name for p in tmp_path.iterdir()] == ["run.fgz"]


# ---------------------------------------------------------------------------------------------
# Per-step keys (dropout)


def key_probe_loss(params, x, y, key=None):
    """An MSE whose aux reports a uniform draw from the step's key (0 without one)."""
    loss = jnp.mean((x @ params["w"] - y) ** 2)
    draw = jnp.zeros(()) if key is None else jax.random.uniform(key)
    return loss, {"draw": draw}


@pytest.mark.parametrize("engine", ENGINES)
def test_a_loss_with_a_key_parameter_gets_a_fresh_key_every_step(engine):
    x = jax.random.normal(jax.random.key(0), (256, 3))
    y = x @ jnp.array([1.0, -2.0, 0.5])
    common = dict(optimizer=optax.sgd(0.1), batch_size=32, key=jax.random.key(3), has_aux=True)
    params = {"w": jnp.zeros(3)}
    _, history = train.fit(
        key_probe_loss, params, (x, y), epochs=3, grad_engine=engine, eval_data=(x, y), **common
    )
    draws = history["draw"]  # the epoch mean of 8 uniform draws, one per step
    assert len(set(draws)) == 3 and all(0.1 < d < 0.9 for d in draws)
    assert history["eval_draw"] == [0.0, 0.0, 0.0]  # evaluation passes no key
    _, again = train.fit(key_probe_loss, params, (x, y), epochs=3, grad_engine=engine, **common)
    assert again["draw"] == draws  # the keys follow from fit's key: reproducible


def test_dropout_through_classifier_loss_trains_and_differs_from_no_dropout(moons):
    (x, y), (x_te, y_te) = moons
    params = mlp.init(jax.random.key(1), [2, 32, 32, 1])
    common = dict(optimizer=optax.adam(1e-2), batch_size=32, key=jax.random.key(2), has_aux=True)
    with_dropout = train.classifier_loss(mlp.apply, dropout_rate=0.2, activation="tanh")
    trained, history = train.fit(with_dropout, params, (x, y), epochs=30, **common)
    assert history["loss"][-1] < history["loss"][0]
    plain, _ = train.fit(
        train.classifier_loss(mlp.apply, activation="tanh"), params, (x, y), epochs=1, **common
    )
    first_epoch, _ = train.fit(with_dropout, params, (x, y), epochs=1, **common)
    assert not leaves_equal(plain, first_epoch)  # dropout changed the steps
    _, metrics = with_dropout(trained, x_te, y_te)  # no key: evaluation mode, deterministic
    assert float(metrics["accuracy"]) >= 0.95
