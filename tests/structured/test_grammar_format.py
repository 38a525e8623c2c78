"""response_format {"type": "grammar"}: a client's GBNF or Lark grammar, nested in ours, then an end token."""

import re

import pytest
import torch

from gemmaserve.structured import SchemaError, grammar_constraint

from structured_support import VOCAB

GBNF = 'root ::= ("yes" | "no") " " [0-9] [0-9]?'
LARK = 'start: word ("," word)*\nword: "ab" | "cd"\n'


@pytest.mark.parametrize("grammar, pattern", [(GBNF, r"(yes|no) [0-9][0-9]?"), (LARK, r"(ab|cd)(,(ab|cd))*")])
def test_random_model_output_matches_the_client_grammar(compiler, tokenizer, generate, grammar, pattern):
    m = compiler.markers
    for seed in range(6):
        ids = generate(grammar_constraint(compiler, grammar), seed)
        assert ids[-1] in (m.turn_end, m.eos)
        assert re.fullmatch(pattern, tokenizer.decode(ids[:-1])), tokenizer.decode(ids)


def test_rule_names_cannot_clash_with_ours(compiler, tokenizer):
    # The client's own `end` rule is theirs: it does not replace the end-token rule.
    c = grammar_constraint(compiler, 'start: "x" end\nend: "!"\n')
    done = tokenizer.encode("x!")
    logits = torch.zeros(VOCAB)
    c.mask_logits(done, logits)
    assert torch.isfinite(logits).nonzero().flatten().tolist() == sorted([compiler.markers.turn_end, compiler.markers.eos])


def test_thinking_first_then_grammar(compiler, tokenizer):
    m = compiler.markers
    c = grammar_constraint(compiler, GBNF, starts_in_reasoning=True)
    inside = torch.zeros(VOCAB)
    c.mask_logits(tokenizer.encode("free text"), inside)
    assert torch.isfinite(inside[tokenizer.encode("z")[0]])  # thinking runs free
    after = torch.zeros(VOCAB)
    c.mask_logits(tokenizer.encode("hm") + [m.channel_end], after)
    assert not torch.isfinite(after[tokenizer.encode("z")[0]]) and torch.isfinite(after[tokenizer.encode("y")[0]])


@pytest.mark.parametrize("bad", ["", "   ", "root ::= undefined_rule", "start: (", 'root ::= "a', "start: nope"])
def test_bad_grammars_are_schema_errors(compiler, bad):
    with pytest.raises(SchemaError):
        grammar_constraint(compiler, bad)
