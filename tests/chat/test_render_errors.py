"""ChatFormatError for what cannot be rendered, and the wire-shape normalisation rules."""

import pytest

from gemmaserve.chat.render import ChatFormatError, ChatRenderer, normalize_messages, normalize_tools

USER = {"role": "user", "content": "Hi"}


@pytest.fixture(scope="module")
def renderer():
    return ChatRenderer.default()


@pytest.mark.parametrize(
    "messages, needle",
    [
        ([], "non-empty"),
        ("hello", "non-empty"),
        ([{"role": "wizard", "content": "x"}], "unsupported role 'wizard'"),
        ([{"content": "x"}], "unsupported role None"),
        (["just text"], "must be an object"),
        ([{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}]}, USER],
         "messages[0]: content parts of type 'image_url' are not supported"),
        ([{"role": "user", "content": [{"type": "text", "text": "see"},
                                       {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]}],
         "'image_url'"),
        ([{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}}]}],
         "'input_audio'"),
        ([{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "http://x/v.mp4"}}]}], "'video_url'"),
        ([{"role": "user", "content": [{"type": "file", "file": {"file_data": "data:application/pdf;base64,AA"}}]}],
         "'file'"),
        ([{"role": "user", "content": [{"type": "hologram"}]}], "unknown content part type 'hologram'"),
        ([{"role": "user", "content": [{"type": "text"}]}], "needs a string 'text'"),
        ([{"role": "user", "content": 42}], "must be a string or a list"),
        ([USER, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{bad json"}}]}],
         "messages[1].tool_calls[0]: function.arguments is not valid JSON"),
        ([USER, {"role": "assistant", "tool_calls": [
            {"id": "1", "type": "function", "function": {"name": "f", "arguments": "[1, 2]"}}]}],
         "must be a JSON object"),
        ([USER, {"role": "assistant", "tool_calls": [{"id": "1", "type": "function", "function": {"arguments": "{}"}}]}],
         "needs function.name"),
        ([USER, {"role": "assistant", "tool_calls": {"id": "1"}}], "tool_calls must be a list"),
        ([USER, {"role": "tool", "tool_call_id": "1", "content": "x"}], "must follow an assistant message with tool_calls"),
        ([USER, {"role": "assistant", "content": "plain"}, {"role": "tool", "tool_call_id": "1", "content": "x"}],
         "must follow an assistant message with tool_calls"),
    ],
)
def test_unrenderable_messages_raise(renderer, messages, needle):
    with pytest.raises(ChatFormatError) as err:
        renderer.render(messages)
    assert needle in str(err.value)
    assert isinstance(err.value, ValueError)  # the API maps ValueErrors of this kind to 400


@pytest.mark.parametrize(
    "tools, needle",
    [
        ("nope", "tools must be a list"),
        ([{"type": "function"}], "tools[0]: a function tool needs function.name"),
        ([{"type": "function", "function": {"name": "f", "parameters": "x"}}], "JSON Schema object"),
    ],
)
def test_bad_tools_raise(renderer, tools, needle):
    with pytest.raises(ChatFormatError) as err:
        renderer.render([USER], tools=tools)
    assert needle in str(err.value)


def test_raise_exception_in_template_is_a_format_error():
    r = ChatRenderer("{{ raise_exception('no system allowed') }}")
    with pytest.raises(ChatFormatError, match="no system allowed"):
        r.render([USER])


def test_template_syntax_error_fails_at_construction():
    with pytest.raises(ValueError, match="does not compile"):
        ChatRenderer("{% if %}")


def test_normalize_messages_shapes():
    out = normalize_messages([
        {"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "name": "x"},
        {"role": "user", "content": None},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}], "reasoning_content": "r1",
         "reasoning": "r2", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": ""}},
                                           {"type": "function", "function": {"name": "g", "arguments": {"k": 1}}}]},
        {"role": "tool", "tool_call_id": "c", "name": "f", "content": [{"type": "text", "text": "x"}, {"type": "text", "text": "y"}]},
        {"role": "assistant", "content": "ok", "reasoning_details": [{"type": "reasoning.summary", "summary": "s"}]},
    ])
    assert out == [
        {"role": "system", "content": "a\nb"},
        {"role": "user", "content": ""},
        {"role": "assistant", "content": "no", "reasoning_content": "r1", "tool_calls": [
            {"type": "function", "function": {"name": "f", "arguments": {}}, "id": "c"},
            {"type": "function", "function": {"name": "g", "arguments": {"k": 1}}}]},
        {"role": "tool", "content": "xy", "tool_call_id": "c", "name": "f"},
        {"role": "assistant", "content": "ok"},
    ]


def test_normalize_tools_keeps_only_what_the_template_reads():
    assert normalize_tools(None) is None
    assert normalize_tools([]) is None
    assert normalize_tools([{"type": "function", "function": {"name": "f", "strict": True, "description": "d",
                                                              "parameters": {"type": "object"}}}]) == [
        {"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}]
