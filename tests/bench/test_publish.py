"""Publishing: what reaches the Sink (config, table rows, charts, Table 2, images), secret scrubbing,
the offline-first mode decision, live logging, and one real offline W&B run."""
from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from bench.publish import LiveLogger, PublishError, RecordingSink, accuracy_matrix, line_series, publish_run, records_frame
from bench.publish.frames import StudyAxes, study_axes
from bench.publish.rundata import find_plots, read_records
from bench.publish.scrub import REDACTED, is_secret_key, scrub, secret_values
from bench.publish.wandb_sink import can_reach, resolve_mode, wandb_table_frame

COMMIT = "0123456789abcdef0123456789abcdef01234567"
ENV = {"device_name": "Test CPU 9000", "torch": "2.13.0", "git_commit": COMMIT, "git_dirty": False}


def _record(point_id, status="ok", suite="memory", params=None, metrics=None, reason=None):
    return {
        "point_id": point_id, "run_id": "cpu-1", "suite": suite, "studies": ["memory", "scaling"],
        "status": status, "reason": reason, "point": {"suite": suite},
        "params": params or {}, "effective": {"padded_len": (params or {}).get("seq_len")},
        "metrics": metrics or {}, "wall_s": 1.5, "finished_at": "2026-01-01T00:00:00+00:00",
    }


def memory_records():
    """full attention at 128/256 and an OOM at 512; lsh (n_hashes=2) at all three lengths."""
    recs = []
    for attention, factor in (("full", 3.0), ("lsh", 1.0)):
        for seq_len in (128, 256, 512):
            oom = attention == "full" and seq_len == 512
            recs.append(_record(
                f"{attention}-{seq_len}",
                status="oom" if oom else "ok",
                reason="CUDA out of memory" if oom else None,
                params={"workload": "attention", "seq_len": seq_len, "batch_size": 1, "attention": attention,
                        "n_hashes": 2 if attention == "lsh" else None},
                metrics={"peak_rss_mib": None if oom else factor * seq_len,
                         "fwd_ms_median": None if oom else seq_len / 64 + factor, "n_repeats": 5},
            ))
    return recs


def write_run(run_dir: Path, records, suite="memory", environment=None, plots=()):
    run_dir.mkdir(parents=True)
    run = {"suite": suite, "profile": "cpu", "run_id": "cpu-1", "device": "cpu", "created_at": "2026-01-01",
           "environment": environment or dict(ENV), "suite_spec": {"name": suite, "studies": [{"name": suite}]}}
    (run_dir / "run.json").write_text(json.dumps(run))
    (run_dir / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    for name in plots:
        from PIL import Image

        (run_dir / "plots").mkdir(exist_ok=True)
        Image.new("RGB", (4, 4), "white").save(run_dir / "plots" / f"{name}.png")
    return run_dir


# ---- scrubbing -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["api_key", "WANDB_API_KEY", "hf_token", "password", "apiKey", "client_secret",
                                  "AWS_SECRET_ACCESS_KEY", "github-token", "db_passwd"])
def test_secret_looking_names(name):
    assert is_secret_key(name)


@pytest.mark.parametrize("name", ["n_tokens", "tokens_per_s", "seq_len", "n_hashes", "author", "key_dim", "monkey"])
def test_ordinary_names_are_not_secret(name):
    assert not is_secret_key(name)


def test_scrub_replaces_keys_values_and_url_credentials():
    secrets = secret_values({"WANDB_API_KEY": "k" * 40, "HOME": "/root", "MY_TOKEN": "short"})
    assert secrets == {"k" * 40}  # HOME is not secret; a 5-char value is too short to mask safely
    data = {
        "api_key": "abc", "nested": [{"password": 3, "seq_len": 4}],
        "note": f"key was {'k' * 40}!", "remote": "https://bob:hunter22@github.com/x.git", "token": None,
    }
    out = scrub(data, secrets)
    assert out == {
        "api_key": REDACTED, "nested": [{"password": REDACTED, "seq_len": 4}],
        "note": f"key was {REDACTED}!", "remote": f"https://{REDACTED}@github.com/x.git", "token": None,
    }
    assert data["api_key"] == "abc"  # the input is left alone


# ---- pure views ------------------------------------------------------------------------------

def test_records_frame_is_one_flat_row_per_record():
    recs = memory_records()
    df = records_frame(recs)
    assert list(df["point_id"]) == [r["point_id"] for r in recs]
    assert {"params.seq_len", "params.attention", "effective.padded_len", "metrics.peak_rss_mib"} <= set(df.columns)
    assert "point" not in df.columns and not any(c.startswith("point.") for c in df.columns)
    assert df.loc[2, "status"] == "oom" and df.loc[2, "reason"] == "CUDA out of memory"
    assert df.loc[0, "studies"] == "memory, scaling"


def test_line_series_one_line_per_varying_config_from_ok_records_only():
    charts = {c.name: c for c in line_series(records_frame(memory_records()))}
    assert set(charts) == {"memory/peak_rss_mib_vs_seq_len", "time/fwd_ms_median_vs_seq_len"}
    mem = charts["memory/peak_rss_mib_vs_seq_len"]
    assert mem.xname == "seq_len"
    assert mem.keys == ("attention=full", "attention=lsh")  # n_hashes only goes null -> 2: no new line
    assert mem.xs == ((128.0, 256.0), (128.0, 256.0, 512.0))  # the OOM point has no y
    assert mem.ys == ((384.0, 768.0), (128.0, 256.0, 512.0))


def test_line_series_per_study_follow_the_suite_plot_hints():
    """On the shared fixture run: one chart per study and metric, x and lines from suite_spec."""
    run_dir = Path(__file__).parent / "fixtures" / "memory_run"
    info = json.loads((run_dir / "run.json").read_text())
    axes = study_axes(info["suite_spec"])
    assert axes["vs_seq_len"] == StudyAxes(x="seq_len", hue=("attention",), y=("peak_alloc_mib", "step_ms_median"),
                                           logx=True, logy=True)
    # no hint: the numeric grid axis, linear scales (our plots use log only along seq_len and batch_size)
    assert axes["vs_layers"] == StudyAxes(x="n_layers", hue=("reversible",), logx=False, logy=False)
    frame = records_frame(read_records(run_dir))
    charts = {c.name: c for c in line_series(frame, axes)}
    seq = charts["memory/vs_seq_len/peak_rss_mib_vs_seq_len"]
    assert seq.keys == ("attention=full", "attention=lsh")
    ok = frame[(frame["status"] == "ok") & frame["studies"].str.contains("vs_seq_len")]
    for key, xs, ys in zip(seq.keys, seq.xs, seq.ys):
        line = ok[ok["params.attention"] == key.split("=")[1]].sort_values("params.seq_len")
        assert xs == tuple(line["params.seq_len"].astype(float)) and ys == tuple(line["metrics.peak_rss_mib"])
    layers = charts["memory/vs_layers/peak_rss_mib_vs_n_layers"]
    assert layers.xname == "n_layers" and layers.keys == ("reversible=False", "reversible=True")
    assert all(len(xs) > 1 for xs in layers.xs)


def test_line_series_needs_two_lengths():
    recs = [r for r in memory_records() if r["params"]["seq_len"] == 128]
    assert line_series(records_frame(recs)) == []


def dup_records(nested=False):
    """Like bench.duplication: one `train` record per model (a curve, no accuracy), then one
    `table2` record per (model, eval setting) with metrics.accuracy; constant train_/eval_ params."""
    recs = []
    for train in ("lsh-1", "lsh-2"):
        recs.append({**_record(f"dup-train-{train}", suite="duplication", metrics={"accuracy": None},
                               params={"train_model": train, "eval_setting": None, "train_seed": 0}),
                     "curve": [{"step": 1, "loss": 2.0}]})
        for ev in ("lsh-1", "lsh-2", "lsh-4"):
            acc = int(train[-1]) / 10 + int(ev[-1]) / 100
            params = ({"train": {"n_hashes": int(train[-1])}, "eval": {"n_hashes": int(ev[-1])}} if nested
                      else {"train_model": train, "eval_setting": ev, "train_seed": 0, "eval_batches": 4})
            recs.append(_record(f"dup-eval-{train}-as-{ev}", suite="duplication", params=params,
                                metrics={"accuracy": acc}))
    recs.append(_record("broken", status="error", suite="duplication",
                        params={"train_model": "lsh-4", "eval_setting": "lsh-4"}, metrics={"accuracy": None}))
    return recs


@pytest.mark.parametrize("nested", [False, True])
def test_accuracy_matrix_rows_train_columns_eval(nested):
    m = accuracy_matrix(records_frame(dup_records(nested)))
    names = ["1", "2", "4"] if nested else ["lsh-1", "lsh-2", "lsh-4"]
    assert list(m.index) == names[:2] and list(m.columns) == names
    assert m.loc[names[1], names[2]] == pytest.approx(0.24) and m.loc[names[0], names[1]] == pytest.approx(0.12)


def test_accuracy_matrix_absent_without_accuracy():
    assert accuracy_matrix(records_frame(memory_records())) is None


def test_wandb_table_frame_makes_columns_single_kind():
    df = pd.DataFrame({"a": [1, None], "b": ["x", 2], "c": [float("nan"), 2.5], "d": [True, None]})
    out = wandb_table_frame(df)
    assert out["a"].tolist() == [1, None]
    assert out["b"].tolist() == ["x", "2"]
    assert out["c"].tolist() == [None, 2.5]
    assert out["d"].tolist() == [True, None]


# ---- publish_run through a RecordingSink ------------------------------------------------------

def test_publish_run_hands_the_sink_config_table_charts_and_plots(tmp_path):
    run_dir = write_run(tmp_path / "memory" / "cpu-1", memory_records(), plots=("memory_vs_seq_len", "speed"))
    sink = RecordingSink()
    publish_run(run_dir, sink=sink, secrets=frozenset())
    [init] = sink.inits
    assert (init.name, init.group, init.job_type) == ("memory-cpu-1", "memory", "bench")
    assert init.tags == ("Test CPU 9000", COMMIT[:7], "cpu")
    assert init.config["suite"] == "memory" and init.config["profile"] == "cpu" and init.config["run_id"] == "cpu-1"
    assert init.config["environment"]["torch"] == "2.13.0" and init.config["environment"]["git_commit"] == COMMIT
    assert init.config["suite_spec"]["studies"] == [{"name": "memory"}]
    table = sink.tables["records"]
    assert sorted(table["point_id"]) == sorted(r["point_id"] for r in memory_records())
    assert table.set_index("point_id").loc["lsh-512", "metrics.peak_rss_mib"] == 512.0
    assert "duplication/accuracy_matrix" not in sink.tables
    assert sink.images == {"plots/memory_vs_seq_len": run_dir / "plots" / "memory_vs_seq_len.png",
                           "plots/speed": run_dir / "plots" / "speed.png"}
    assert {s.name for s in sink.series} == {"memory/peak_rss_mib_vs_seq_len", "time/fwd_ms_median_vs_seq_len"}
    assert sink.metrics[-1][1] == {"summary/n_records": 6, "summary/n_ok": 5, "summary/n_oom": 1}
    assert sink.finished == 1


def test_publish_run_logs_table2_for_duplication(tmp_path):
    run_dir = write_run(tmp_path / "duplication" / "cpu-1", dup_records(), suite="duplication")
    sink = RecordingSink()
    publish_run(run_dir, sink=sink, secrets=frozenset())
    matrix = sink.tables["duplication/accuracy_matrix"]
    assert list(matrix.columns) == ["train", "lsh-1", "lsh-2", "lsh-4"]
    assert matrix["train"].tolist() == ["lsh-1", "lsh-2"]
    assert matrix.loc[matrix["train"] == "lsh-1", "lsh-4"].item() == pytest.approx(0.14)
    table = sink.tables["records"]
    assert "curve" not in table.columns and len(table) == len(dup_records())


def test_publish_run_scrubs_secrets_from_env_netrc_and_keys(tmp_path, monkeypatch, planted_secrets):
    env_key, netrc_key = planted_secrets
    environment = {**ENV, "wandb_api_key": "anything", "hf_token": "hf_abc", "cmd": f"run --key {env_key}"}
    recs = memory_records()
    recs[2]["reason"] = f"crashed; netrc said {netrc_key}"
    recs[0]["params"]["auth_token"] = "tok-123"
    run_dir = write_run(tmp_path / "memory" / "cpu-1", recs, environment=environment)
    sink = RecordingSink()
    publish_run(run_dir, sink=sink)  # secrets=None: read from this process's environment and netrc
    sent = json.dumps(sink.inits[0].config) + sink.tables["records"].to_json()
    for secret in (env_key, netrc_key, "anything", "hf_abc", "tok-123"):
        assert secret not in sent
    env_sent = sink.inits[0].config["environment"]
    assert env_sent["wandb_api_key"] == REDACTED and env_sent["cmd"] == f"run --key {REDACTED}"
    assert sink.tables["records"].set_index("point_id").loc["full-512", "reason"] == f"crashed; netrc said {REDACTED}"


def test_publish_run_names_the_missing_file(tmp_path):
    with pytest.raises(PublishError, match="run.json"):
        publish_run(tmp_path, sink=RecordingSink(), secrets=frozenset())


def test_read_records_skips_a_torn_last_line_only(tmp_path):
    run_dir = write_run(tmp_path / "r", memory_records()[:2])
    with open(run_dir / "records.jsonl", "a") as f:
        f.write('{"point_id": "half')
    with pytest.warns(UserWarning, match="torn last line"):
        assert [r["point_id"] for r in read_records(run_dir)] == ["full-128", "full-256"]
    (run_dir / "records.jsonl").write_text('{"broken\n' + json.dumps(memory_records()[0]) + "\n")
    with pytest.raises(ValueError, match="records.jsonl:1"):
        read_records(run_dir)


def test_find_plots_is_empty_without_a_report(tmp_path):
    assert find_plots(tmp_path) == {}


def test_find_plots_takes_plots_dir_and_top_level_pngs(tmp_path):
    run_dir = write_run(tmp_path / "duplication" / "cpu-1", [], suite="duplication", plots=("curves",))
    (run_dir / "table2_heatmap.png").write_bytes(b"png")
    (run_dir / "notes.txt").write_text("not a plot")
    assert find_plots(run_dir) == {"plots/curves": run_dir / "plots" / "curves.png",
                                   "plots/table2_heatmap": run_dir / "table2_heatmap.png"}


# ---- offline first ---------------------------------------------------------------------------

def _no_probe(host):
    raise AssertionError(f"probed {host} although the answer was already known")


def test_mode_is_offline_without_a_key_and_never_probes(tmp_path):
    env = {"NETRC": str(tmp_path / "none")}
    assert resolve_mode(None, env, probe=_no_probe).mode == "offline"
    decision = resolve_mode(True, env, probe=_no_probe)  # even when asked: W&B would prompt for a login
    assert decision.mode == "offline" and "WANDB_API_KEY" in decision.reason


def test_mode_follows_wandb_mode_flag_key_and_probe(tmp_path):
    keyed = {"WANDB_API_KEY": "x" * 40, "NETRC": str(tmp_path / "none")}
    assert resolve_mode(None, {**keyed, "WANDB_MODE": "offline"}, probe=_no_probe).mode == "offline"
    assert resolve_mode(None, {**keyed, "WANDB_MODE": "disabled"}, probe=_no_probe).mode == "disabled"
    assert resolve_mode(False, keyed, probe=_no_probe).mode == "offline"
    assert resolve_mode(True, keyed, probe=_no_probe).mode == "online"
    assert resolve_mode(None, keyed, probe=lambda host: False).mode == "offline"
    probed = []
    assert resolve_mode(None, {**keyed, "WANDB_BASE_URL": "https://wandb.example.org"},
                        probe=lambda host: probed.append(host) or True).mode == "online"
    assert probed == ["wandb.example.org"]


def test_mode_finds_the_key_in_netrc(tmp_path):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai login user password " + "n" * 40 + "\n")
    netrc.chmod(0o600)
    assert resolve_mode(True, {"NETRC": str(netrc)}, probe=_no_probe).mode == "online"


def test_probe_gives_up_quickly():
    with socket.socket() as s:  # a port that was just free: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert can_reach("127.0.0.1", port, timeout_s=0.5) is False

    released = threading.Event()

    def stuck(address, timeout):  # a name lookup that never answers (getaddrinfo has no timeout)
        released.wait(30)
        raise socket.timeout("released")  # as a lookup that finally fails: no stray thread error later

    t0 = time.monotonic()
    try:
        assert can_reach("wandb.example.org", 443, timeout_s=0.2, connect=stuck) is False
        assert time.monotonic() - t0 < 2.0
    finally:
        released.set()


def test_probe_sees_a_listening_server():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert can_reach("127.0.0.1", s.getsockname()[1], timeout_s=2.0) is True


# ---- live logging ----------------------------------------------------------------------------

def test_live_logger_one_step_per_record_then_the_summary(tmp_path):
    recs = memory_records()
    run_dir = write_run(tmp_path / "memory" / "cpu-1", [], plots=("p",))
    sink = RecordingSink()
    live = LiveLogger(run_dir, sink=sink, secrets=frozenset())
    for r in recs:
        live.log_record(r)
    assert len(sink.inits) == 1 and sink.inits[0].name == "memory-cpu-1" and not sink.tables
    steps = sink.metrics
    assert [s for s, _ in steps] == list(range(len(recs)))
    assert [m["point_id"] for _, m in steps] == [r["point_id"] for r in recs]
    assert steps[2][1]["status"] == "oom" and "metrics/peak_rss_mib" not in steps[2][1]
    assert steps[3][1]["params/seq_len"] == 128 and steps[3][1]["metrics/peak_rss_mib"] == 128.0
    live.finish()
    live.finish()
    assert sink.finished == 1
    assert len(sink.tables["records"]) == len(recs) and set(sink.images) == {"plots/p"}


def test_live_logger_without_run_json_names_the_run_from_records(tmp_path):
    sink = RecordingSink()
    live = LiveLogger(tmp_path / "memory" / "gpu-9", sink=sink, secrets=frozenset())
    live.log_record(memory_records()[0])
    assert (sink.inits[0].name, sink.inits[0].group) == ("memory-cpu-1", "memory")


def test_live_logger_failure_never_stops_the_sweep(tmp_path):
    class Broken(RecordingSink):
        def log_metrics(self, metrics, step=None):
            raise ConnectionError("wandb went away")

    warnings_seen = []
    live = LiveLogger(tmp_path, sink=Broken(), secrets=frozenset(), warn=warnings_seen.append)
    for r in memory_records():
        live.log_record(r)
    live.finish()
    assert len(warnings_seen) == 1 and "ConnectionError: wandb went away" in warnings_seen[0]


# ---- one real offline W&B run ------------------------------------------------------------------

def test_real_offline_wandb_run_lands_under_the_run_dir(tmp_path, monkeypatch, capsys):
    pytest.importorskip("wandb")
    secret = "real-smoke-secret-0123456789abcdef0123"
    for var, sub in (("WANDB_CONFIG_DIR", "cfg"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", secret)
    recs = memory_records()
    recs[0]["reason"] = f"saw {secret}"
    run_dir = write_run(tmp_path / "memory" / "cpu-1", recs, plots=("memory_vs_seq_len",))
    where = publish_run(run_dir)
    offline = Path(where)
    assert offline.parent == run_dir / "wandb" and offline.name.startswith("offline-run-")
    assert list(offline.glob("*.wandb"))
    [table] = (offline / "files" / "media" / "table").glob("records_*.table.json")
    assert len(json.loads(table.read_text())["data"]) == len(recs)
    assert list((offline / "files" / "media" / "images").glob("plots/memory_vs_seq_len*.png"))
    assert f"wandb sync {offline}" in capsys.readouterr().out
    for f in (run_dir / "wandb").rglob("*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f
