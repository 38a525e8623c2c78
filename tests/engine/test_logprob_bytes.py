"""Engine logprobs carry each token's raw bytes: a byte-fallback token gives its own byte, not U+FFFD's."""

from engine_fakes import PagedEchoModel, fake_config

from gemmaserve.config import CacheConfig, EngineConfig, SchedulerConfig
from gemmaserve.demo_tokenizer import build_demo_tokenizer
from gemmaserve.engine.engine import Engine
from gemmaserve.tokenizer import Tokenizer
from gemmaserve.types import SamplingParams

VOCAB = 512


class Script:
    """A constraint that allows only the next scripted id (forces the sampled tokens)."""

    def __init__(self, ids: list[int]):
        self.ids = ids

    def mask_logits(self, output_token_ids, logits):
        keep = self.ids[len(output_token_ids)]
        value = float(logits[keep])
        logits.fill_(float("-inf"))
        logits[keep] = value


def test_logprob_bytes_are_the_tokens_raw_bytes():
    tok = Tokenizer(build_demo_tokenizer(VOCAB))
    cfg = fake_config(vocab=VOCAB)
    ec = EngineConfig(dtype="float32", cache=CacheConfig(block_size=4, num_blocks={"sliding_attention": 32, "full_attention": 32}),
                      scheduler=SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=32))
    engine = Engine(PagedEchoModel(cfg), cfg, ec, tok)
    snowman = tok.encode("☃") + tok.encode("é")  # <0xE2> <0x98> <0x83>, then the learned piece "é"
    assert [tok.id_to_token(i) for i in snowman[:3]] == ["<0xE2>", "<0x98>", "<0x83>"]
    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True, logprobs=2, constraints=[Script(snowman)])
    engine.add_request("r", [5, 6, 7], params)
    final = None
    while engine.has_unfinished_requests():
        for out in engine.step():
            final = out if out.finished else final
    assert final is not None and final.token_ids == snowman and final.text == "☃é"
    lps = final.logprobs
    assert [lp.token for lp in lps] == ["\ufffd", "\ufffd", "\ufffd", "é"]
    assert [lp.bytes for lp in lps] == [b"\xe2", b"\x98", b"\x83", "é".encode()]
    for lp in lps:
        assert len(lp.top) == 2
        for t in lp.top:
            piece = tok.id_to_token(t.token_id)
            want = bytes([int(piece[3:5], 16)]) if piece.startswith("<0x") else tok.decode([t.token_id]).encode()
            assert t.bytes == want
