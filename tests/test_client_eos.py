"""The client reads a cloud's end-of-reply as data and refuses non-finite log-probabilities (issue 17)."""

from __future__ import annotations

import numpy as np
import pytest
from cogenesis.cloud_bridge.client import CloudClient, CloudProtocolError
from cogenesis.cloud_bridge.server import create_app, serve_in_thread

from cogenesis.cogen.logits import write_logits

pytestmark = pytest.mark.slow
KEY = "eos-test-key"


@pytest.fixture(scope="module")
def server(int4_model):
    with serve_in_thread(create_app(int4_model, api_key=KEY)) as srv:
        yield srv


def _finished_prefix(model) -> list[int]:
    """A prompt + the reply the model writes to it up to its own stop token: the next token is EOS."""
    prompt = model.encode([{"role": "user", "content": "Say hi."}])
    out = model.generate(prompt, max_new_tokens=48)
    assert out.stats.stop_reason == "stop_token", "the model must finish on its own for this check to mean anything"
    return prompt + out.token_ids


def test_eos_is_data_not_a_protocol_error(server, int4_model):
    prefix = _finished_prefix(int4_model)
    local = int4_model.logits(prefix)[-1]
    assert int(np.argmax(local)) in set(int4_model.stop_ids)  # the device agrees: EOS comes next
    client = CloudClient(server.url, api_key=KEY, retries=0, detokenize=int4_model.decode)
    (top,) = client.next_token_logprobs(prefix, k=5)
    assert top and next(iter(top)) in set(int4_model.stop_ids)  # EOS is the cloud's first choice, with its logprob
    first, *rest = client.next_token_logprobs(prefix[:-2], prefix[-2:], k=5)  # as the last draft position too
    assert len(rest) == 2 and rest[-1] and next(iter(rest[-1])) in set(int4_model.stop_ids)


def test_non_finite_logprobs_are_a_protocol_error(int4_model):
    with serve_in_thread(create_app(int4_model, api_key=KEY, fault="nan")) as srv:
        client = CloudClient(srv.url, api_key=KEY, retries=0, detokenize=int4_model.decode)
        with pytest.raises(CloudProtocolError, match="not a finite log-probability"):
            client.next_token_logprobs(int4_model.encode("Hello"), k=3)
        # in a logits session the bad answer ends fusion; nothing NaN reaches the fused distribution
        r = write_logits("Say hi.", None, int4_model, client, rule="mean", max_new_tokens=6)
        assert r.fallback is not None and r.fallback["reason"] == "cloud_error"
        assert "finite" in r.fallback["error"] and r.fused_steps == 0 and r.text
