"""Golden renders of the Gemma 4 chat template: spec §6 examples, byte for byte, and parity with
transformers' apply_chat_template on the same template."""

import json

import pytest

from gemmaserve.chat.render import ChatRenderer, default_chat_template, normalize_messages, normalize_tools

Q = '<|"|>'
GEN_OFF = "<|turn>model\n<|channel>thought\n<channel|>"
GEN_ON = "<|turn>model\n"

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "days": {"type": "integer", "description": "Forecast days"},
                "unit": {"type": "string", "description": "Temperature unit", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
# spec §6.4, verbatim
WEATHER_DECL = (
    '<|tool>declaration:get_weather{description:<|"|>Get the current weather for a city.<|"|>,parameters:{properties:'
    '{city:{description:<|"|>City name<|"|>,type:<|"|>STRING<|"|>},days:{description:<|"|>Forecast days<|"|>,type:'
    '<|"|>INTEGER<|"|>},unit:{description:<|"|>Temperature unit<|"|>,enum:[<|"|>celsius<|"|>,<|"|>fahrenheit<|"|>],'
    'type:<|"|>STRING<|"|>}},required:[<|"|>city<|"|>],type:<|"|>OBJECT<|"|>}}<tool|>'
)

SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the web.",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string", "description": "Query text"},
                "filters": {
                    "type": "object",
                    "properties": {"max": {"type": "number"}, "lang": {"type": "string"}},
                    "required": ["lang"],
                },
                "flag": {"type": "boolean", "nullable": True},
                "tags": {"type": "array", "items": {"type": "string"}},
                "u": {"type": "string", "description": "unit", "enum": ["a", "b"], "nullable": True},
            },
            "required": ["query"],
        },
    },
}
# Built from the spec's nested example and its "verified rendering" of `u`.
SEARCH_DECL = (
    "<|tool>declaration:search{description:<|\"|>Search the web.<|\"|>,parameters:{properties:{"
    'filters:{properties:{lang:{type:<|"|>STRING<|"|>},max:{type:<|"|>NUMBER<|"|>}},required:[<|"|>lang<|"|>],type:<|"|>OBJECT<|"|>},'
    'flag:{nullable:true,type:<|"|>BOOLEAN<|"|>},'
    'query:{description:<|"|>Query text<|"|>,type:<|"|>STRING<|"|>},'
    'tags:{items:{type:<|"|>STRING<|"|>},type:<|"|>ARRAY<|"|>},'
    'u:{description:<|"|>unit<|"|>,enum:[<|"|>a<|"|>,<|"|>b<|"|>],nullable:true,type:<|"|>STRING<|"|>}'
    '},required:[<|"|>query<|"|>],type:<|"|>OBJECT<|"|>}}<tool|>'
)

REASONING = "The user wants the weather in Paris. I should call get_weather."
CALL_PARIS = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris", "unit": "celsius"})},
}
CALL_PARIS_TEXT = '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>,unit:<|"|>celsius<|"|>}<tool_call|>'
RESULT_PARIS_TEXT = '<|tool_response>response:get_weather{value:<|"|>{"temp": 18, "sky": "cloudy"}<|"|>}<tool_response|>'
WORKED = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What's the weather in Paris?"},
    {"role": "assistant", "content": None, "reasoning_content": REASONING, "tool_calls": [CALL_PARIS]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 18, "sky": "cloudy"}'},
]
# spec §6.7, verbatim
WORKED_TEXT = (
    "<bos><|turn>system\n<|think|>\nYou are a helpful assistant." + WEATHER_DECL + "<turn|>\n"
    "<|turn>user\nWhat's the weather in Paris?<turn|>\n"
    "<|turn>model\n<|channel>thought\n" + REASONING + "\n<channel|>" + CALL_PARIS_TEXT + RESULT_PARIS_TEXT
)
SYSTEM_TOOLS_ON = "<bos><|turn>system\n<|think|>\nYou are a helpful assistant." + WEATHER_DECL + "<turn|>\n"

# (id, messages, tools, enable_thinking, add_generation_prompt, expected)
CASES = [
    ("hi_thinking_off", [{"role": "user", "content": "Hi"}], None, False, True,
     "<bos><|turn>user\nHi<turn|>\n<|turn>model\n<|channel>thought\n<channel|>"),
    ("hi_thinking_on", [{"role": "user", "content": "Hi"}], None, True, True,
     "<bos><|turn>system\n<|think|>\n<turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\n"),
    ("no_generation_prompt", [{"role": "user", "content": "Hi"}], None, False, False,
     "<bos><|turn>user\nHi<turn|>\n"),
    ("system_multiturn",
     [{"role": "system", "content": "  You are terse.\n"}, {"role": "user", "content": "Hi"},
      {"role": "assistant", "content": "Hello! How can I help?"}, {"role": "user", "content": " Tell me a joke. "}],
     None, False, True,
     "<bos><|turn>system\nYou are terse.<turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\nHello! How can I help?<turn|>\n"
     "<|turn>user\nTell me a joke.<turn|>\n" + GEN_OFF),
    ("developer_is_system", [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
     None, True, True,
     "<bos><|turn>system\n<|think|>\nBe brief.<turn|>\n<|turn>user\nHi<turn|>\n" + GEN_ON),
    ("text_parts", [{"role": "system", "content": [{"type": "text", "text": "Rule one."}]},
                    {"role": "user", "content": [{"type": "text", "text": "Line A"}, {"type": "text", "text": "Line B"}]}],
     None, False, True,
     "<bos><|turn>system\nRule one.<turn|>\n<|turn>user\nLine A\nLine B<turn|>\n" + GEN_OFF),
    ("strip_thinking_history",
     [{"role": "user", "content": "Q1"},
      {"role": "assistant", "content": "<|channel>thought\nsecret plan<channel|>A1", "reasoning_content": "dropped"},
      {"role": "user", "content": "Q2"}],
     None, True, True,
     "<bos><|turn>system\n<|think|>\n<turn|>\n<|turn>user\nQ1<turn|>\n<|turn>model\nA1<turn|>\n<|turn>user\nQ2<turn|>\n" + GEN_ON),
    ("declaration_only", [{"role": "user", "content": "Hi"}], [WEATHER], False, True,
     "<bos><|turn>system\n" + WEATHER_DECL + "<turn|>\n<|turn>user\nHi<turn|>\n" + GEN_OFF),
    ("nested_declaration", [{"role": "user", "content": "Hi"}], [WEATHER, SEARCH], False, True,
     "<bos><|turn>system\n" + WEATHER_DECL + SEARCH_DECL + "<turn|>\n<|turn>user\nHi<turn|>\n" + GEN_OFF),
    # llama.cpp #25072: the thought a client sends back (reasoning_content) is rendered before the
    # call it led to, so the tool-calling turn is well formed.
    ("worked_example", WORKED, [WEATHER], True, True, WORKED_TEXT),
    ("worked_example_no_gen_prompt_flag", WORKED, [WEATHER], True, False, WORKED_TEXT),
    ("call_without_result",
     WORKED[:3], [WEATHER], True, True,
     SYSTEM_TOOLS_ON + "<|turn>user\nWhat's the weather in Paris?<turn|>\n<|turn>model\n<|channel>thought\n"
     + REASONING + "\n<channel|>" + CALL_PARIS_TEXT + "<|tool_response>"),
    ("continuation_then_thanks",
     WORKED + [{"role": "assistant", "content": "It is 18°C and cloudy in Paris."}, {"role": "user", "content": "Thanks"}],
     [WEATHER], True, True,
     SYSTEM_TOOLS_ON + "<|turn>user\nWhat's the weather in Paris?<turn|>\n<|turn>model\n" + CALL_PARIS_TEXT
     + RESULT_PARIS_TEXT + "It is 18°C and cloudy in Paris.<turn|>\n<|turn>user\nThanks<turn|>\n<|turn>model\n"),
    ("continuation_thinking_off_final",
     WORKED + [{"role": "assistant", "content": "It is 18°C."}], [WEATHER], False, True,
     "<bos><|turn>system\nYou are a helpful assistant." + WEATHER_DECL + "<turn|>\n<|turn>user\nWhat's the weather in Paris?"
     "<turn|>\n<|turn>model\n<|channel>thought\n" + REASONING + "\n<channel|>" + CALL_PARIS_TEXT + RESULT_PARIS_TEXT
     + "It is 18°C.<turn|>\n" + GEN_OFF),
]


def _parallel_case():
    calls = [
        {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": '{"unit": "celsius", "city": "Paris"}'}},
        {"id": "b", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "London", "days": 2}'}},
        {"id": "c", "type": "function", "function": {"name": "search", "arguments": json.dumps(
            {"query": 'say "hi"', "filters": {"max": 3, "lang": "en"}, "flag": True, "tags": ["a", "b"]})}},
    ]
    msgs = [
        {"role": "user", "content": "Weather in Paris and London?"},
        {"role": "assistant", "content": "", "tool_calls": calls, "reasoning_details": [
            {"type": "reasoning.text", "text": "Two cities", "format": "unknown", "index": 0},
            {"type": "reasoning.encrypted", "data": "xyz"}]},
        {"role": "tool", "tool_call_id": "b", "content": [{"type": "text", "text": "rain, "}, {"type": "text", "text": "12C"}]},
        {"role": "tool", "tool_call_id": "a", "content": "sunny"},
        {"role": "tool", "tool_call_id": "zzz", "name": "search", "content": "3 hits"},
        {"role": "tool", "tool_call_id": "zzz", "content": "orphan id"},
    ]
    expected = (
        "<bos><|turn>system\n" + WEATHER_DECL + SEARCH_DECL + "<turn|>\n<|turn>user\nWeather in Paris and London?<turn|>\n"
        "<|turn>model\n<|channel>thought\nTwo cities\n<channel|>"
        + CALL_PARIS_TEXT
        + '<|tool_call>call:get_weather{city:<|"|>London<|"|>,days:2}<tool_call|>'
        # spec §6.5 call, verbatim
        + '<|tool_call>call:search{filters:{lang:<|"|>en<|"|>,max:3},flag:true,query:<|"|>say "hi"<|"|>,tags:[<|"|>a<|"|>,<|"|>b<|"|>]}<tool_call|>'
        + '<|tool_response>response:get_weather{value:<|"|>rain, 12C<|"|>}<tool_response|>'
        + '<|tool_response>response:get_weather{value:<|"|>sunny<|"|>}<tool_response|>'
        + '<|tool_response>response:search{value:<|"|>3 hits<|"|>}<tool_response|>'
        + '<|tool_response>response:unknown{value:<|"|>orphan id<|"|>}<tool_response|>'
    )
    return ("parallel_calls_and_results", msgs, [WEATHER, SEARCH], False, True, expected)


def _replay_case():
    # Reasoning is replayed for the tool-calling message after the last user, under any wire name,
    # and dropped for the one before it.
    call2 = {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}
    msgs = [
        {"role": "user", "content": "Paris?"},
        {"role": "assistant", "content": None, "reasoning": "old thoughts", "tool_calls": [CALL_PARIS]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "assistant", "content": "18C in Paris."},
        {"role": "user", "content": "Rome?"},
        {"role": "assistant", "content": None, "reasoning": "Now Rome.", "tool_calls": [call2]},
        {"role": "tool", "tool_call_id": "call_2", "content": "25C"},
    ]
    expected = (
        "<bos><|turn>system\n<|think|>\n<turn|>\n<|turn>user\nParis?<turn|>\n<|turn>model\n" + CALL_PARIS_TEXT
        + '<|tool_response>response:get_weather{value:<|"|>18C<|"|>}<tool_response|>18C in Paris.<turn|>\n'
        "<|turn>user\nRome?<turn|>\n<|turn>model\n<|channel>thought\nNow Rome.\n<channel|>"
        '<|tool_call>call:get_weather{city:<|"|>Rome<|"|>}<tool_call|>'
        '<|tool_response>response:get_weather{value:<|"|>25C<|"|>}<tool_response|>'
    )
    return ("reasoning_replay_and_drop", msgs, None, True, True, expected)


def _user_after_results_case():
    # Results followed directly by a user message: the open model turn is closed first (and the
    # reasoning, now before the last user message, is dropped).
    msgs = WORKED[1:] + [{"role": "user", "content": "And tomorrow?"}]
    expected = (
        "<bos><|turn>user\nWhat's the weather in Paris?<turn|>\n<|turn>model\n" + CALL_PARIS_TEXT + RESULT_PARIS_TEXT + "<turn|>\n<|turn>user\nAnd tomorrow?<turn|>\n" + GEN_OFF
    )
    return ("user_after_results", msgs, None, False, True, expected)


CASES += [_parallel_case(), _replay_case(), _user_after_results_case()]


@pytest.fixture(scope="module")
def renderer():
    return ChatRenderer(default_chat_template())


@pytest.fixture(scope="module")
def hf_tokenizer():
    """A transformers tokenizer carrying our template (a tiny word-level vocab is enough to render)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<unk>": 0, "<bos>": 1, "<eos>": 2}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>")
    fast.chat_template = default_chat_template()
    return fast


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_golden_render(case, renderer, hf_tokenizer):
    _, messages, tools, thinking, gen, expected = case
    got = renderer.render(messages, tools=tools, enable_thinking=thinking, add_generation_prompt=gen)
    assert got == expected
    hf = hf_tokenizer.apply_chat_template(
        normalize_messages(messages), tools=normalize_tools(tools), enable_thinking=thinking,
        add_generation_prompt=gen, tokenize=False,
    )
    assert hf == got


def test_native_tool_responses_and_media(renderer, hf_tokenizer):
    """Template-level features the server's normaliser does not produce: Google-native
    `tool_responses` (dict results, spec §6.5) and media placeholders."""
    msgs = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": " Describe. "},
                                     {"type": "video"}, {"type": "audio"}]},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "n": None}}}],
         "tool_responses": [{"name": "get_weather", "response": {"temp": 18, "sky": "cloudy"}}]},
        {"role": "assistant", "content": "Cloudy."},
    ]
    expected = (
        "<bos><|turn>user\n<|image|>Describe.<|video|><|audio|><turn|>\n<|turn>model\n"
        '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>,n:null}<tool_call|>'
        '<|tool_response>response:get_weather{sky:<|"|>cloudy<|"|>,temp:18}<tool_response|>'
        "Cloudy.<turn|>\n" + GEN_OFF
    )
    assert renderer.render_template(messages=msgs, add_generation_prompt=True) == expected
    assert hf_tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) == expected


def test_declaration_edge_schemas(renderer, hf_tokenizer):
    """List-valued types become nullable + the first real type; parameters named like schema keys
    are rendered (the upstream template silently drops them); items keep their own keys sorted."""
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "type": {"type": "string"},
        "maybe": {"type": ["integer", "null"], "description": "n"},
        "rows": {"type": "array", "items": {"type": "object", "properties": {"id": {"type": "integer"}},
                                            "required": ["id"]}},
        "free": {"type": "object"},
    }}}}
    expected_decl = (
        "<|tool>declaration:f{parameters:{properties:{"
        'free:{type:<|"|>OBJECT<|"|>},'
        'maybe:{description:<|"|>n<|"|>,nullable:true,type:<|"|>INTEGER<|"|>},'
        'rows:{items:{properties:{id:{type:<|"|>INTEGER<|"|>}},required:[<|"|>id<|"|>],type:<|"|>OBJECT<|"|>},type:<|"|>ARRAY<|"|>},'
        'type:{type:<|"|>STRING<|"|>}'
        '},type:<|"|>OBJECT<|"|>}}<tool|>'
    )
    msgs = [{"role": "user", "content": "x"}]
    got = renderer.render(msgs, tools=[tool])
    assert got == "<bos><|turn>system\n" + expected_decl + "<turn|>\n<|turn>user\nx<turn|>\n" + GEN_OFF
    assert hf_tokenizer.apply_chat_template(msgs, tools=[tool], add_generation_prompt=True, tokenize=False) == got


def test_bos_token_is_configurable():
    r = ChatRenderer(default_chat_template(), bos_token="")
    assert r.render([{"role": "user", "content": "Hi"}]) == "<|turn>user\nHi<turn|>\n" + GEN_OFF


def test_transformers_filters_available():
    r = ChatRenderer("{{ bos_token }}{{ messages[0]['content'] | tojson }}{{ strftime_now('%Y') | length }}")
    assert r.render([{"role": "user", "content": "é<"}]) == '<bos>"é<"4'


@pytest.mark.parametrize("case", CASES[:3] + CASES[-6:], ids=[c[0] for c in CASES[:3] + CASES[-6:]])
def test_whitespace_settings_do_not_matter(case, renderer):
    """Every tag trims itself, so engines that compile templates without trim_blocks/lstrip_blocks
    get the same bytes."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    _, messages, tools, thinking, gen, expected = case
    plain = ImmutableSandboxedEnvironment().from_string(default_chat_template())
    got = plain.render(messages=normalize_messages(messages), tools=normalize_tools(tools), enable_thinking=thinking,
                       add_generation_prompt=gen, bos_token="<bos>")
    assert got == expected
