"""Output parser: exact reasoning/content/tool calls per case, identical for a whole-text parse and
for streams split at every character boundary, char by char and at random; engines.md §3 regressions."""

import json
import random
import zlib

import pytest

from gemmaserve.chat.parser import (
    ContentDelta,
    OutputStreamParser,
    ParsedOutput,
    ParsedToolCall,
    ReasoningDelta,
    ToolCallArgsDelta,
    ToolCallEnd,
    ToolCallStart,
    collect_events,
    parse_output,
    prompt_ends_in_reasoning,
)

Q = '<|"|>'


def fn(name, props, required=()):
    return {"type": "function", "function": {"name": name, "parameters": {
        "type": "object", "properties": props, "required": list(required)}}}


WEATHER = fn("get_weather", {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                             "days": {"type": "integer"}, "zip": {"type": "string"}, "ratio": {"type": "number"},
                             "hourly": {"type": "boolean"}, "note": {"type": ["string", "null"]}})
SEARCH = fn("search", {"query": {"type": "string"},
                       "filters": {"type": "object", "properties": {"lang": {"type": "string"}, "max": {"type": "number"}}},
                       "flag": {"type": "boolean"}, "tags": {"type": "array", "items": {"type": "string"}},
                       "ids": {"type": "array", "items": {"type": "string"}},
                       "rows": {"type": "array", "items": {"type": "object", "properties": {"id": {"type": "integer"}}}}})
TOOLS = [WEATHER, SEARCH]


def out(reasoning=None, content=None, *calls):
    return ParsedOutput(reasoning, content, [ParsedToolCall(n, a) for n, a in calls])


# (id, text, tools, starts_in_reasoning, expected)
CASES = [
    ("plain_content", "Hello world.<turn|>", None, False, out(None, "Hello world.")),
    ("content_whitespace_trimmed", "\n  Hello\n\nworld.  \n<turn|>", None, False, out(None, "Hello\n\nworld.")),
    ("reasoning_then_content", "<|channel>thought\nLet me think.\n<channel|>The answer is 4.<turn|>", None, False,
     out("Let me think.", "The answer is 4.")),
    ("spec_call_with_reasoning",
     f"<|channel>thought\nNeed weather.<channel|><|tool_call>call:get_weather{{city:{Q}Paris{Q},unit:{Q}celsius{Q}}}<tool_call|><|tool_response>",
     TOOLS, False, out("Need weather.", None, ("get_weather", '{"city": "Paris", "unit": "celsius"}'))),
    ("spec_nested_call",
     f'<|tool_call>call:search{{filters:{{lang:{Q}en{Q},max:3}},flag:true,query:{Q}say "hi"{Q},tags:[{Q}a{Q},{Q}b{Q}]}}<tool_call|>',
     TOOLS, False,
     out(None, None, ("search", '{"filters": {"lang": "en", "max": 3}, "flag": true, "query": "say \\"hi\\"", "tags": ["a", "b"]}'))),
    ("schema_typing",
     f"<|tool_call>call:get_weather{{city:{Q}Paris{Q},days:3,zip:02134,ratio:0.50,hourly:false,note:null,unit:celsius}}<tool_call|>",
     TOOLS, False,
     out(None, None, ("get_weather",
                      '{"city": "Paris", "days": 3, "zip": "02134", "ratio": 0.50, "hourly": false, "note": null, "unit": "celsius"}'))),
    ("schema_coerces_quoted_number", f"<|tool_call>call:get_weather{{days:{Q}7{Q},hourly:{Q}true{Q}}}<tool_call|>",
     TOOLS, False, out(None, None, ("get_weather", '{"days": 7, "hourly": true}'))),
    ("string_schema_keeps_literals", f"<|tool_call>call:get_weather{{city:true,zip:{Q}123{Q},note:42}}<tool_call|>",
     TOOLS, False, out(None, None, ("get_weather", '{"city": "true", "zip": "123", "note": "42"}'))),
    ("no_schema_heuristic_typing", f"<|tool_call>call:other{{a:1,b:-2.5,c:TRUE,d:None,e:nil,f:word,g:{Q}7{Q},h:1e3}}<tool_call|>",
     TOOLS, False,
     out(None, None, ("other", '{"a": 1, "b": -2.5, "c": true, "d": null, "e": null, "f": "word", "g": "7", "h": 1e3}'))),
    ("array_of_objects_and_nesting",
     f"<|tool_call>call:search{{rows:[{{id:1}},{{id:{Q}2{Q}}}],ids:[7,{Q}x{Q}],filters:{{}},tags:[]}}<tool_call|>",
     TOOLS, False,
     out(None, None, ("search", '{"rows": [{"id": 1}, {"id": 2}], "ids": ["7", "x"], "filters": {}, "tags": []}'))),
    ("string_escapes",
     f"<|tool_call>call:search{{query:{Q}line1\nline2 \\ tab\t é 😀 {{x}}, [y]: z{Q}}}<tool_call|>",
     TOOLS, False, out(None, None, ("search", json.dumps({"query": "line1\nline2 \\ tab\t é 😀 {x}, [y]: z"}, ensure_ascii=False)))),
    ("quoted_keys_and_spaces", f"<|tool_call>call:other{{ {Q}my key{Q} : 1 , b : {Q}v{Q} }}<tool_call|>", None, False,
     out(None, None, ("other", '{"my key": 1, "b": "v"}'))),
    ("empty_args", "<|tool_call>call:ping{}<tool_call|>", None, False, out(None, None, ("ping", "{}"))),
    ("content_around_calls", "Checking.<|tool_call>call:ping{}<tool_call|>\nDone.<turn|>", None, False,
     out(None, "Checking.\n\nDone.", ("ping", "{}"))),
    ("whitespace_after_args", "<|tool_call>call:ping{} \n<tool_call|>", None, False, out(None, None, ("ping", "{}"))),
    ("missing_close_then_next_call", f"<|tool_call>call:a{{x:1}}<|tool_call>call:b{{y:{Q}z{Q}}}<tool_call|>", None, False,
     out(None, None, ("a", '{"x": 1}'), ("b", '{"y": "z"}'))),
    ("truncated_call_closed_at_finish", f"<|tool_call>call:get_weather{{city:{Q}Par", TOOLS, False,
     out(None, None, ("get_weather", '{"city": "Par"}'))),
    ("truncated_bare_value", "<|tool_call>call:get_weather{days:1", TOOLS, False,
     out(None, None, ("get_weather", '{"days": 1}'))),
    ("truncated_key", "<|tool_call>call:x{a:[1,{b", None, False, out(None, None, ("x", '{"a": [1, {"b": null}]}'))),
    ("key_without_value", "<|tool_call>call:x{a,b:}<tool_call|>", None, False, out(None, None, ("x", '{"a": null, "b": null}'))),
    ("reasoning_open_at_end", "<|channel>thought\nhmm, still", None, False, out("hmm, still", None)),
    ("empty_thought_channel", "<|channel>thought\n<channel|>Hi", None, False, out(None, "Hi")),
    ("thought_without_newline", "<|channel>thought<channel|>Hi", None, False, out(None, "Hi")),
    ("thoughtful_is_text", "<|channel>thoughtful words<channel|>Hi", None, False, out("thoughtful words", "Hi")),
    ("consecutive_thinking_blocks", "<|channel>thought\nA<channel|><|channel>thought\nB<channel|>C", None, False,
     out("A\n\nB", "C")),
    ("quote_outside_call_is_text", f"Say {Q}hi{Q}<eos>", None, False, out(None, f"Say {Q}hi{Q}")),
    ("angle_brackets_not_markers", "a < b, <b>bold</b> <|not|> <turn <channel", None, False,
     out(None, "a < b, <b>bold</b> <|not|> <turn <channel")),
    ("markers_inside_string_args", f"<|tool_call>call:search{{query:{Q}<|channel>x<channel|>{Q}}}<tool_call|>", TOOLS, False,
     out(None, None, ("search", '{"query": "<|channel>x<channel|>"}'))),
    ("text_after_end_marker_is_content", "Hi<turn|>\nmore", None, False, out(None, "Hi\nmore")),
    ("starts_in_reasoning", "Still thinking.<channel|>Final answer.", None, True, out("Still thinking.", "Final answer.")),
    ("starts_in_reasoning_with_name", "thought\nPlan.<channel|>Go.", None, True, out("Plan.", "Go.")),
    ("starts_in_reasoning_call", f"Plan.<|tool_call>call:ping{{}}<tool_call|>", None, True, out("Plan.", None, ("ping", "{}"))),
    # --- deviations the spec (§6.8) says a parser must accept --------------------------------------
    ("dev_turn_closes_call", f"<|tool_call>call:get_weather{{city:{Q}Oslo{Q}}}<turn|>", TOOLS, False,
     out(None, None, ("get_weather", '{"city": "Oslo"}'))),
    ("dev_paren_call", f"<|tool_call>call:get_weather(city:{Q}Rome{Q},days:2)<tool_call|>", TOOLS, False,
     out(None, None, ("get_weather", '{"city": "Rome", "days": 2}'))),
    ("dev_stray_channel_close", "<channel|>Answer<channel|> here.", None, False, out(None, "Answer here.")),
    ("dev_bare_leading_thought", "thought\nReasoning here.<channel|>Answer.", None, False, out("Reasoning here.", "Answer.")),
    ("dev_stray_tool_call_close", "Hi<tool_call|>!", None, False, out(None, "Hi!")),
    # --- end markers never leak -----------------------------------------------------------------
    ("end_eos", "Done.<eos>", None, False, out(None, "Done.")),
    ("end_tool_response", "<|tool_call>call:ping{}<tool_call|><|tool_response>", None, False, out(None, None, ("ping", "{}"))),
    # --- engines.md §3 regressions ------------------------------------------------------------------
    # vLLM #53431: a bare `<|tool_call>:name{` opener was dropped (no call, no content).
    ("vllm53431_bare_colon_opener", f"<|tool_call>:get_weather{{city:{Q}Lima{Q}}}<tool_call|>", TOOLS, False,
     out(None, None, ("get_weather", '{"city": "Lima"}'))),
    # vLLM #38946/#39468/#44522: <|"|> must never leak into arguments or content; no raw call text.
    ("vllm39468_no_quote_leak", f"<|tool_call>call:search{{query:{Q}a,b{Q},tags:[{Q}x{Q}]}}<tool_call|>", TOOLS, False,
     out(None, None, ("search", '{"query": "a,b", "tags": ["x"]}'))),
    # vLLM #47906: bare values came back as strings; numbers/booleans must stay typed.
    ("vllm47906_bare_values_typed", "<|tool_call>call:get_weather{days:10,hourly:true,ratio:2}<tool_call|>", TOOLS, False,
     out(None, None, ("get_weather", '{"days": 10, "hourly": true, "ratio": 2}'))),
    # vLLM #49717: reasoning channel left open by the prompt; the answer after <channel|> is content.
    ("vllm49717_open_channel_prompt", "The tool says 18C.<channel|>It is 18C.<turn|>", None, True,
     out("The tool says 18C.", "It is 18C.")),
    # llama.cpp #21882: duplicate back-to-back calls are two calls; malformed output kept as text.
    ("llamacpp21882_duplicate_calls",
     f"<|tool_call>call:get_weather{{city:{Q}Paris{Q}}}<tool_call|><|tool_call>call:get_weather{{city:{Q}Paris{Q}}}<tool_call|>",
     TOOLS, False, out(None, None, ("get_weather", '{"city": "Paris"}'), ("get_weather", '{"city": "Paris"}'))),
    # llama.cpp #21680: complex object schemas must survive as nested JSON.
    ("llamacpp21680_nested_objects",
     f"<|tool_call>call:search{{filters:{{lang:{Q}de{Q},max:2.5}},rows:[{{id:1}},{{id:2}}]}}<tool_call|>", TOOLS, False,
     out(None, None, ("search", '{"filters": {"lang": "de", "max": 2.5}, "rows": [{"id": 1}, {"id": 2}]}'))),
    # Ollama #18275: a non-Gemma syntax is not a call; it is returned as content, never lost.
    ("ollama18275_malformed_call_is_content",
     "<|tool_call>call get_weather BEGIN_ARG city=Paris END_ARG<tool_call|>after<turn|>", TOOLS, False,
     out(None, "<|tool_call>call get_weather BEGIN_ARG city=Paris END_ARG<tool_call|>after")),
    ("malformed_prose_after_opener", "<|tool_call>I cannot call tools.<turn|>", None, False,
     out(None, "<|tool_call>I cannot call tools.")),
    ("malformed_truncated_preamble", "Ok <|tool_call>call:get_wea", None, False, out(None, "Ok <|tool_call>call:get_wea")),
    ("malformed_then_valid", "<|tool_call>oops<|tool_call>call:ping{}<tool_call|>", None, False,
     out(None, "<|tool_call>oops", ("ping", "{}"))),
    # Ollama #15539 / #17823: thinking off + system + tools: the call is still extracted; plain
    # answers come back as content, never empty.
    ("ollama15539_call_after_empty_channel", f"<|tool_call>call:get_weather{{city:{Q}Bern{Q}}}<tool_call|>", TOOLS, False,
     out(None, None, ("get_weather", '{"city": "Bern"}'))),
    ("ollama17823_think_off_content", "Bonjour!<turn|>", None, False, out(None, "Bonjour!")),
    # llama.cpp #22786: a call after some prose came back as plain content; it is a call.
    ("llamacpp22786_call_after_text", f"Let me check.<|tool_call>call:get_weather{{city:{Q}Oslo{Q}}}<tool_call|>",
     TOOLS, False, out(None, "Let me check.", ("get_weather", '{"city": "Oslo"}'))),
    # Ollama #15241/#15315: a thought, then a call with typed arguments, then the turn end.
    ("ollama15315_thought_then_call", f"<|channel>thought\nNeed it.<channel|><|tool_call>call:get_weather{{city:{Q}Kyiv{Q},days:3}}<tool_call|><turn|>",
     TOOLS, False, out("Need it.", None, ("get_weather", '{"city": "Kyiv", "days": 3}'))),
]


def run_stream(text, tools, sir, pieces):
    parser = OutputStreamParser(tools, starts_in_reasoning=sir)
    events = []
    for p in pieces:
        events += parser.feed(p)
    events += parser.finish()
    return events


def check_events(events, expected):
    """Event-level invariants: deltas non-empty, each call Start -> ArgsDelta* -> End in order,
    argument fragments concatenating to valid JSON objects."""
    open_calls = set()
    for ev in events:
        if isinstance(ev, (ReasoningDelta, ContentDelta, ToolCallArgsDelta)):
            assert ev.text
        if isinstance(ev, ToolCallStart):
            open_calls.add(ev.index)
        elif isinstance(ev, ToolCallArgsDelta):
            assert ev.index in open_calls
        elif isinstance(ev, ToolCallEnd):
            open_calls.remove(ev.index)
    assert not open_calls
    got = collect_events(events)
    for call in got.tool_calls:
        assert isinstance(json.loads(call.arguments), dict)
    assert got == expected


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_whole_text(case):
    _, text, tools, sir, expected = case
    assert parse_output(text, tools, starts_in_reasoning=sir) == expected


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_stream_every_split(case):
    _, text, tools, sir, expected = case
    for i in range(len(text) + 1):
        check_events(run_stream(text, tools, sir, [text[:i], text[i:]]), expected)
    check_events(run_stream(text, tools, sir, list(text)), expected)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_stream_random_splits(case):
    _, text, tools, sir, expected = case
    rng = random.Random(zlib.crc32(case[0].encode()))
    for _ in range(25):
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 8)))) if len(text) > 1 else []
        pieces = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
        check_events(run_stream(text, tools, sir, pieces), expected)


def test_streaming_args_arrive_before_the_call_closes():
    """String values stream as they grow (no waiting for <tool_call|>), and nothing is emitted
    for a partial <|"|> at the end of a delta."""
    parser = OutputStreamParser(TOOLS)
    assert parser.feed("<|tool_call>call:get_wea") == []
    assert parser.feed("ther{ci") == [ToolCallStart(0, "get_weather"), ToolCallArgsDelta(0, "{")]
    assert parser.feed(f"ty:{Q}Par") == [ToolCallArgsDelta(0, '"city": "Par')]
    assert parser.feed("is<|") == [ToolCallArgsDelta(0, "is")]
    assert parser.feed('"|>,days:1') == [ToolCallArgsDelta(0, '", "days": ')]  # bare 1 held: may grow
    assert parser.feed("4}") == [ToolCallArgsDelta(0, "14}")]
    assert parser.feed("<tool_call|>") == [ToolCallEnd(0)]
    assert parser.finish() == []


def test_streaming_reasoning_and_content_deltas():
    parser = OutputStreamParser()
    assert parser.feed("<|channel>tho") == []
    assert parser.feed("ught\nStep one") == [ReasoningDelta("Step one")]
    assert parser.feed(". \n") == [ReasoningDelta(".")]
    assert parser.feed("Two<chan") == [ReasoningDelta(" \nTwo")]
    assert parser.feed("nel|>\nAns") == [ContentDelta("Ans")]
    assert parser.feed("wer <tu") == [ContentDelta("wer")]
    assert parser.feed("rn|>") == []
    assert parser.finish() == []


def test_feed_after_finish_is_an_error():
    parser = OutputStreamParser()
    parser.finish()
    with pytest.raises(RuntimeError):
        parser.feed("x")


@pytest.mark.parametrize("prompt, expected", [
    ("<|turn>model\n", False),
    ("<|turn>model\n<|channel>thought\n<channel|>", False),
    ("<|tool_response>response:f{value:<|\"|>x<|\"|>}<tool_response|><|channel>thought\n", True),
    ("<|turn>model\n<|channel>", True),
    ("<|channel>thought\nx<turn|>\n<|turn>model\n", False),
])
def test_prompt_ends_in_reasoning(prompt, expected):
    assert prompt_ends_in_reasoning(prompt) is expected


FUZZ_PIECES = [
    "<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>", Q, "<turn|>", "<eos>", "<|tool_response>", "<|turn>",
    "thought\n", "thought", "call:", ":", "get_weather", "search", "{", "}", "(", ")", "[", "]", ",", " ", "\n",
    "city", "days", "Paris", "1", "2.5", "true", "null", "<", "|>", "<|", "x", "é",
]


@pytest.mark.parametrize("seed", range(40))
def test_fuzz_split_invariance(seed):
    """Random marker soup: every split gives the whole-text result, and arguments are valid JSON."""
    rng = random.Random(seed)
    text = "".join(rng.choice(FUZZ_PIECES) for _ in range(rng.randint(5, 40)))
    sir = seed % 3 == 0
    expected = parse_output(text, TOOLS, starts_in_reasoning=sir)
    for i in range(len(text) + 1):
        check_events(run_stream(text, TOOLS, sir, [text[:i], text[i:]]), expected)
    check_events(run_stream(text, TOOLS, sir, list(text)), expected)
