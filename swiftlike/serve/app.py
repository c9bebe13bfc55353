"""The OpenAI-compatible HTTP app over an inference engine (swiftlike.infer's interface).

    GET  /health                 {"status": "ok"} (no key needed)
    GET  /v1/models              the base under its served name, and one entry per LoRA adapter
    POST /v1/chat/completions    messages rendered with the model's own template; streamed as server-sent events
    POST /v1/completions         raw prompt text (or token ids)

Every refusal is an OpenAI-style error body with a 4xx status. Requests are submitted to the engine as they come,
which batches them; a client that goes away (mid-stream or while waiting for a whole answer) cancels its requests,
freeing their slots.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..data.fetch import public_only
from ..errors import UserError
from ..infer import vision
from ..infer.grammar import json_after_reasoning
from ..infer.params import SchemaError
from ..templates.call_grammar import forced_call_grammar, needs_grammar, prompt_think
from .errors import ApiError, error_body
from .guard import Guard
from .protocol import (ChatRequest, CompletionRequest, GenerationRequest, chat_logprobs, chat_message,
                       completion_logprobs, new_id, openai_tool_calls, parse_chat_request, parse_completion_request,
                       parse_json, usage)
from .stream import ChoiceStream, without_tool_parser

BASE = "base"  # the engine's name for the model without adapters


@dataclass(frozen=True)
class ServeSettings:
    model_name: str                      # the base model is served under this name
    max_model_len: int                   # prompt + completion tokens
    api_key: str | None = None
    max_tokens_limit: int | None = None  # ceiling on max_tokens; None: the context is the only bound
    max_request_bytes: int = 32 << 20    # as `wb deploy --max_request_bytes` (docs/deploy.md)
    private_media_urls: bool = False     # `wb deploy --allow_private_media_urls`


class ClientGone(Exception):
    """The client closed the connection before its answer was complete."""


async def _until_disconnected(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(work, receive):
    """Run `work` (a coroutine) to its result, or raise ClientGone as soon as the client disconnects."""
    task, watch = asyncio.ensure_future(work), asyncio.ensure_future(_until_disconnected(receive))
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        raise ClientGone
    finally:
        for t in (task, watch):
            if not t.done():
                t.cancel()
        await asyncio.gather(task, watch, return_exceptions=True)


class Generation:
    """The engine requests behind one HTTP request (one per prompt): their deltas merged; cancelled together
    unless they finished."""

    def __init__(self, handles: list):
        self.handles = handles
        self.finished = [False] * len(handles)

    async def deltas(self):
        """(prompt index, Delta) as they come, from every request."""
        if len(self.handles) == 1:
            async for delta in self.handles[0]:
                yield 0, delta
            self.finished[0] = True
            return
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(k, handle):
            try:
                async for delta in handle:
                    await queue.put((k, delta))
                self.finished[k] = True
                await queue.put((k, None))
            except BaseException as e:  # noqa: BLE001 - handed to the reader
                await queue.put((k, e))

        tasks = [asyncio.ensure_future(pump(k, h)) for k, h in enumerate(self.handles)]
        try:
            remaining = len(tasks)
            while remaining:
                k, item = await queue.get()
                if item is None:
                    remaining -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield k, item
        finally:
            for t in tasks:
                t.cancel()

    def cancel(self) -> None:
        for handle, done in zip(self.handles, self.finished):
            if not done:
                handle.cancel()


class EventStream(Response):
    """Server-sent events from an async iterator of JSON-able objects, ended by `data: [DONE]`; when the client
    disconnects the iterator is closed at once and `on_close` runs (it cancels the engine requests)."""

    media_type = "text/event-stream"

    def __init__(self, events, on_close):
        self.events, self.on_close = events, on_close
        self.status_code, self.background = 200, None
        self.raw_headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                            (b"x-accel-buffering", b"no")]

    async def __call__(self, scope, receive, send) -> None:
        async def pump():
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for event in self.events:
                data = event if isinstance(event, str) else json.dumps(event, ensure_ascii=False)
                await send({"type": "http.response.body", "body": f"data: {data}\n\n".encode(), "more_body": True})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})

        try:
            await unless_disconnected(pump(), receive)
        except (ClientGone, OSError):
            pass
        finally:
            await self.events.aclose()
            self.on_close()


class Service:
    """Requests -> engine submissions -> OpenAI responses, for one engine."""

    def __init__(self, engine, settings: ServeSettings):
        from ..infer import SamplingParams

        self.engine, self.settings, self.sampling_cls = engine, settings, SamplingParams
        self.tokenizer, self.template = engine.tokenizer, engine.template
        self.tool_format = self.template.spec.options.get("tool_format")
        self.plain = without_tool_parser(self.template)
        # served name -> the engine's (the base is asked for by name: None would mean the engine's default)
        self.adapters = {settings.model_name: BASE, **{n: n for n in engine.model_names if n != BASE}}
        self.created = int(time.time())

    # -- models -------------------------------------------------------------------------------------
    def model_list(self) -> dict:
        return {"object": "list", "data": [self.model_card(name) for name in self.adapters]}

    def model_card(self, name: str) -> dict:
        if name not in self.adapters:
            raise self.unknown_model(name)
        base = self.settings.model_name
        return {"id": name, "object": "model", "created": self.created, "owned_by": "swiftlike",
                "root": name, "parent": None if name == base else base}

    def unknown_model(self, name: str) -> ApiError:
        return ApiError(404, f"The model `{name}` does not exist; served: {', '.join(self.adapters)}",
                        param="model", code="model_not_found")

    def adapter(self, name: str) -> str:
        if name not in self.adapters:
            raise self.unknown_model(name)
        return self.adapters[name]

    # -- prompts and limits -------------------------------------------------------------------------
    def chat_prompt(self, req: ChatRequest) -> tuple[list[int], dict | None]:
        """The prompt ids and the pixels of its images (image_url parts, vision-language models)."""
        try:
            with public_only(not self.settings.private_media_urls):  # (the URLs a client sends)
                ids, sources = vision.encode_prompt(self.template, req.messages, req.tools, files=False,
                                                    **req.template_kwargs)
                return ids, vision.pixels(self.template, sources)
        except UserError as e:  # TemplateError / MessageError / an image: what the official template would refuse
            raise ApiError(400, str(e), param="messages", code="invalid_messages") from None
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ApiError(400, f"the messages could not be rendered with the {self.template.name} template "
                                f"({type(e).__name__}: {e})", param="messages", code="invalid_messages") from None

    def constrain(self, req: ChatRequest, think: str | None) -> None:
        """The grammar of the tool calls tool_choice forces (templates/call_grammar.py), or of the JSON
        response_format asks for after the reasoning the prompt's think block allows (`think`: prompt_think; vLLM
        takes the plain JSON schema where reasoning is only optional)."""
        try:
            if req.force_call:
                req.sampling["grammar"] = forced_call_grammar(self.template, req.tools, req.function,
                                                              req.parallel_tool_calls, think)
            elif needs_grammar(self.template, think) and (think == "open" or self.engine.name != "vllm"):
                req.sampling["grammar"] = json_after_reasoning(self.template, req.sampling.pop("json_schema"), think)
        except UserError as e:  # a template without a tool-call format, a function name no format can hold, a schema
            raise ApiError(400, str(e), param="tool_choice" if req.force_call else "response_format") from None

    def completion_prompt(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        else:
            ids, vocab = prompt, len(self.tokenizer)
            if max(ids) >= vocab:
                raise ApiError(400, f"token id {max(ids)} is outside the vocabulary (size {vocab})", param="prompt")
        if not ids:
            raise ApiError(400, "the prompt is empty", param="prompt")
        return ids

    def max_new_tokens(self, prompt_len: int, req: GenerationRequest, prompt_param: str) -> int:
        ctx, limit, asked = self.settings.max_model_len, self.settings.max_tokens_limit, req.max_tokens
        if prompt_len >= ctx:
            raise ApiError(400, f"This model's maximum context length is {ctx} tokens, and the prompt alone is "
                                f"{prompt_len} tokens; shorten it", param=prompt_param, code="context_length_exceeded")
        if asked is None:
            return min(limit or ctx, ctx - prompt_len)
        if limit and asked > limit:
            raise ApiError(400, f"max_tokens is {asked}, more than this server's limit of {limit}",
                           param="max_tokens", code="max_tokens_exceeded")
        if prompt_len + asked > ctx:
            raise ApiError(400, f"This model's maximum context length is {ctx} tokens. However, you requested "
                                f"{prompt_len + asked} tokens ({prompt_len} in the prompt, {asked} for the "
                                "completion); reduce the prompt or max_tokens", param="max_tokens",
                           code="context_length_exceeded")
        return asked

    def submit(self, prompts: list[list[int]], req: GenerationRequest, prompt_param: str,
               images: list[dict | None] | None = None) -> Generation:
        adapter, handles = self.adapter(req.model), []
        try:  # every limit is checked before anything is submitted
            params = [self.sampling_cls(max_new_tokens=self.max_new_tokens(len(p), req, prompt_param),
                                        **req.sampling).validate() for p in prompts]
            for prompt, sampling, pixels in zip(prompts, params, images or [None] * len(prompts)):
                handles.append(self.engine.submit(prompt, sampling, adapter, images=pixels))
        except UserError as e:   # what the engine refuses (it checks what it knows: context, adapters, schema)
            Generation(handles).cancel()
            constraint = "tools" if getattr(req, "force_call", False) else "response_format"
            raise ApiError(400, str(e), param=constraint if isinstance(e, SchemaError) else None) from None
        except BaseException:    # anything else: the prompts already submitted generate for nobody otherwise
            Generation(handles).cancel()
            raise
        return Generation(handles)

    async def submit_off_loop(self, *args) -> Generation:
        """`submit` in a thread (a first constrained request builds llguidance's tokenizer: seconds the event loop
        must not wait); a caller that goes away meanwhile still has its requests cancelled once they are in."""
        future = asyncio.get_running_loop().run_in_executor(None, self.submit, *args)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(lambda f: f.cancelled() or f.exception() or f.result().cancel())
            raise

    # -- chat ---------------------------------------------------------------------------------------
    async def chat(self, body: dict, receive):
        req = parse_chat_request(body)
        self.adapter(req.model)
        prompt, images = await asyncio.to_thread(self.chat_prompt, req)
        parser = self.template if req.tools else self.plain
        think = prompt_think(self.tokenizer, prompt)
        in_think = think == "open"
        if req.force_call or req.sampling["json_schema"] is not None:
            self.constrain(req, think)
        ident, n = new_id("chatcmpl"), req.sampling["n"]
        gen = await self.submit_off_loop([prompt], req, "messages", [images])
        # from here on, unanswered requests are cancelled
        if req.stream:
            streams = [ChoiceStream(parser, self.tool_format if req.tools else None, in_think) for _ in range(n)]
            return EventStream(self._chat_events(gen, req, ident, len(prompt), streams), gen.cancel)
        texts, ids, logprobs, finish = await self._collect(gen, n, receive)
        choices = []
        for i in range(n):
            message = chat_message(parser.parse_response(texts[i], in_think))
            choices.append({"index": i, "message": message,
                            "logprobs": chat_logprobs(logprobs[i]) if req.sampling["logprobs"] else None,
                            "finish_reason": "tool_calls" if message.get("tool_calls") else finish[i]})
        return {"id": ident, "object": "chat.completion", "created": int(time.time()), "model": req.model,
                "choices": choices, "usage": usage(len(prompt), sum(len(t) for t in ids))}

    async def _chat_events(self, gen: Generation, req: ChatRequest, ident: str, prompt_len: int,
                           streams: list[ChoiceStream]):
        created, produced = int(time.time()), 0

        def chunk(index, delta, finish_reason=None, logprobs=None):
            out = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": req.model,
                   "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]}
            if req.include_usage:
                out["usage"] = None
            return out

        try:
            for i in range(len(streams)):
                yield chunk(i, {"role": "assistant", "content": ""})
            async for _, d in gen.deltas():
                stream, produced = streams[d.index], produced + len(d.token_ids)
                reasoning, content = stream.feed(d.text)
                lp = chat_logprobs(d.logprobs) if req.sampling["logprobs"] and d.logprobs else None
                if reasoning:
                    yield chunk(d.index, {"reasoning_content": reasoning})
                if content or lp:
                    yield chunk(d.index, {"content": content}, logprobs=lp)
                if d.finish_reason is None:
                    continue
                reasoning, content, calls = stream.finish()
                if reasoning:
                    yield chunk(d.index, {"reasoning_content": reasoning})
                if content:
                    yield chunk(d.index, {"content": content})
                if calls:
                    yield chunk(d.index, {"tool_calls": [{"index": j, **c}
                                                         for j, c in enumerate(openai_tool_calls(calls))]})
                yield chunk(d.index, {}, "tool_calls" if calls else d.finish_reason)
            if req.include_usage:
                yield {"id": ident, "object": "chat.completion.chunk", "created": created, "model": req.model,
                       "choices": [], "usage": usage(prompt_len, produced)}
        except Exception as e:  # noqa: BLE001 - the status line is sent: report in the stream
            yield error_body(f"generation failed: {type(e).__name__}: {e}", "server_error")

    # -- completions --------------------------------------------------------------------------------
    async def completions(self, body: dict, receive):
        req = parse_completion_request(body)
        self.adapter(req.model)
        prompts = [await asyncio.to_thread(self.completion_prompt, p) for p in req.prompts]
        gen = self.submit(prompts, req, "prompt")
        ident, n = new_id("cmpl"), req.sampling["n"]
        if req.stream:
            return EventStream(self._completion_events(gen, req, ident, sum(map(len, prompts))), gen.cancel)
        texts, ids, logprobs, finish = await self._collect(gen, n, receive, prompts=len(prompts))
        choices = [{"index": i, "text": texts[i], "finish_reason": finish[i],
                    "logprobs": completion_logprobs(logprobs[i]) if req.sampling["logprobs"] else None}
                   for i in range(len(texts))]
        return {"id": ident, "object": "text_completion", "created": int(time.time()), "model": req.model,
                "choices": choices, "usage": usage(sum(map(len, prompts)), sum(len(t) for t in ids))}

    async def _completion_events(self, gen: Generation, req: CompletionRequest, ident: str, prompt_len: int):
        created, produced, n = int(time.time()), 0, req.sampling["n"]
        offsets: dict[int, int] = {}
        try:
            async for k, d in gen.deltas():
                index, produced = k * n + d.index, produced + len(d.token_ids)
                lp = None
                if req.sampling["logprobs"] and d.logprobs:
                    lp = completion_logprobs(d.logprobs, offsets.get(index, 0))
                offsets[index] = offsets.get(index, 0) + len(d.text)
                out = {"id": ident, "object": "text_completion", "created": created, "model": req.model,
                       "choices": [{"index": index, "text": d.text, "logprobs": lp, "finish_reason": d.finish_reason}]}
                if req.include_usage:
                    out["usage"] = None
                yield out
            if req.include_usage:
                yield {"id": ident, "object": "text_completion", "created": created, "model": req.model,
                       "choices": [], "usage": usage(prompt_len, produced)}
        except Exception as e:  # noqa: BLE001
            yield error_body(f"generation failed: {type(e).__name__}: {e}", "server_error")

    # -- whole answers ------------------------------------------------------------------------------
    async def _collect(self, gen: Generation, n: int, receive, prompts: int = 1):
        """Every choice's text, token ids, log-probs and finish reason; cancelled if the client goes away."""
        total = n * prompts
        texts, ids = [""] * total, [[] for _ in range(total)]
        logprobs, finish = [[] for _ in range(total)], [None] * total

        async def consume():
            async for k, d in gen.deltas():
                i = k * n + d.index
                texts[i] += d.text
                ids[i] += d.token_ids
                logprobs[i] += d.logprobs or []
                finish[i] = d.finish_reason or finish[i]

        try:
            await unless_disconnected(consume(), receive)
        finally:
            gen.cancel()
        return texts, ids, logprobs, finish


def create_app(engine, settings: ServeSettings) -> FastAPI:
    """The FastAPI app serving `engine`; the caller owns the engine (and closes it after the server stops)."""
    service = Service(engine, settings)
    app = FastAPI(title="swiftlike", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Guard, api_key=settings.api_key, max_body=settings.max_request_bytes, open_paths=("/health",))
    app.state.service = service

    @app.exception_handler(ApiError)
    async def api_error(_, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        message = f"no route {request.method} {request.url.path}" if e.status_code in (404, 405) else str(e.detail)
        return JSONResponse(error_body(message), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def internal_error(_, e: Exception):
        return JSONResponse(error_body(f"internal error: {type(e).__name__}: {e}", "server_error"), status_code=500)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return service.model_list()

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        return service.model_card(name)

    async def answer(request: Request, handler):
        body = parse_json(await request.body())
        try:
            result = await handler(body, request.receive)
        except ClientGone:
            return Response(status_code=499)   # nobody reads it
        return result if isinstance(result, Response) else JSONResponse(result)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await answer(request, service.chat)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await answer(request, service.completions)

    return app
