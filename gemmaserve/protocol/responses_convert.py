"""Responses API <-> chat: a ResponsesRequest becomes the internal ChatCompletionRequest, and the chat
answer (whole message or stream deltas) becomes a `response` object or the `response.*` events."""

from __future__ import annotations

import secrets
import string
import time
from typing import Any, Callable

from gemmaserve.protocol.chat import ChatCompletionRequest
from gemmaserve.protocol.common import FieldError, SamplingFields
from gemmaserve.protocol.responses import (
    FunctionCallItem,
    FunctionCallOutputItem,
    InputFile,
    InputImage,
    InputText,
    ItemReference,
    MessageItem,
    OutputText,
    ReasoningItem,
    Refusal,
    ResponsesRequest,
)

_ALNUM = string.ascii_letters + string.digits


def item_id(prefix: str) -> str:
    """Output item ids in OpenAI's shapes: msg_..., rs_..., fc_..."""
    return f"{prefix}_{''.join(secrets.choice(_ALNUM) for _ in range(24))}"


# -- request ------------------------------------------------------------------------------------


def _parts(parts: list[Any], where: str, role: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for j, part in enumerate(parts):
        here = f"{where}[{j}]"
        if isinstance(part, (InputText, OutputText)):
            out.append({"type": "text", "text": part.text})
        elif isinstance(part, Refusal):
            out.append({"type": "text", "text": part.refusal})
        elif isinstance(part, InputImage):
            if role != "user":
                raise FieldError(here, f"input_image is only allowed in user messages, not {role}")
            if part.image_url is None:
                raise FieldError(f"{here}.image_url", "input_image needs an image_url (file_id needs the Files "
                                 "API, which this stateless endpoint has not got)")
            image: dict[str, Any] = {"url": part.image_url}
            if part.detail is not None:
                image["detail"] = part.detail
            out.append({"type": "image_url", "image_url": image})
        elif isinstance(part, InputFile):
            raise FieldError(here, "input_file is not supported on this endpoint")
    return out


def _text(parts: list[dict[str, Any]]) -> str:
    return "".join(p["text"] for p in parts if p["type"] == "text")


def _reasoning_text(item: ReasoningItem) -> str:
    chunks = item.content if item.content else item.summary
    return "".join(c.text for c in chunks)


def _messages(req: ResponsesRequest) -> list[dict[str, Any]]:
    """Input items -> chat messages. function_call items join the assistant turn before them (or
    open one); a reasoning item's text rides on the assistant turn that follows it."""
    messages: list[dict[str, Any]] = []
    if req.instructions:
        messages.append({"role": "system", "content": req.instructions})
    if isinstance(req.input, str):
        messages.append({"role": "user", "content": req.input})
        return messages
    reasoning: str | None = None

    def assistant_turn() -> dict[str, Any]:
        nonlocal reasoning
        last = messages[-1] if messages else None
        if last is None or last["role"] != "assistant" or reasoning is not None:
            last = {"role": "assistant", "content": None}
            messages.append(last)
        if reasoning is not None:
            last["reasoning"], reasoning = reasoning, None
        return last

    for i, item in enumerate(req.input):
        where = f"input[{i}]"
        if isinstance(item, MessageItem):
            parts = ([{"type": "text", "text": item.content}] if isinstance(item.content, str)
                     else _parts(item.content, f"{where}.content", item.role))
            if item.role == "assistant":
                turn = assistant_turn()
                turn["content"] = (turn["content"] or "") + _text(parts)
            elif item.role in ("system", "developer"):
                messages.append({"role": "system", "content": _text(parts)})
            else:
                messages.append({"role": "user", "content": parts})
        elif isinstance(item, FunctionCallItem):
            turn = assistant_turn()
            turn.setdefault("tool_calls", []).append(
                {"id": item.call_id, "type": "function", "function": {"name": item.name, "arguments": item.arguments}})
        elif isinstance(item, FunctionCallOutputItem):
            output = item.output if isinstance(item.output, str) else _text(_parts(item.output, f"{where}.output", "tool"))
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": output})
        elif isinstance(item, ReasoningItem):
            text = _reasoning_text(item)
            reasoning = (reasoning or "") + text if text else reasoning
        elif isinstance(item, ItemReference):
            raise FieldError(where, "item_reference is not supported: this endpoint is stateless; send the item itself")
    if not any(m["role"] in ("user", "assistant", "tool") for m in messages):
        raise FieldError("input", "input must contain at least one user, assistant or tool item")
    return messages


def function_tools(req: ResponsesRequest) -> list[Any]:
    """The function tools the model is offered: flat ones and every namespace's members."""
    out = []
    for t in req.tools or []:
        if t.type == "function":
            out.append(t)
        elif t.type == "namespace":
            out.extend(t.tools or [])
    return out


def namespaces(req: ResponsesRequest) -> dict[str, str]:
    """Function name -> the namespace it came from (its calls name the namespace back)."""
    return {f.name: t.name for t in req.tools or [] if t.type == "namespace" for f in t.tools or [] if f.name}


def _tool_choice(req: ResponsesRequest) -> Any:
    choice = req.tool_choice
    if choice is None or isinstance(choice, str):
        return choice
    return {"type": "function", "function": {"name": choice.name}}


def _response_format(req: ResponsesRequest) -> dict[str, Any] | None:
    fmt = req.text.format if req.text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    schema: dict[str, Any] = {"name": fmt.name, "schema": fmt.json_schema, "strict": fmt.strict}
    if fmt.description is not None:
        schema["description"] = fmt.description
    return {"type": "json_schema", "json_schema": schema}


def to_chat_request(req: ResponsesRequest) -> ChatCompletionRequest:
    """The chat request that generates this response (FieldError names the Responses field at fault)."""
    shared = req.model_dump(include=set(SamplingFields.model_fields), exclude_unset=True)
    if req.max_output_tokens is not None:
        shared["max_tokens"] = req.max_output_tokens
    body: dict[str, Any] = {**shared, "messages": _messages(req)}
    if req.tools is not None:
        body["tools"] = [{"type": "function", "function": t.model_dump(
            include={"name", "description", "parameters", "strict"}, exclude_none=True)} for t in function_tools(req)]
    if req.tool_choice is not None:
        body["tool_choice"] = _tool_choice(req)
    if req.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = req.parallel_tool_calls
    if req.reasoning is not None:
        body["reasoning"] = req.reasoning.model_dump(include={"effort", "summary", "enabled", "max_tokens"},
                                                     exclude_none=True)
    fmt = _response_format(req)
    if fmt is not None:
        body["response_format"] = fmt
    if req.top_logprobs is not None:
        body["logprobs"], body["top_logprobs"] = True, req.top_logprobs
    return ChatCompletionRequest.model_validate(body)


# -- response -----------------------------------------------------------------------------------


def usage(chat_usage: dict[str, Any]) -> dict[str, Any]:
    """Chat usage (spec §3.2) -> Responses usage, cost kept."""
    return {
        "input_tokens": chat_usage["prompt_tokens"],
        "input_tokens_details": {"cached_tokens": chat_usage["prompt_tokens_details"]["cached_tokens"]},
        "output_tokens": chat_usage["completion_tokens"],
        "output_tokens_details": {"reasoning_tokens": chat_usage["completion_tokens_details"]["reasoning_tokens"]},
        "total_tokens": chat_usage["total_tokens"],
        "cost": chat_usage["cost"],
    }


def status_of(finish: str | None) -> tuple[str, dict[str, Any] | None]:
    """Chat finish_reason -> (status, incomplete_details)."""
    if finish == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish == "error":
        return "failed", None
    return "completed", None


class ResponseFrame:
    """The fields every `response` object of one request repeats (echoed request settings)."""

    def __init__(self, req: ResponsesRequest, resp_id: str, model: str, created_at: int | None = None):
        self.id = resp_id
        self.created_at = created_at if created_at is not None else int(time.time())
        fmt = req.text.format.model_dump(by_alias=True, exclude_none=True) if req.text and req.text.format else None
        self.echo = {
            "instructions": req.instructions,
            "max_output_tokens": req.max_output_tokens if req.max_output_tokens is not None else req.max_tokens,
            "metadata": req.metadata or {},
            "parallel_tool_calls": req.parallel_tool_calls is not False,
            "reasoning": req.reasoning.model_dump(include={"effort", "summary"}) if req.reasoning else None,
            "temperature": req.temperature,
            "text": {"format": fmt or {"type": "text"}},
            "tool_choice": (req.tool_choice.model_dump() if req.tool_choice is not None
                            and not isinstance(req.tool_choice, str) else (req.tool_choice or "auto")),
            "tools": [t.model_dump(exclude_none=True) for t in req.tools or []],
            "top_p": req.top_p,
            "user": req.user,
            "store": False,
            "previous_response_id": None,
        }
        self.model = model
        self.namespaces = namespaces(req)

    def response(self, status: str, output: list[dict[str, Any]], usage_obj: dict[str, Any] | None = None,
                 incomplete: dict[str, Any] | None = None, error: dict[str, Any] | None = None) -> dict[str, Any]:
        done = status in ("completed", "incomplete", "failed")
        return {
            "id": self.id, "object": "response", "created_at": self.created_at,
            "completed_at": int(time.time()) if done else None, "model": self.model, "status": status,
            "output": output, "output_text": "".join(
                c["text"] for it in output if it["type"] == "message" for c in it["content"]),
            "incomplete_details": incomplete, "error": error, "usage": usage_obj, **self.echo,
        }


def _message_item(mid: str, text: str, status: str, logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    part: dict[str, Any] = {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}
    return {"id": mid, "type": "message", "role": "assistant", "status": status, "content": [part]}


def _reasoning_item(rid: str, text: str) -> dict[str, Any]:
    return {"id": rid, "type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": text}]}


def _call_item(fid: str, call: dict[str, Any], status: str, spaces: dict[str, str]) -> dict[str, Any]:
    name = call["function"]["name"]
    item = {"id": fid, "type": "function_call", "call_id": call["id"], "name": name,
            "arguments": call["function"]["arguments"], "status": status}
    if name in spaces:
        item["namespace"] = spaces[name]
    return item


def whole_response(frame: ResponseFrame, message: dict[str, Any], finish: str | None, chat_usage: dict[str, Any],
                   logprobs: list[dict[str, Any]] | None = None,
                   new_id: Callable[[str], str] = item_id) -> dict[str, Any]:
    """A chat `message` (content, reasoning, tool_calls) -> the whole `response` object."""
    status, incomplete = status_of(finish)
    item_status = "incomplete" if status == "incomplete" else "completed"
    output: list[dict[str, Any]] = []
    if message.get("reasoning"):
        output.append(_reasoning_item(new_id("rs"), message["reasoning"]))
    if message.get("content") or not message.get("tool_calls"):
        output.append(_message_item(new_id("msg"), message.get("content") or "", item_status, logprobs))
    for call in message.get("tool_calls") or []:
        output.append(_call_item(new_id("fc"), call, item_status, frame.namespaces))
    error = {"code": "server_error", "message": "generation failed"} if status == "failed" else None
    return frame.response(status, output, usage(chat_usage), incomplete, error)


class ResponseEvents:
    """Chat stream deltas -> `response.*` events, each with its sequence_number.

    One output item is open at a time: a delta of another kind (reasoning, text, a new tool call)
    closes it with its .done events and opens the next, so output_index only grows."""

    def __init__(self, frame: ResponseFrame, new_id: Callable[[str], str] = item_id):
        self.frame = frame
        self.new_id = new_id
        self.seq = 0
        self.output: list[dict[str, Any]] = []  # finished items, for the final response
        self.open: dict[str, Any] | None = None  # the item being streamed
        self.open_key: Any = None  # "reasoning" | "message" | ("call", chat index)
        self.calls: dict[int, dict[str, Any]] = {}  # chat tool-call index -> its item

    def _event(self, type_: str, **fields: Any) -> dict[str, Any]:
        ev = {"type": type_, "sequence_number": self.seq, **fields}
        self.seq += 1
        return ev

    def start(self) -> list[dict[str, Any]]:
        r = self.frame.response("in_progress", [])
        return [self._event("response.created", response=r), self._event("response.in_progress", response=r)]

    @property
    def _index(self) -> int:
        return len(self.output)

    def _open(self, key: Any, item: dict[str, Any]) -> list[dict[str, Any]]:
        events = self._close()
        self.open, self.open_key = item, key
        added = {k: ([] if k == "content" else v) for k, v in item.items()}
        events.append(self._event("response.output_item.added", output_index=self._index, item=added))
        if item["type"] in ("message", "reasoning"):
            part = {**item["content"][0]}
            part["text"] = ""
            events.append(self._event("response.content_part.added", item_id=item["id"], output_index=self._index,
                                      content_index=0, part=part))
        return events

    def _close(self, status: str = "completed") -> list[dict[str, Any]]:
        item = self.open
        if item is None:
            return []
        idx, iid, events = self._index, item["id"], []
        if item["type"] == "message":
            part = item["content"][0]
            events.append(self._event("response.output_text.done", item_id=iid, output_index=idx, content_index=0,
                                      text=part["text"], logprobs=[]))
            events.append(self._event("response.content_part.done", item_id=iid, output_index=idx, content_index=0,
                                      part=part))
        elif item["type"] == "reasoning":
            part = item["content"][0]
            events.append(self._event("response.reasoning_text.done", item_id=iid, output_index=idx,
                                      content_index=0, text=part["text"]))
            events.append(self._event("response.content_part.done", item_id=iid, output_index=idx, content_index=0,
                                      part=part))
        else:
            events.append(self._event("response.function_call_arguments.done", item_id=iid, output_index=idx,
                                      name=item["name"], arguments=item["arguments"]))
        if "status" in item:
            item["status"] = status
        events.append(self._event("response.output_item.done", output_index=idx, item=item))
        self.output.append(item)
        self.open, self.open_key = None, None
        return events

    def feed(self, delta: dict[str, Any]) -> list[dict[str, Any]]:
        """One chat `delta` (reasoning, content or a tool_calls fragment) -> events."""
        events: list[dict[str, Any]] = []
        if delta.get("reasoning"):
            if self.open_key != "reasoning":
                events += self._open("reasoning", _reasoning_item(self.new_id("rs"), ""))
            assert self.open is not None
            self.open["content"][0]["text"] += delta["reasoning"]
            events.append(self._event("response.reasoning_text.delta", item_id=self.open["id"],
                                      output_index=self._index, content_index=0, delta=delta["reasoning"]))
        if delta.get("content"):
            if self.open_key != "message":
                events += self._open("message", _message_item(self.new_id("msg"), "", "in_progress"))
            assert self.open is not None
            self.open["content"][0]["text"] += delta["content"]
            events.append(self._event("response.output_text.delta", item_id=self.open["id"],
                                      output_index=self._index, content_index=0, delta=delta["content"], logprobs=[]))
        for frag in delta.get("tool_calls") or []:
            key = ("call", frag["index"])
            if "id" in frag:  # the opening fragment names the call
                call = {"id": frag["id"], "function": {"name": frag["function"]["name"], "arguments": ""}}
                events += self._open(key, _call_item(self.new_id("fc"), call, "in_progress", self.frame.namespaces))
            args = (frag.get("function") or {}).get("arguments") or ""
            if args and self.open_key == key:
                assert self.open is not None
                self.open["arguments"] += args
                events.append(self._event("response.function_call_arguments.delta", item_id=self.open["id"],
                                          output_index=self._index, delta=args))
        return events

    def finish(self, finish: str | None, chat_usage: dict[str, Any] | None,
               error: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Close the open item and end with response.completed / .incomplete / .failed."""
        status, incomplete = status_of(finish)
        if error is not None:
            status = "failed"
        events = self._close("incomplete" if status == "incomplete" else "completed")
        if status == "failed" and error is None:
            error = {"code": "server_error", "message": "generation failed"}
        if not self.output and status == "completed":
            # An empty answer is still one (empty) message, as in the whole response.
            events += self._open("message", _message_item(self.new_id("msg"), "", "in_progress")) + self._close()
        r = self.frame.response(status, self.output, usage(chat_usage) if chat_usage else None, incomplete, error)
        kind = {"completed": "response.completed", "incomplete": "response.incomplete"}.get(status, "response.failed")
        events.append(self._event(kind, response=r))
        return events
