"""The duplication task on the common trainer: its batches are `0 w 0 w` from the seeded stream, a
resume after a crash equals uninterrupted training (the stream's generator saved with the LSH
rotation streams), and the tiny copy task is learned well above chance. The trainer's own tests
(schedule, identity checks, validation) live in tests/training."""
import pytest
import torch

from bench.duplication.data import DuplicationTask, make_batch, make_generator
from bench.duplication.evaluate import EvalSettings, evaluate_checkpoint
from bench.duplication.task import DuplicationTraining
from bench.training.checkpoint import load_checkpoint
from bench.training.loop import train_model
from bench.training.settings import TrainSettings
from reformer_impl import ReformerConfig
from tests.training.toy import Crash, crash_at, settings

TASK = DuplicationTask(half_len=8, n_symbols=6)
TRAINING = DuplicationTraining(TASK, EvalSettings(seed=1, batches=1, batch_size=4))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(**changes) -> ReformerConfig:
    base = dict(d_model=32, d_ff=32, n_heads=2, n_layers=1, vocab_size=TASK.vocab_size, max_seq_len=TASK.seq_len,
                attention="lsh", n_hashes=2, chunk_len=4, causal=True, shared_qk=True, reversible=False,
                pos_emb="absolute")
    return ReformerConfig(**{**base, **changes})


def test_the_stream_draws_the_tasks_batches_and_resumes_from_its_state():
    stream = TRAINING.stream(5)
    gen = make_generator(5)
    for _ in range(2):
        ours, theirs = stream.next_batch(4), make_batch(TASK, 4, gen)
        assert torch.equal(ours.inputs, theirs.inputs) and torch.equal(ours.mask, theirs.mask)
    assert ours.counted() == 4 * TASK.w_len  # only the second copy of w counts
    state = stream.state()
    after = stream.next_batch(4)
    again = TRAINING.stream(0)
    again.load_state(state)
    assert torch.equal(again.next_batch(4).inputs, after.inputs)


def test_resume_after_crash_equals_uninterrupted_training(tmp_path):
    cfg, st = tiny_config(), settings()
    straight = train_model("m", cfg, TRAINING, st, tmp_path / "straight.pt")
    with pytest.raises(Crash):  # dies between checkpoints (at 6; the last one was at 4), like kill -9
        train_model("m", cfg, TRAINING, st, tmp_path / "resumed.pt", on_step=crash_at(6))
    assert load_checkpoint(tmp_path / "resumed.pt")["step"] == 4
    resumed = train_model("m", cfg, TRAINING, st, tmp_path / "resumed.pt")
    assert resumed.resumed_from == 4 and resumed.finished and resumed.step == 12
    a = load_checkpoint(tmp_path / "straight.pt")
    b = load_checkpoint(tmp_path / "resumed.pt")
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert [(c.step, c.loss, c.accuracy) for c in straight.curve] == [(c.step, c.loss, c.accuracy) for c in resumed.curve]
    assert a["optimizer"]["state"][0]["step"] == b["optimizer"]["state"][0]["step"]


def test_a_checkpoint_of_another_duplication_task_is_refused(tmp_path):
    from bench.training.checkpoint import CheckpointMismatch

    cfg, st = tiny_config(attention="full"), settings(steps=4, checkpoint_every=2)
    train_model("m", cfg, TRAINING, st, tmp_path / "m.pt")
    other = DuplicationTraining(DuplicationTask(half_len=8, n_symbols=5), TRAINING.eval)  # fits the same model
    with pytest.raises(CheckpointMismatch, match="task"):
        train_model("m", cfg, other, st, tmp_path / "m.pt")


def test_tiny_full_attention_model_learns_to_copy(tmp_path):
    task = DuplicationTask(half_len=10, n_symbols=6)
    cfg = ReformerConfig(d_model=64, d_ff=64, n_heads=4, n_layers=1, vocab_size=task.vocab_size,
                         max_seq_len=task.seq_len, attention="full", causal=True, shared_qk=True, reversible=False,
                         pos_emb="absolute")
    st = TrainSettings(steps=200, batch_size=32, lr=3e-3, warmup_steps=20, checkpoint_every=200, log_every=20, seed=0)
    held_out = EvalSettings(seed=1, batches=2, batch_size=32)
    out = train_model("full", cfg, DuplicationTraining(task, held_out), st, tmp_path / "full.pt")
    result = evaluate_checkpoint(tmp_path / "full.pt", cfg, task, held_out)
    assert out.curve[0].accuracy < 0.5  # it starts near chance (1/6) ...
    assert result.accuracy > 0.8  # ... and copies held-out sequences (chance: 1/6)
