"""Evaluation under another attention kind and hash count than training, from a checkpoint."""
import pytest
import torch

from bench.duplication.data import DuplicationTask, make_batch, make_generator
from bench.duplication.evaluate import AttentionSetting, EvalSettings, evaluate_checkpoint
from bench.duplication.task import DuplicationTraining
from bench.training.loop import load_trained, train_model
from bench.training.settings import TrainSettings
from reformer_impl import ReformerConfig

TASK = DuplicationTask(half_len=8, n_symbols=6)
EVAL = EvalSettings(seed=11, batches=2, batch_size=8)
FULL = AttentionSetting(name="full", attention="full")


def lsh(n: int) -> AttentionSetting:
    return AttentionSetting(name=f"lsh-{n}", attention="lsh", n_hashes=n)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An LSH-2 model trained a few steps: (checkpoint, its config)."""
    cfg = ReformerConfig(d_model=32, d_ff=32, n_heads=2, n_layers=1, vocab_size=TASK.vocab_size,
                         max_seq_len=TASK.seq_len, attention="lsh", n_hashes=2, chunk_len=4, causal=True,
                         shared_qk=True, reversible=False, pos_emb="absolute")
    path = tmp_path_factory.mktemp("dup") / "lsh-2.pt"
    st = TrainSettings(steps=30, batch_size=8, lr=3e-3, warmup_steps=3, checkpoint_every=30, log_every=10, seed=0)
    train_model("lsh-2", cfg, DuplicationTraining(TASK, EVAL), st, path)
    return path, cfg


@pytest.mark.parametrize("setting", [FULL, lsh(1), lsh(8)], ids=lambda s: s.name)
def test_other_attention_and_hash_counts_load_and_evaluate(trained, setting):
    path, cfg = trained
    eval_cfg = setting.apply(cfg)
    assert eval_cfg.attention == setting.attention and eval_cfg.d_model == cfg.d_model
    first = evaluate_checkpoint(path, eval_cfg, TASK, EVAL)
    again = evaluate_checkpoint(path, eval_cfg, TASK, EVAL)
    assert first.counted == EVAL.batches * EVAL.batch_size * TASK.w_len
    assert 0.0 <= first.accuracy <= 1.0 and first.loss > 0
    assert (first.accuracy, first.loss) == (again.accuracy, again.loss)  # seeded data and hashing


def _logits(path, cfg):
    torch.manual_seed(0)
    model = load_trained(path, cfg)
    with torch.no_grad():
        return model(make_batch(TASK, 8, make_generator(EVAL.seed)).inputs)


def test_the_same_weights_give_full_attention_when_lsh_has_one_chunk(trained):
    """LSH-1 with a single chunk attends to every earlier position: it must equal full attention,
    so a state dict carries the same function across kinds."""
    path, cfg = trained
    full = _logits(path, FULL.apply(cfg))
    one_chunk = _logits(path, lsh(1).apply(cfg).replace(chunk_len=TASK.seq_len))
    assert torch.allclose(full, one_chunk, atol=1e-5)
    several_chunks = _logits(path, lsh(1).apply(cfg))  # chunk_len 4: each query sees at most 8 keys
    assert (full - several_chunks).abs().max() > 1e-3


def test_settings_refuse_inconsistent_attention():
    with pytest.raises(ValueError, match="n_hashes"):
        AttentionSetting(name="x", attention="lsh")
    with pytest.raises(ValueError, match="n_hashes"):
        AttentionSetting(name="x", attention="full", n_hashes=2)
    with pytest.raises(ValueError, match="name"):
        AttentionSetting(name="a/b", attention="full")


def test_evaluating_one_model_twice_hashes_the_same(trained):
    from bench.duplication.evaluate import evaluate_model

    path, cfg = trained
    torch.manual_seed(0)
    model = load_trained(path, lsh(1).apply(cfg))
    first, again = evaluate_model(model, TASK, EVAL), evaluate_model(model, TASK, EVAL)
    assert (first.correct, first.loss) == (again.correct, again.loss)
