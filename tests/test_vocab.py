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

from cogenesis.cogen.write import write
from cogenesis.core.context import PrivateContext

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


# ---- cross-tokenizer fusion: the cloud's top-k by text, mapped onto the device's tokens ---------------------------


def test_string_topk_path_reproduces_token_id_fusion(server, int4_model):
    """The string path end to end against the real server: on a same-vocabulary cloud, MappedCloud (text prefix ->
    string-keyed top-k -> device ids) must give the token-id path's reply token for token, with clean mapping."""
    from cogenesis.cloud_bridge.guard import EgressGuard

    from cogenesis.cogen.logits import MappedCloud, write_logits

    guard = EgressGuard(PrivateContext(), mode="strict", detokenize=int4_model.decode)
    client = CloudClient(server.url, api_key=KEY, retries=0, guard=guard)
    args = dict(rule="cloud", max_new_tokens=12)  # the cloud alone decides every token: any mapping error shows
    direct = write_logits("Write a short note to my team.", PrivateContext(), int4_model, client, **args)
    mapped_cloud = MappedCloud(client, int4_model)
    mapped = write_logits("Write a short note to my team.", PrivateContext(), int4_model, mapped_cloud, **args)
    assert direct.fallback is None and mapped.fallback is None, (direct.fallback, mapped.fallback)
    assert mapped.tokens == direct.tokens and len(direct.tokens) >= 6
    rep = mapped_cloud.report()
    assert rep["steps"] >= len(mapped.tokens) and rep["mean_clean_fraction"] > 0.95, rep
    assert mapped.fused_steps == direct.fused_steps > 0


def test_cross_tokenizer_flag_fuses_through_text_and_says_how_well(server, int4_model):
    device = copy.copy(int4_model)
    device.tokenizer = _other_tokenizer()
    client = CloudClient(server.url, api_key=KEY, retries=0)
    with pytest.raises(VocabularyMismatch, match="--cross-tokenizer"):
        write("Write a short note to my team.", PrivateContext(), device, mode="logits", client=client,
              max_new_tokens=4)
    before = len(read_capture(server.state.settings.capture))
    r = write("Write a short note to my team.", PrivateContext(), device, mode="logits", client=client,
              mode_options={"cross_tokenizer": True}, max_new_tokens=4)
    sent = [json.loads(x["body"]) for x in read_capture(server.state.settings.capture)[before:]
            if x["path"] == "/v1/completions"]
    assert sent and all(isinstance(b["prompt"], str) for b in sent)  # text, never the device's token ids
    rep = r.extra["fusion"]["cross_tokenizer"]
    assert rep["steps"] == len(sent) and 0.0 <= rep["mean_clean_fraction"] <= 1.0


def test_a_fusion_net_trained_for_the_pair_is_the_one_used(server, int4_model, tmp_path):
    """`--fusion-net` (mode option fusion_net): a net saying "all local" reproduces the local rule's reply and one
    saying "all cloud" the cloud rule's, so the file given is what decides each step's weight."""
    import numpy as np

    from cogenesis.cogen.fusion import N_FEATURES, FusionNet

    client = CloudClient(server.url, api_key=KEY, retries=0)

    def reply(**opts):
        return write("Write a short note to my team.", PrivateContext(), int4_model, mode="logits", client=client,
                     mode_options=opts, max_new_tokens=10).text

    for bias, rule in ((30.0, "local"), (-30.0, "cloud")):
        net = FusionNet(np.zeros(N_FEATURES), np.ones(N_FEATURES), [np.zeros((N_FEATURES, 4)), np.zeros((4, 1))],
                        [np.zeros(4), np.array([bias])])
        net.save(tmp_path / rule)
        assert reply(rule="learned", fusion_net=str(tmp_path / f"{rule}.json")) == reply(rule=rule)
    with pytest.raises(FileNotFoundError, match="calibrate fusion"):
        reply(rule="learned", fusion_net=str(tmp_path / "missing.json"))
