"""The common trainer: a resume after a crash equals uninterrupted training bit for bit (weights,
optimiser, curve; the torch RNG, the data stream and every LSH rotation stream restored), validation
disturbs no random stream, a finished model is not retrained, a checkpoint of another model, task or
training setting is refused, a deadline stops at a checkpoint; the schedule and the step summary."""
import pytest
import torch

from bench.training.checkpoint import CheckpointMismatch, load_checkpoint, save_checkpoint
from bench.training.loop import load_trained, step_ms_summary, train_model
from bench.training.settings import TrainSettings, lr_factor
from bench.training.task import Batch

from .toy import Crash, PreviousToken, crash_at, same_weights, settings, toy_config

TASK = PreviousToken()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def curve_of(outcome) -> list[tuple]:
    return [(c.step, c.loss, c.accuracy, c.lr, c.valid) for c in outcome.curve]  # not train_s: a duration


@pytest.mark.parametrize("task", [PreviousToken("generator"), PreviousToken("step")], ids=["generator", "step"])
def test_resume_after_crash_equals_uninterrupted_training(tmp_path, task):
    cfg, st = toy_config(), settings()
    straight = train_model("m", cfg, task, st, tmp_path / "straight.pt", validate_every=4)
    with pytest.raises(Crash):  # dies between checkpoints (at 6; the last one was at 4), like kill -9
        train_model("m", cfg, task, st, tmp_path / "resumed.pt", validate_every=4, on_step=crash_at(6))
    assert load_checkpoint(tmp_path / "resumed.pt")["step"] == 4
    resumed = train_model("m", cfg, task, st, tmp_path / "resumed.pt", validate_every=4)
    assert resumed.resumed_from == 4 and resumed.finished and resumed.step == 12
    assert len(resumed.step_ms) == 4  # intervals ending at 6, 8, 10, 12: none of steps 1-4 redone
    a, b = load_checkpoint(tmp_path / "straight.pt"), load_checkpoint(tmp_path / "resumed.pt")
    assert same_weights(a["model"], b["model"])
    assert curve_of(straight) == curve_of(resumed)
    assert [c.step for c in resumed.curve] == [2, 4, 6, 8, 10, 12]
    assert resumed.curve[1].valid is not None and resumed.curve[0].valid is None
    opt_a, opt_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(same_weights(opt_a[k], opt_b[k]) for k in opt_a)
    assert a["scheduler"] == b["scheduler"]


def test_resume_needs_the_saved_hash_stream(tmp_path):
    """The check above can fail: restarting the LSH rotation streams at resume changes the weights."""
    cfg, st = toy_config(dropout=0.0), settings()
    train_model("m", cfg, TASK, st, tmp_path / "straight.pt")
    with pytest.raises(Crash):
        train_model("m", cfg, TASK, st, tmp_path / "resumed.pt", on_step=crash_at(6))
    payload = load_checkpoint(tmp_path / "resumed.pt")
    assert payload["rng"]["hash"]  # one entry per LSH layer
    for layer in payload["rng"]["hash"].values():
        layer["generators"].clear()  # as if the rotation streams were not saved
    save_checkpoint(tmp_path / "resumed.pt", payload)
    train_model("m", cfg, TASK, st, tmp_path / "resumed.pt")
    a, b = (load_checkpoint(tmp_path / f)["model"] for f in ("straight.pt", "resumed.pt"))
    assert not same_weights(a, b)


def test_resume_needs_the_saved_torch_rng(tmp_path):
    """... and so can the torch RNG's restore: dropout draws from it."""
    cfg, st = toy_config(attention="full"), settings()
    train_model("m", cfg, TASK, st, tmp_path / "straight.pt")
    with pytest.raises(Crash):
        train_model("m", cfg, TASK, st, tmp_path / "resumed.pt", on_step=crash_at(6))
    payload = load_checkpoint(tmp_path / "resumed.pt")
    payload["rng"]["torch"] = torch.manual_seed(999).get_state()
    save_checkpoint(tmp_path / "resumed.pt", payload)
    train_model("m", cfg, TASK, st, tmp_path / "resumed.pt")
    a, b = (load_checkpoint(tmp_path / f)["model"] for f in ("straight.pt", "resumed.pt"))
    assert not same_weights(a, b)


def test_validation_leaves_every_random_stream_as_it_was(tmp_path):
    cfg, st = toy_config(), settings()
    plain = train_model("m", cfg, TASK, st, tmp_path / "plain.pt")
    validated = train_model("m", cfg, TASK, st, tmp_path / "validated.pt", validate_every=2)
    assert all(c.valid is not None for c in validated.curve) and all(c.valid is None for c in plain.curve)
    assert [(c.loss, c.accuracy) for c in plain.curve] == [(c.loss, c.accuracy) for c in validated.curve]
    assert same_weights(load_checkpoint(tmp_path / "plain.pt")["model"],
                        load_checkpoint(tmp_path / "validated.pt")["model"])


def test_finished_model_is_not_retrained(tmp_path):
    cfg, st = toy_config(attention="full"), settings(steps=4, checkpoint_every=2)
    first = train_model("m", cfg, TASK, st, tmp_path / "m.pt")
    blob = (tmp_path / "m.pt").read_bytes()
    again = train_model("m", cfg, TASK, st, tmp_path / "m.pt", on_step=crash_at(1))  # would raise if it trained
    assert again.finished and again.resumed_from == 4 and again.curve == first.curve
    assert (tmp_path / "m.pt").read_bytes() == blob


def test_a_deadline_stops_cleanly_at_the_next_checkpoint(tmp_path):
    cfg, st = toy_config(attention="full"), settings()
    out = train_model("m", cfg, TASK, st, tmp_path / "m.pt", deadline=0.0)  # long past
    assert not out.finished and out.step == 4 == load_checkpoint(tmp_path / "m.pt")["step"]
    assert not load_checkpoint(tmp_path / "m.pt")["finished"]
    assert train_model("m", cfg, TASK, st, tmp_path / "m.pt").finished


def test_checkpoint_of_another_model_task_or_setting_is_refused(tmp_path):
    cfg, st = toy_config(attention="full"), settings(steps=4, checkpoint_every=2)
    train_model("m", cfg, TASK, st, tmp_path / "m.pt")
    with pytest.raises(CheckpointMismatch, match="train"):
        train_model("m", cfg, TASK, settings(steps=4, checkpoint_every=2, lr=1e-2), tmp_path / "m.pt")
    with pytest.raises(CheckpointMismatch, match="config"):
        train_model("m", cfg.replace(d_ff=64), TASK, st, tmp_path / "m.pt")
    with pytest.raises(CheckpointMismatch, match="task"):
        train_model("m", cfg, PreviousToken("step"), st, tmp_path / "m.pt")
    with pytest.raises(CheckpointMismatch, match="name"):
        train_model("other", cfg, TASK, st, tmp_path / "m.pt")
    # how often we log, checkpoint or how many threads: not part of what is trained
    relogged = settings(steps=4, checkpoint_every=4, log_every=4, threads=3)
    again = train_model("m", cfg, TASK, relogged, tmp_path / "m.pt")
    assert again.finished and again.resumed_from == 4


def test_a_checkpoint_of_another_format_is_refused(tmp_path):
    save_checkpoint(tmp_path / "old.pt", {"format": 1, "step": 3})
    with pytest.raises(CheckpointMismatch, match="format"):
        load_checkpoint(tmp_path / "old.pt")
    assert not (tmp_path / "old.pt.tmp").exists()  # written through a temp file, renamed


def test_load_trained_carries_the_weights_into_another_attention(tmp_path):
    cfg, st = toy_config(n_hashes=1), settings(steps=4, checkpoint_every=2)
    train_model("m", cfg, TASK, st, tmp_path / "m.pt")
    saved = load_checkpoint(tmp_path / "m.pt")["model"]
    for other in (cfg.replace(n_hashes=8), cfg.replace(attention="full")):
        model = load_trained(tmp_path / "m.pt", other)
        assert not model.training and same_weights(model.state_dict(), saved)
    with pytest.raises(RuntimeError):  # strict: a model of another shape does not silently load
        load_trained(tmp_path / "m.pt", cfg.replace(d_ff=64))


def test_settings_refuse_inconsistent_values():
    with pytest.raises(ValueError, match="checkpoint_every"):
        settings(checkpoint_every=5, log_every=2)
    with pytest.raises(ValueError, match="warmup_steps"):
        settings(steps=4, warmup_steps=4)
    with pytest.raises(ValueError, match="stepz"):
        TrainSettings(**settings().model_dump(), stepz=3)


def test_settings_identity_is_what_changes_the_weights():
    base = settings().identity()
    assert settings(log_every=4, checkpoint_every=8, threads=2).identity() == base
    assert settings(lr=1e-2).identity() != base and settings(seed=6).identity() != base


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    st = settings(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    factors = [lr_factor(s, st) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert factors[-1] == pytest.approx(0.1, abs=1e-3)
    no_warmup = settings(steps=10, warmup_steps=0, min_lr_ratio=0.0)
    assert lr_factor(0, no_warmup) == pytest.approx(1.0)


def test_the_curve_records_the_lr_each_step_used(tmp_path):
    st = settings(steps=6, log_every=2, checkpoint_every=2)
    out = train_model("m", toy_config(attention="full"), TASK, st, tmp_path / "m.pt")
    # the lr of the last step of each interval: step s (1-based) used lr_factor(s - 1)
    assert [c.lr for c in out.curve] == pytest.approx([st.lr * lr_factor(s - 1, st) for s in (2, 4, 6)])


def test_step_summary_drops_the_warm_up_interval():
    assert step_ms_summary((100.0, 2.0, 4.0, 6.0))["step_ms_median"] == 4.0
    assert step_ms_summary((100.0,))["step_ms_median"] == 100.0
    assert step_ms_summary(())["step_ms_median"] is None


def test_a_batch_counts_the_positions_that_count():
    x = torch.zeros(2, 3, dtype=torch.long)
    assert Batch(x, x).counted() == 6
    assert Batch(x, x, torch.tensor([[True, False, False], [True, True, False]])).counted() == 3
