"""Device/cloud vocabulary identity (issue 15): a cloud that numbers tokens differently is refused before the
first token-id request, with a clear error, never fused into silent garbage."""

from __future__ import annotations

import copy
import json

import pytest
from cogenesis.cloud_bridge.client import CloudClient, VocabularyMismatch
from cogenesis.cloud_bridge.server import create_app, read_capture, serve_in_thread
from cogenesis.runtime.vocab import PROBE, probe_ids, vocab_fingerprint
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from cogenesis.context import PrivateContext
from cogenesis.write import write

pytestmark = pytest.mark.slow
KEY = "vocab-test-key"


def _other_tokenizer() -> Tokenizer:
    """A real, different byte-level BPE tokenizer (trained here on a few lines)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([PROBE, "write a short note to my team about next week"] * 20, trainer)
    return tok


@pytest.fixture(scope="module")
def server(int4_model, tmp_path_factory):
    cap = tmp_path_factory.mktemp("vocab") / "capture.jsonl"
    with serve_in_thread(create_app(int4_model, api_key=KEY, capture=str(cap))) as srv:
        yield srv


def test_fingerprint_is_the_tokenizer_s_identity(int4_model):
    fp = vocab_fingerprint(int4_model.tokenizer)
    assert fp.startswith("sha256:") and fp == int4_model.vocab_fingerprint
    assert int4_model.manifest["model"]["vocab_fingerprint"] == fp  # written at export
    assert vocab_fingerprint(Tokenizer.from_str(int4_model.tokenizer.to_str())) == fp  # a copy: the same
    assert vocab_fingerprint(_other_tokenizer()) != fp
    assert probe_ids(int4_model.tokenizer) != probe_ids(_other_tokenizer())


def test_server_publishes_the_fingerprint_and_the_client_accepts_a_match(server, int4_model):
    client = CloudClient(server.url, api_key=KEY, retries=0)
    card = client.capabilities()
    assert card["cogenesis"]["vocab_fingerprint"] == int4_model.vocab_fingerprint
    assert client.check_vocab(int4_model.tokenizer) == "fingerprint"


def test_client_refuses_a_cloud_with_another_vocabulary(server):
    client = CloudClient(server.url, api_key=KEY, retries=0)
    with pytest.raises(VocabularyMismatch, match="token-id fusion would fuse unrelated tokens.*--mode sketch"):
        client.check_vocab(_other_tokenizer())


@pytest.mark.parametrize("mode", ["logits", "logits-block"])
def test_logits_session_with_another_vocabulary_stops_before_any_token_id_request(server, int4_model, mode):
    device = copy.copy(int4_model)  # the device model with another tokenizer: its ids mean other tokens
    device.tokenizer = _other_tokenizer()
    before = len(read_capture(server.state.settings.capture))
    client = CloudClient(server.url, api_key=KEY, retries=0)
    with pytest.raises(VocabularyMismatch):
        write("Write a short note to my team.", PrivateContext(), device, mode=mode, client=client,
              max_new_tokens=4)
    sent = read_capture(server.state.settings.capture)[before:]
    assert [r["path"] for r in sent] == ["/v1/models"]  # asked who it is, sent no prompt
    assert all("prompt" not in json.loads(r["body"] or b"{}") for r in sent)


def test_sketch_mode_needs_no_shared_vocabulary(server, int4_model):
    """Sketch sends text only: a cloud with another tokenizer is fine there (no check, no refusal)."""
    client = CloudClient(server.url, api_key=KEY, retries=0)
    r = write("Write a short note to my team.", PrivateContext(), int4_model, mode="sketch", client=client,
              mode_options={"max_tokens": 8}, max_new_tokens=4)
    assert r.mode_used == "sketch" and r.fallback is None
