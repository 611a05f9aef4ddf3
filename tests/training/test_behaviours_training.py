"""Behaviours of the training code that a slip would break silently: a shorter last log interval
is averaged over its own length, a training record's final figures are its last curve point's,
the batch streams of different (seed, step) pairs never coincide, and a trained model loads and
scores the same whatever the global RNG holds at load time."""
import hashlib

import pytest
import torch

from bench.duplication.data import DuplicationTask
from bench.duplication.evaluate import EvalSettings
from bench.duplication.task import DuplicationTraining
from bench.quality.data import Corpus
from bench.quality.task import TextLM
from bench.training.loop import CurvePoint, TrainOutcome, load_trained, train_model
from bench.training.plan import TrainingPlan, TrainPoint
from bench.training.records import train_record

from .toy import PreviousToken, settings, toy_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_last_shorter_log_interval_is_averaged_over_its_own_steps(tmp_path):
    """7 steps logged every 2: the point at step 7 covers one step. log_every does not change the
    weights, so a run logged every step gives each step's own loss and accuracy to average."""
    cfg, task = toy_config(attention="full"), PreviousToken()
    every_2 = train_model("m", cfg, task, settings(steps=7, log_every=2, checkpoint_every=2), tmp_path / "a.pt")
    every_1 = train_model("m", cfg, task, settings(steps=7, log_every=1, checkpoint_every=2), tmp_path / "b.pt")
    per_step = {c.step: c for c in every_1.curve}
    assert [c.step for c in every_2.curve] == [2, 4, 6, 7]
    assert len({round(c.loss, 6) for c in every_1.curve}) == 7  # every step's loss differs: means are telling
    starts = [1, 3, 5, 7]
    for start, point in zip(starts, every_2.curve):
        steps = range(start, point.step + 1)
        assert point.loss == pytest.approx(sum(per_step[s].loss for s in steps) / len(steps), rel=1e-5)
        assert point.accuracy == pytest.approx(sum(per_step[s].accuracy for s in steps) / len(steps), rel=1e-9)
    assert every_2.curve[-1].loss == pytest.approx(per_step[7].loss, rel=1e-5)  # one step, not half of it


def _outcome(curve: list[tuple[float, float]]) -> TrainOutcome:
    points = tuple(CurvePoint(step=2 * (i + 1), loss=loss, accuracy=acc, lr=1e-3, train_s=0.1 * (i + 1))
                   for i, (loss, acc) in enumerate(curve))
    return TrainOutcome(name="m", step=points[-1].step, finished=True, resumed_from=0, curve=points,
                        train_s=points[-1].train_s, step_ms=(1.0,) * len(points), n_params=10)


def test_a_training_record_takes_its_final_loss_and_accuracy_from_the_last_curve_point():
    """The last point is neither the first, the best nor the worst of its curve, so any other
    choice of point shows."""
    st = settings(steps=8)
    point = TrainPoint(point_id="train-m", name="m", seed=st.seed, cfg=toy_config(), settings=st)
    plan = TrainingPlan(kind="duplication", suite="toy", profile="cpu", task=PreviousToken(), spec={}, trains=(point,))
    curve = [(2.0, 0.30), (1.1, 0.70), (0.8, 0.90), (1.4, 0.60)]  # mean loss 1.325, mean accuracy 0.625
    rec = train_record(plan, "run", point, "cpu", _outcome(curve), "ok", None, 1.0)
    assert (rec["metrics"]["final_loss"], rec["metrics"]["train_accuracy"]) == (1.4, 0.60)
    assert [c["loss"] for c in rec["curve"]] == [loss for loss, _ in curve]


def _random_corpus(n: int = 20_000) -> Corpus:
    data = torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    return Corpus(name="random", data=data, bounds={"train": (0, n - 2000), "valid": (n - 2000, n)},
                  sha256=hashlib.sha256(data.numpy().tobytes()).hexdigest(), python_version="test")


TASKS = {
    "text": lambda: TextLM(corpus=_random_corpus(), seq_len=16, eval_windows=None, eval_batch_size=4, curve_windows=2),
    "duplication": lambda: DuplicationTraining(task=DuplicationTask(half_len=8, n_symbols=5),
                                               eval=EvalSettings(seed=1, batches=1, batch_size=4)),
}


@pytest.mark.parametrize("kind", list(TASKS))
def test_every_seed_and_step_draws_its_own_training_batch(kind):
    """Seeds 0-3, steps 0-5: 24 batches, all different (seed 0 step 1 is not seed 1 step 0, nor is
    one seed's stream another's shifted by some steps)."""
    task = TASKS[kind]()
    batches = {}
    for seed in range(4):
        stream = task.stream(seed)
        for step in range(6):
            batch = stream.next_batch(4)
            batches[(seed, step)] = (batch.inputs.numpy().tobytes(), batch.targets.numpy().tobytes())
    same = [(a, b) for a in batches for b in batches if a < b and batches[a] == batches[b]]
    assert not same, f"{kind}: (seed, step) pairs drew the same batch: {same[:4]}"
    again = task.stream(2)  # and a stream is reproducible from its seed
    assert [again.next_batch(4).inputs.numpy().tobytes() for _ in range(6)] == [batches[(2, s)][0] for s in range(6)]


def test_a_checkpoint_scores_the_same_bpb_whatever_the_global_rng_at_load_time(tmp_path):
    """An LSH layer built without hash_seed draws its seed from the global RNG; dropout draws from it
    too. Loading and evaluating one checkpoint with the global RNG in two other states (another
    process history) gives the same bits per byte: as trained, with more rounds, and a model
    trained with full attention evaluated with LSH."""
    task = TASKS["text"]()
    device = torch.device("cpu")
    lsh = toy_config(vocab_size=256, dropout=0.1)  # 16 tokens in chunks of 4: 8 buckets, hashing matters
    full = lsh.replace(attention="full")
    for name, cfg in (("lsh", lsh), ("full", full)):
        train_model(name, cfg, task, settings(steps=4, checkpoint_every=2), tmp_path / f"{name}.pt")
    explicit = [task.evaluate(load_trained(tmp_path / "lsh.pt", lsh.replace(hash_seed=s)), device)["bpb"] for s in (1, 2)]
    assert explicit[0] != explicit[1]  # the hash seed shows in the score
    for name, cfg in (("lsh", lsh), ("lsh", lsh.replace(n_hashes=4)), ("full", lsh)):
        scores = []
        for history in (1, 2):
            torch.manual_seed(history)
            torch.rand(17 * history)
            scores.append(task.evaluate(load_trained(tmp_path / f"{name}.pt", cfg), device)["bpb"])
        assert scores[0] == scores[1], (name, cfg.attention, cfg.n_hashes)
