"""Training: resume after a crash equals uninterrupted training; finished models are not retrained;
a checkpoint of another configuration is refused; the tiny copy task is learned well above chance."""
import pytest
import torch

from bench.duplication.data import DuplicationTask
from bench.duplication.train import (
    CheckpointMismatch, TrainSettings, load_checkpoint, lr_factor, step_ms_summary, train_model,
)
from reformer_impl import ReformerConfig

TASK = DuplicationTask(half_len=8, n_symbols=6)


def tiny_config(**changes) -> ReformerConfig:
    base = dict(d_model=32, d_ff=32, n_heads=2, n_layers=1, vocab_size=TASK.vocab_size, max_seq_len=TASK.seq_len,
                attention="lsh", n_hashes=2, chunk_len=4, causal=True, shared_qk=True, reversible=False,
                pos_emb="absolute")
    return ReformerConfig(**{**base, **changes})


def settings(**changes) -> TrainSettings:
    base = dict(steps=12, batch_size=4, lr=3e-3, warmup_steps=2, checkpoint_every=4, log_every=2, seed=5)
    return TrainSettings(**{**base, **changes})


class Crash(Exception):
    pass


def crash_at(step_to_die: int):
    def on_step(step: int) -> None:
        if step == step_to_die:
            raise Crash(step)
    return on_step


def test_resume_after_crash_equals_uninterrupted_training(tmp_path):
    cfg, st = tiny_config(), settings()
    straight = train_model("m", cfg, TASK, st, tmp_path / "straight.pt")
    with pytest.raises(Crash):  # dies between checkpoints (at 6; the last one was at 4), like kill -9
        train_model("m", cfg, TASK, st, tmp_path / "resumed.pt", on_step=crash_at(6))
    assert load_checkpoint(tmp_path / "resumed.pt")["step"] == 4
    resumed = train_model("m", cfg, TASK, st, tmp_path / "resumed.pt")
    assert resumed.resumed_from == 4 and resumed.finished and resumed.step == 12
    a = load_checkpoint(tmp_path / "straight.pt")
    b = load_checkpoint(tmp_path / "resumed.pt")
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert [(c.step, c.loss, c.accuracy) for c in straight.curve] == [(c.step, c.loss, c.accuracy) for c in resumed.curve]
    assert a["optimizer"]["state"][0]["step"] == b["optimizer"]["state"][0]["step"]


def test_resume_needs_the_saved_hash_stream(tmp_path):
    """The check above can fail: restarting the LSH rotation stream at resume changes the weights."""
    cfg, st = tiny_config(), settings()
    train_model("m", cfg, TASK, st, tmp_path / "straight.pt")
    with pytest.raises(Crash):
        train_model("m", cfg, TASK, st, tmp_path / "resumed.pt", on_step=crash_at(6))
    payload = load_checkpoint(tmp_path / "resumed.pt")
    for layer in payload["rng"]["hash"].values():
        layer["generators"].clear()  # as if the rotation stream were not saved
    torch.save(payload, tmp_path / "resumed.pt")
    train_model("m", cfg, TASK, st, tmp_path / "resumed.pt")
    a, b = (load_checkpoint(tmp_path / f)["model"] for f in ("straight.pt", "resumed.pt"))
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_finished_model_is_not_retrained(tmp_path):
    cfg, st = tiny_config(attention="full"), settings(steps=4, checkpoint_every=2)
    first = train_model("m", cfg, TASK, st, tmp_path / "m.pt")
    blob = (tmp_path / "m.pt").read_bytes()
    again = train_model("m", cfg, TASK, st, tmp_path / "m.pt", on_step=crash_at(1))  # would raise if it trained
    assert again.finished and again.resumed_from == 4 and again.curve == first.curve
    assert (tmp_path / "m.pt").read_bytes() == blob


def test_checkpoint_of_another_configuration_is_refused(tmp_path):
    cfg, st = tiny_config(attention="full"), settings(steps=4, checkpoint_every=2)
    train_model("m", cfg, TASK, st, tmp_path / "m.pt")
    with pytest.raises(CheckpointMismatch, match="train"):
        train_model("m", cfg, TASK, settings(steps=4, checkpoint_every=2, lr=1e-2), tmp_path / "m.pt")
    with pytest.raises(CheckpointMismatch, match="config"):
        train_model("m", cfg.replace(d_ff=64), TASK, st, tmp_path / "m.pt")


def test_settings_refuse_inconsistent_values():
    with pytest.raises(ValueError, match="checkpoint_every"):
        settings(checkpoint_every=5, log_every=2)
    with pytest.raises(ValueError, match="warmup_steps"):
        settings(steps=4, warmup_steps=4)
    with pytest.raises(ValueError, match="stepz"):
        TrainSettings(**settings().model_dump(), stepz=3)


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    st = settings(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    factors = [lr_factor(s, st) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert factors[-1] == pytest.approx(0.1, abs=1e-3)


def test_step_summary_drops_the_warm_up_interval():
    assert step_ms_summary((100.0, 2.0, 4.0, 6.0))["step_ms_median"] == 4.0
    assert step_ms_summary(())["step_ms_median"] is None


def test_tiny_full_attention_model_learns_to_copy(tmp_path):
    torch.set_num_threads(1)
    task = DuplicationTask(half_len=10, n_symbols=6)
    cfg = ReformerConfig(d_model=64, d_ff=64, n_heads=4, n_layers=1, vocab_size=task.vocab_size,
                         max_seq_len=task.seq_len, attention="full", causal=True, shared_qk=True, reversible=False,
                         pos_emb="absolute")
    st = TrainSettings(steps=200, batch_size=32, lr=3e-3, warmup_steps=20, checkpoint_every=200, log_every=20, seed=0)
    out = train_model("full", cfg, task, st, tmp_path / "full.pt")
    from bench.duplication.evaluate import EvalSettings, evaluate_checkpoint

    result = evaluate_checkpoint(tmp_path / "full.pt", cfg, task, EvalSettings(seed=1, batches=2, batch_size=32))
    assert out.curve[0].accuracy < 0.5  # it starts near chance (1/6) ...
    assert result.accuracy > 0.8  # ... and copies held-out sequences (chance: 1/6)
