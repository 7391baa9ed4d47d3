"""An exception on one record becomes an `errors` record; the flow goes on."""

from __future__ import annotations

from operators import predict
from schemas import codec
from tests.conftest import run_records, small_settings


def test_a_failing_prediction_is_reported_and_the_next_bars_are_decided(tmp_path, monkeypatch):
    original = predict.ModelRuntime.predict
    calls = {"n": 0}

    def flaky(self, features):
        calls["n"] += 1
        if calls["n"] == 200:
            raise RuntimeError("model server hiccup")
        return original(self, features)

    monkeypatch.setattr(predict.ModelRuntime, "predict", flaky)
    out = run_records(small_settings(tmp_path))
    errors = out["errors"]
    assert len(errors) == 1
    err = errors[0]
    assert err["stage"] == "predict" and err["message"] == "model server hiccup"
    codec.encode("error", err)
    later = [
        s
        for s in out["signals"]
        if s["symbol"] == err["symbol"] and s["ts_event_ms"] > err["ts_event_ms"]
    ]
    assert later, "the flow stopped after the error"
