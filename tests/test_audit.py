"""Audit log: one JSON line per request, readable back, malformed lines named, summaries add up."""

from __future__ import annotations

import hashlib
import json
import threading

import pytest
from cogenesis.cloud_bridge.audit import (
    AuditFormatError,
    append_record,
    format_summary,
    read_audit,
    summarize_audit,
)
from cogenesis.cloud_bridge.guard import EgressGuard, PrivacyViolation, encode_body

from cogenesis.core.context import PrivateContext

CTX = PrivateContext({"Name": "Isabel Martinez", "Location": "Miami, Florida",
                      "Privacy_info": "Hosts a monthly dinner party to network with potential high-end clients"})


def test_append_and_read_round_trip(tmp_path):
    log = tmp_path / "sub" / "audit.jsonl"  # parent folders are created
    append_record(log, {"a": 1, "text": "ünïcode"})
    append_record(log, {"a": 2})
    assert read_audit(log) == [{"a": 1, "text": "ünïcode"}, {"a": 2}]
    assert log.read_text(encoding="utf-8").count("\n") == 2


def test_concurrent_appends_stay_whole_lines(tmp_path):
    log = tmp_path / "audit.jsonl"
    big = "x" * 20000  # larger than any stdio buffer: still one write per record

    def worker(k: int) -> None:
        for i in range(25):
            append_record(log, {"worker": k, "i": i, "pad": big})

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    recs = read_audit(log)
    assert len(recs) == 100
    assert sorted((r["worker"], r["i"]) for r in recs) == [(k, i) for k in range(4) for i in range(25)]


def test_malformed_line_names_file_and_line(tmp_path):
    log = tmp_path / "audit.jsonl"
    append_record(log, {"ok": True})
    with open(log, "a", encoding="utf-8") as f:
        f.write('{"endpoint": "/v1/chat", "bytes": 12\n')  # truncated record
    with pytest.raises(AuditFormatError, match=r"audit\.jsonl:2: malformed audit record") as exc:
        read_audit(log)
    assert isinstance(exc.value, ValueError)
    assert '/v1/chat' in str(exc.value)


def test_non_object_line_and_missing_file(tmp_path):
    log = tmp_path / "audit.jsonl"
    log.write_text('{"a": 1}\n\n[1, 2]\n', encoding="utf-8")  # blank lines are fine, a list is not
    with pytest.raises(AuditFormatError, match=r":3: audit record must be a JSON object, got list"):
        read_audit(log)
    with pytest.raises(FileNotFoundError, match="audit log not found"):
        read_audit(tmp_path / "nope.jsonl")


def test_guard_records_have_the_documented_fields(tmp_path):
    log = tmp_path / "audit.jsonl"
    body = {"messages": [{"role": "user", "content": "a party in Miami"}]}
    EgressGuard(CTX, mode="audit", audit_log=log, session_id="sess-1").inspect("/v1/chat/completions", body)
    (rec,) = read_audit(log)
    assert set(rec) == {"ts", "session", "endpoint", "mode", "bytes", "sha256", "inspected", "findings", "blocked"}
    raw = encode_body(body)
    assert rec["sha256"] == hashlib.sha256(raw).hexdigest() and rec["bytes"] == len(raw)
    assert rec["findings"] == [{"kind": "identifier", "source": "profile.Location", "match": "Miami",
                                "path": "$.messages[0].content"}]
    assert json.loads(log.read_text(encoding="utf-8").splitlines()[0]) == rec


def test_summarize_counts_requests_bytes_endpoints_modes_findings_and_blocks(tmp_path):
    log = tmp_path / "audit.jsonl"
    audit = EgressGuard(CTX, mode="audit", audit_log=log, session_id="s-audit")
    strict = EgressGuard(CTX, mode="strict", audit_log=log, session_id="s-strict")
    bodies = [
        (audit, "/v1/chat", b'{"prompt": "hello world"}'),
        (audit, "/v1/chat", b'{"prompt": "Isabel Martinez in Miami"}'),
        (audit, "/v1/embed", b'{"input": "mail me at someone@example.com"}'),
        (strict, "/v1/chat", b'{"prompt": "plan a trip"}'),
    ]
    for guard, ep, body in bodies:
        guard.inspect(ep, body)
    with pytest.raises(PrivacyViolation):
        strict.inspect("/v1/embed", b'{"input": "your monthly dinner party to network with potential clients"}')

    s = summarize_audit(log)
    assert s["requests"] == 5
    assert s["bytes"] == sum(len(b) for _, _, b in bodies) + len(
        b'{"input": "your monthly dinner party to network with potential clients"}')
    assert s["blocked"] == 1 and s["flagged"] == 3 and s["sessions"] == 2
    assert s["by_mode"] == {"audit": 3, "strict": 2}
    assert s["by_endpoint"]["/v1/chat"]["requests"] == 3 and s["by_endpoint"]["/v1/embed"]["blocked"] == 1
    assert s["findings"] == {"identifier": 2, "email": 1, "verbatim_span": 1}
    assert s["findings_by_source"]["profile.Location"] == 1 and s["findings_by_source"]["pattern.email"] == 1
    assert s["first"] <= s["last"]

    text = format_summary(s)
    assert "requests: 5" in text and "blocked: 1" in text
    assert "/v1/chat" in text and "/v1/embed" in text and "verbatim_span: 1" in text
    assert "profile.Privacy_info: 1" in text


def test_summary_of_empty_log(tmp_path):
    log = tmp_path / "audit.jsonl"
    log.write_text("", encoding="utf-8")
    s = summarize_audit(log)
    assert s["requests"] == 0 and s["bytes"] == 0 and s["by_endpoint"] == {}
    assert "no findings" in format_summary(s)
