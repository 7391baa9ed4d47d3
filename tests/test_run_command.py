"""The README's run command, as a user runs it, and the flow over the real data files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from dataflows.recovery import prepare
from tests.conftest import kill_after_a_snapshot, run_records, shared_file

ROOT = Path(__file__).resolve().parents[1]


def _run_command(env: dict[str, str], timeout: int) -> subprocess.CompletedProcess:
    """The README's run command, as a user runs it, with `env` added to the environment."""
    return subprocess.run(
        [sys.executable, "-m", "bytewax.run", "dataflows.ensemble"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _uninterrupted(env: dict[str, str], tmp_path: Path) -> tuple[Path, int]:
    """The reference run's output directory, and a third of its signals file's size (a
    point to stop the interrupted run at)."""
    ref = tmp_path / "uninterrupted"
    done = _run_command({**env, "ENSEMBLE_OUT": str(ref)}, timeout=300)
    assert done.returncode == 0, done.stderr
    return ref, (ref / "signals.jsonl").stat().st_size // 3


def _interrupt_once_past(proc: subprocess.Popen, signals: Path, size: int) -> tuple[str, str]:
    """Ctrl-C once `signals` has grown past `size` bytes; the run must stop cleanly, say
    so and say why in its summary. Its (stdout, stderr)."""
    deadline = time.monotonic() + 180
    while not (signals.exists() and signals.stat().st_size > size):
        assert proc.poll() is None, "the run ended before it could be stopped; make it longer"
        assert time.monotonic() < deadline, "the run never got far enough"
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "panicked" not in stderr and "Traceback" not in stderr, stderr
    assert "ensemble: SIGINT received: stopping" in stderr
    assert "stopped by a signal before the end of the input" in stdout
    return stdout, stderr


def test_python_m_bytewax_run_prints_the_summary_and_writes_outputs(tmp_path):
    env = {
        "ENSEMBLE_OUT": str(tmp_path / "out"),
        "ENSEMBLE_DAYS": "2",
        "ENSEMBLE_OVERRIDES": json.dumps({"warmup_bars": 150}),
    }
    done = _run_command(env, timeout=300)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for phrase in (
        "Ensemble run summary",
        "BTC-PERP: 576 5m bars",
        "decisions",
        "fills",
        "rejections by reason",
        "final equity",
        "max drawdown",
        "dead letters: 0",
    ):
        assert phrase in out, f"{phrase!r} missing from:\n{out}"
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert set(summary["symbols"]) == {"BTC-PERP", "ETH-PERP"}
    assert (tmp_path / "out" / "orders.jsonl").stat().st_size > 0


def test_a_new_run_into_the_same_directory_leaves_no_file_of_the_earlier_run(tmp_path):
    """`make run` writes to out/ every time: a clean run after one with a dead letter must
    not leave that dead letter in out/dead_letters.jsonl beside a summary saying 0."""
    out = tmp_path / "out"
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "timestamp,open,high,low,close,volume\n"
        "2024-01-01 00:01:00,100,101,99,100,5\n"
        "2024-01-01 00:02:00,abc,101,99,100,5\n"
    )
    first = _run_command({"ENSEMBLE_OUT": str(out), "ENSEMBLE_INPUT": f"candles:{bad}"}, 120)
    assert first.returncode == 0, first.stderr
    assert "dead letters: 1" in first.stdout
    assert (out / "dead_letters.jsonl").stat().st_size > 0

    clean = _run_command({"ENSEMBLE_OUT": str(out), "ENSEMBLE_DAYS": "1"}, 300)
    assert clean.returncode == 0, clean.stderr
    assert "dead letters: 0" in clean.stdout
    assert not (out / "dead_letters.jsonl").exists()
    assert (out / "bars.jsonl").stat().st_size > 0 and (out / "summary.json").exists()


def test_a_bad_setting_stops_the_run_command_with_a_clear_message(tmp_path):
    done = _run_command({"ENSEMBLE_OUT": str(tmp_path), "ENSEMBLE_SEED": "-3"}, timeout=120)
    assert done.returncode != 0
    assert (
        "ensemble: cannot start: ENSEMBLE_SEED='-3' is invalid: must be an integer >= 0"
        in done.stderr
    )


@pytest.mark.realdata
def test_the_flow_trades_on_real_perp_candles_with_real_funding(tmp_path):
    from dataflows.settings import Settings

    candles = shared_file("binance_usdm_BTC_USDT_2025-09-19_2025-10-27_5m.json")
    funding = shared_file("binance_usdm_BTC_USDT_funding_8h.json")
    # Candles carry no trader addresses, so only the model arms can trade; the calibrated
    # model reaches conf 0.60 on 10 of 11,123 bars (models/artifacts/default/card.md), so
    # this plumbing test lowers CONF_MIN to 0.55 to get enough fills to pay funding on, and
    # lifts the loss-streak kill-switch: with 3-bar holds, a halt after the first losing
    # streak would leave no position open at any 8 h settlement.
    settings = Settings.from_env(
        {
            "ENSEMBLE_INPUT": f"candles:{candles},funding:{funding}",
            "ENSEMBLE_OUT": str(tmp_path),
            "STRATEGY_ID": "ensemble_1_0",
            "ENSEMBLE_OVERRIDES": json.dumps(
                {"thresholds.CONF_MIN": 0.55, "risk.max_consecutive_losses": 1000}
            ),
        }
    )
    out = run_records(settings)
    bars = Counter(b["timeframe"] for b in out["bars"])
    assert bars["5m"] == 11_123 and bars["1h"] == 11_123 // 12 + 1
    assert not out["dead_letters"]
    assert len(out["signals"]) == 11_123
    assert len(out["executions"]) > 10
    assert any(h["funding_usd"] != 0 for h in out["health"]), "funding was never paid"


def test_sigkill_mid_run_and_a_restart_on_the_same_recovery_dir_write_the_same_files(tmp_path):
    """The README's recovery recipe: kill -9 halfway, start again, lose and double nothing."""
    env = {
        **os.environ,
        "ENSEMBLE_DAYS": "8",
        "ENSEMBLE_OVERRIDES": json.dumps({"warmup_bars": 150}),
    }
    command = [sys.executable, "-m", "bytewax.run", "dataflows.ensemble"]
    ref = tmp_path / "uninterrupted"
    done = _run_command({"ENSEMBLE_OUT": str(ref), **env}, timeout=300)
    assert done.returncode == 0, done.stderr
    third = (ref / "signals.jsonl").stat().st_size // 3

    rec, out = tmp_path / "recovery", tmp_path / "crashed"
    assert prepare(rec, 1).startswith("created")
    recoverable = [*command, "-r", str(rec), "-s", "1", "-b", "0"]
    env["ENSEMBLE_OUT"] = str(out)
    proc = subprocess.Popen(recoverable, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    signals = out / "signals.jsonl"
    kill_after_a_snapshot(proc, rec, lambda: signals.exists() and signals.stat().st_size > third)
    assert not (out / "summary.json").exists()

    again = subprocess.run(recoverable, cwd=ROOT, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "Ensemble run summary" in again.stdout
    for path in sorted(ref.iterdir()):
        if path.name != "repro.jsonl":
            assert (out / path.name).read_bytes() == path.read_bytes(), path.name
    repro = [json.loads(line) for line in (out / "repro.jsonl").read_text().splitlines()]
    resumed = [r for r in repro if r["event"] == "resume"]
    assert sorted(r["symbol"] for r in resumed) == ["BTC-PERP", "ETH-PERP"]
    assert [r for r in repro if r["event"] != "resume"] == [
        json.loads(line) for line in (ref / "repro.jsonl").read_text().splitlines()
    ]


def test_a_generated_market_shorter_than_the_warm_up_warns_at_start_and_in_the_summary(tmp_path):
    done = _run_command({"ENSEMBLE_OUT": str(tmp_path), "ENSEMBLE_DAYS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr
    start, warning = done.stderr.splitlines()[:2]
    assert start.startswith("ensemble: start: input generated market (seed 7, 1 days)")
    assert "warm-up 1000 5m bars (3.5 days) per symbol" in start
    assert warning.startswith("ensemble: warning: the generated market has 288 5m bars")
    assert "no decision will be made" in warning
    assert "BTC-PERP: 288 5m bars (0 missing), 0 decisions" in done.stdout
    assert (
        "warning: BTC-PERP made no decision: 288 5m bars (1.0 days) is not past the warm-up "
        "of 1000 (3.5 days)"
    ) in done.stdout


def test_sigint_mid_run_stops_cleanly_with_the_summary_and_a_restart_continues_exactly(
    tmp_path,
):
    """Ctrl-C ends the input, keeps the open bars and pending intents, prints the summary;
    the restart on the same recovery directory writes what an uninterrupted run writes."""
    env = {
        **os.environ,
        "ENSEMBLE_DAYS": "6",
        "ENSEMBLE_OVERRIDES": json.dumps({"warmup_bars": 150}),
    }
    ref, third = _uninterrupted(env, tmp_path)

    rec, out = tmp_path / "recovery", tmp_path / "stopped"
    prepare(rec, 1)
    command = [sys.executable, "-m", "bytewax.run", "dataflows.ensemble"]
    recoverable = [*command, "-r", str(rec), "-s", "1", "-b", "0"]
    env["ENSEMBLE_OUT"] = str(out)
    proc = subprocess.Popen(
        recoverable, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    stdout, stderr = _interrupt_once_past(proc, out / "signals.jsonl", third)
    assert "recovery " + str(rec) + " (fresh)" in stderr
    assert "stopped by a signal before the end of the input (state kept for recovery)" in stdout
    assert "Ensemble run summary" in stdout
    stopped = json.loads((out / "summary.json").read_text())
    full = json.loads((ref / "summary.json").read_text())
    assert 0 < stopped["symbols"]["BTC-PERP"]["bars"] < full["symbols"]["BTC-PERP"]["bars"]

    again = subprocess.run(recoverable, cwd=ROOT, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert f"recovery {rec} (resuming from epoch" in again.stderr
    assert "stopped by a signal" not in again.stdout
    for path in sorted(ref.iterdir()):
        if path.name != "repro.jsonl":
            assert (out / path.name).read_bytes() == path.read_bytes(), path.name


def test_two_workers_write_what_one_writes_and_stop_cleanly_on_sigint(tmp_path):
    """With `-w 2` the main thread parks in a signal handler while the workers run
    (dataflows/cluster.py): the run still ends by itself with one worker's outputs, and
    Ctrl-C still reaches the stop handler and ends the run with its summary."""
    env = {
        **os.environ,
        "ENSEMBLE_DAYS": "3",
        "ENSEMBLE_OVERRIDES": json.dumps({"warmup_bars": 150}),
    }
    command = [sys.executable, "-m", "bytewax.run", "dataflows.ensemble"]
    one, two = tmp_path / "one", tmp_path / "two"
    for out, extra in ((one, []), (two, ["-w", "2"])):
        done = subprocess.run(
            [*command, *extra],
            cwd=ROOT,
            env={**env, "ENSEMBLE_CLOCK": "event", "ENSEMBLE_OUT": str(out)},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert "Ensemble run summary" in done.stdout
    for path in sorted(one.glob("*.jsonl")):
        lines = sorted(path.read_text().splitlines())
        assert sorted((two / path.name).read_text().splitlines()) == lines, path.name

    stopped = tmp_path / "stopped"
    proc = subprocess.Popen(
        [*command, "-w", "2"],
        cwd=ROOT,
        env={**env, "ENSEMBLE_DAYS": "12", "ENSEMBLE_OUT": str(stopped)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, _ = _interrupt_once_past(proc, stopped / "signals.jsonl", 0)
    # no -r: the summary must not promise that a restart continues
    assert "input (recovery off: a restart starts over)" in stdout
    assert "state kept for recovery" not in stdout


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ctrl_c_to_one_of_two_processes_stops_both_and_a_restart_continues_exactly(tmp_path):
    """Two processes (`-i/-a`), Ctrl-C to the one that reads the input only: the other
    process must keep its open bars and waiting bars too, not take the end of the input for
    the real one (it closed ETH-PERP's open 15m and 1h bars half-filled, and the restart
    wrote bars, signals and health unlike an uninterrupted run's)."""
    env = {
        **os.environ,
        "ENSEMBLE_DAYS": "8",
        "ENSEMBLE_OVERRIDES": json.dumps({"warmup_bars": 150}),
        "ENSEMBLE_CLOCK": "event",
        "ENSEMBLE_STATUS_INTERVAL_S": "0",
    }
    ref, third = _uninterrupted(env, tmp_path)

    rec, out = tmp_path / "recovery", tmp_path / "stopped"
    prepare(rec, 2)
    addresses = f"127.0.0.1:{_free_port()};127.0.0.1:{_free_port()}"
    command = [sys.executable, "-m", "bytewax.run", "dataflows.ensemble"]
    env["ENSEMBLE_OUT"] = str(out)

    def start() -> list[subprocess.Popen]:
        return [
            subprocess.Popen(
                [*command, "-i", str(i), "-a", addresses, "-r", str(rec), "-s", "1", "-b", "0"],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(2)
        ]

    reader, other = start()  # one input partition (the generator): on process 0
    stdout, _ = _interrupt_once_past(reader, out / "signals.jsonl", third)
    assert "state kept for recovery" in stdout
    _, stderr = other.communicate(timeout=120)
    assert other.returncode == 0, stderr

    for proc in start():
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
    for path in sorted(ref.glob("*.jsonl")):
        if path.name != "repro.jsonl":
            lines = sorted(path.read_text().splitlines())
            assert sorted((out / path.name).read_text().splitlines()) == lines, path.name
    assert json.loads((out / "summary.json").read_text()) == json.loads(
        (ref / "summary.json").read_text()
    )
