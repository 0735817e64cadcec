"""The experiment runner on the shipped sample, with the real int4 model as the on-device model and as the
reference cloud server over real HTTP on 127.0.0.1: llm-ctx leaks the context, sketch does not."""

from __future__ import annotations

import json
import random

import pytest
from judge_server import serve_judge

from cogenesis.data.records import load_sample
from cogenesis.eval.experiment import SYSTEMS, Row, _aggregate, plant_canary, run_experiment

KEY = "experiment-test-key"


def test_plant_canary_and_aggregate():
    rec = load_sample()[0]
    r2, code = plant_canary(rec, random.Random(0))
    assert code in r2.context.private[-1] and not any(code in p for p in rec.context.private)
    assert plant_canary(rec, random.Random(0))[1] == code
    rows = [Row("x", "a", text="t", facts=4, leaked=["profile.Name"], bytes=100, requests=1, canaries=1,
                canaries_leaked=1, metrics={"rouge1": 0.5}),
            Row("x", "b", error="boom", facts=4)]
    a = _aggregate(rows)
    assert a["answers"] == 2 and a["errors"] == 1 and a["rouge1"] == 0.5
    assert a["leakage"] == pytest.approx(0.125) and a["records_leaking"] == 0.5 and a["canary_leak"] == 1.0
    assert a["bytes_per_answer"] == 50


def test_unknown_system_and_missing_bundle():
    with pytest.raises(ValueError, match="unknown system"):
        run_experiment("sample", systems=["gpt-5"], bundle="x")
    with pytest.raises(ValueError, match="--bundle"):
        run_experiment("sample", systems=["slm-ctx"])


@pytest.fixture(scope="module")
def cloud(int4_model):
    from cogenesis.cloud_bridge.server import create_app, serve_in_thread

    app = create_app(int4_model, api_key=KEY, max_tokens=64)
    with serve_in_thread(app) as srv:
        yield srv.url


@pytest.fixture(scope="module")
def judge_url():
    with serve_judge() as (url, _):
        yield url


@pytest.mark.slow
def test_experiment_with_reference_cloud(int4_model, cloud, judge_url, tmp_path):
    out = tmp_path / "exp"
    res = run_experiment("sample", systems=list(SYSTEMS), limit=2, bundle=int4_model, cloud_url=cloud, api_key=KEY,
                         out_dir=out, judge_url=judge_url, judge_cache=tmp_path / "judge", max_new_tokens=4,
                         cloud_max_tokens=16, progress=False)
    for f in ("report.md", "results.json", "outputs.jsonl", "quality_vs_leakage.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 100, f
    s = res.systems
    assert set(s) | set(res.skipped) == set(SYSTEMS)
    for name in ("llm-ctx", "llm-noctx", "slm-ctx", "sketch"):
        assert name in s and s[name]["errors"] == 0, (name, [r.error for r in res.rows if r.system == name])
    # the upper bound sends the context: facts and the planted canaries leave the device
    assert s["llm-ctx"]["leakage"] > 0.5 and s["llm-ctx"]["canary_leak"] == 1.0
    assert s["llm-ctx"]["bytes_per_answer"] > 2000
    # CoGenesis sketch talks to the cloud but sends nothing private
    assert s["sketch"]["fallbacks"] == 0 and s["sketch"]["requests_per_answer"] >= 1
    assert s["sketch"]["leakage"] == 0 and s["sketch"]["canary_leak"] == 0
    assert 0 < s["sketch"]["bytes_per_answer"] < s["llm-ctx"]["bytes_per_answer"] / 2
    assert s["slm-ctx"]["bytes_per_answer"] == 0 and s["slm-ctx"]["leakage"] == 0
    for name in ("logits", "logits-block"):  # run, or listed with the reason; never silently dropped
        assert name in s or res.skipped[name]
    assert s["llm-ctx"]["judge_overall"] == 7.0 and s["sketch"]["judge_personalization"] == 8.0
    report = (out / "report.md").read_text()
    assert "| llm-ctx |" in report and "| sketch |" in report and "Leakage" in report
    data = json.loads((out / "results.json").read_text())
    assert len(data["rows"]) == sum(a["answers"] for a in s.values())
    audit = [json.loads(x) for x in (out / "audit" / "llm-ctx.jsonl").read_text().splitlines()]
    assert audit and all(r["mode"] == "audit" and r["findings"] and not r["blocked"] for r in audit)


def test_an_earlier_report_is_not_overwritten(tmp_path):
    (tmp_path / "results.json").write_text('{"mine": true}')
    with pytest.raises(ValueError, match="already holds an experiment report.*--force"):
        run_experiment("sample", systems=["slm-ctx"], bundle="x", out_dir=tmp_path)
    assert (tmp_path / "results.json").read_text() == '{"mine": true}'


@pytest.mark.slow
def test_cloud_systems_are_skipped_with_a_reason(int4_model, tmp_path):
    res = run_experiment("sample", systems=["slm-ctx", "llm-ctx", "sketch"], limit=1, bundle=int4_model,
                         out_dir=tmp_path, max_new_tokens=2, embed=False, progress=False)
    assert list(res.systems) == ["slm-ctx"]
    assert "no cloud endpoint" in res.skipped["llm-ctx"] and "no cloud endpoint" in res.skipped["sketch"]
    report = res.report.read_text()
    assert "Systems not run" in report and "**llm-ctx**: no cloud endpoint" in report
    res = run_experiment("sample", systems=["llm-noctx"], limit=1, bundle=int4_model, cloud_url="http://127.0.0.1:9",
                         out_dir=tmp_path / "down", max_new_tokens=2, embed=False, progress=False)
    assert "not usable" in res.skipped["llm-noctx"] and res.systems == {}
