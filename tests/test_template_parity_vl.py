"""Qwen2-VL / Qwen2.5-VL and Qwen3-VL (Instruct, Thinking) render exactly what their official chat templates render,
on conversations with 0, 1 and several images, with and without system, multi-turn, tools (Qwen3-VL) and images in
tool responses; token for token with the real Qwen vocabulary; image tokens are never trained; bad image input is
one error naming the problem. Official templates: tests/data/chat_templates/qwen{2,3}-vl*.jinja (NOTICE)."""
import copy

import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from conftest import DATA
from test_template_parity_qwen3 import WEATHER
from swiftlike.data.formats import RowError, to_canonical
from swiftlike.templates import TemplateError, get_template
from swiftlike.templates.messages import IMAGE

OFFICIAL = {"qwen2_vl": "qwen2-vl.jinja", "qwen3_vl": "qwen3-vl-instruct.jinja",
            "qwen3_vl_thinking": "qwen3-vl-thinking.jinja"}


def img(src="cat.png"):
    return {"type": "image", "image": src}


def url(src="https://example.com/dog.jpg"):
    return {"type": "image_url", "image_url": {"url": src}}


def text(t):
    return {"type": "text", "text": t}


NO_IMAGE = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi! How can I help?"}]
ONE = [{"role": "user", "content": [img(), text("What animal is this?")]},
       {"role": "assistant", "content": "A cat."}]
SEVERAL = [{"role": "system", "content": "You describe images briefly."},
           {"role": "user", "content": [text("Compare "), img("a.png"), text(" and "), url(), text(".")]},
           {"role": "assistant", "content": "The first is red, the second blue."},
           {"role": "user", "content": [img("data:image/png;base64,iVBORw0KGgo="), text("And this one?")]},
           {"role": "assistant", "content": "Green."}]
TEXT_AFTER = [{"role": "user", "content": [text("Describe: "), img("x.png")]},
              {"role": "assistant", "content": "A square."},
              {"role": "user", "content": "Thanks. Anything else?"},
              {"role": "assistant", "content": "No."}]
VIDEOS = [{"role": "user", "content": [text("Watch "), {"type": "video", "video": "clip.mp4"}, text(" then "),
                                       img("a.png"), {"type": "video", "video": ["f0.png", "f1.png"]}]},
          {"role": "assistant", "content": "A square moves."}]
CONVERSATIONS = {"no_image": NO_IMAGE, "one": ONE, "several": SEVERAL, "text_after": TEXT_AFTER, "videos": VIDEOS}
TOOL_IMAGE = [{"role": "user", "content": "Take a photo of the street and tell me the weather."},
              {"role": "assistant", "content": "",
               "tool_calls": [{"type": "function", "function": {"name": "get_weather",
                                                                "arguments": {"city": "Paris"}}}]},
              {"role": "tool", "content": [text("Photo: "), img("street.jpg")]},
              {"role": "assistant", "content": "It is sunny."}]
THINKING = [{"role": "user", "content": [img(), text("Count the cats.")]},
            {"role": "assistant", "content": "Two.", "reasoning_content": "I see two cats."},
            {"role": "user", "content": [img("b.png"), text("And here?")]},
            {"role": "assistant", "content": "One.", "reasoning_content": "Only one cat."}]


def official(template: str, messages: list, tools=None, add_generation_prompt=False) -> str:
    chat_template = (DATA / "chat_templates" / OFFICIAL[template]).read_text()
    rendered, _ = render_jinja_template([copy.deepcopy(messages)], tools=tools, chat_template=chat_template,
                                        add_generation_prompt=add_generation_prompt)
    return rendered[0]


@pytest.fixture(scope="module")
def tok(qwen3_tokenizer):
    return qwen3_tokenizer


@pytest.mark.parametrize("name", CONVERSATIONS)
@pytest.mark.parametrize("template", OFFICIAL)
@pytest.mark.parametrize("prompt", [False, True], ids=["train", "generation_prompt"])
def test_text_and_tokens_equal_the_official_template(tok, template, name, prompt):
    messages = CONVERSATIONS[name] if not prompt else CONVERSATIONS[name][:-1]
    ours = get_template(template, tok)
    expected = official(template, messages, add_generation_prompt=prompt)
    assert ours.render_text(messages, add_generation_prompt=prompt) == expected
    ids = ours.encode_prompt(messages) if prompt else ours.encode({"messages": messages})["input_ids"]
    assert ids == tok(expected, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("template", ["qwen3_vl", "qwen3_vl_thinking"])
def test_qwen3_vl_tools_and_images_in_tool_responses(tok, template):
    ours = get_template(template, tok)
    assert ours.render_text(TOOL_IMAGE, [WEATHER]) == official(template, TOOL_IMAGE, [WEATHER])
    assert ours.render_text(TOOL_IMAGE[:-1], [WEATHER], True) == official(template, TOOL_IMAGE[:-1], [WEATHER], True)


def test_qwen3_vl_thinking_keeps_the_last_reasoning(tok):
    ours = get_template("qwen3_vl_thinking", tok)
    assert ours.render_text(THINKING) == official("qwen3_vl_thinking", THINKING)
    instruct = get_template("qwen3_vl", tok)  # the Instruct template has no think handling: reasoning is not written
    assert instruct.render_text(THINKING) == official("qwen3_vl", THINKING)
    assert "<think>" not in instruct.render_text(THINKING)


def test_qwen3_vl_instruct_drops_a_later_system_message_as_the_official_template(tok):
    messages = [*ONE, {"role": "system", "content": "Be brief."}, {"role": "user", "content": "More?"},
                {"role": "assistant", "content": "No."}]
    assert get_template("qwen3_vl", tok).render_text(messages) == official("qwen3_vl", messages)


@pytest.mark.parametrize("template", OFFICIAL)
def test_only_assistant_text_is_trained_never_image_tokens(tok, template):
    for scope in ("assistant", "all"):
        row = get_template(template, tok, scope).encode({"messages": SEVERAL})
        trained = tok.decode([t for t in row["labels"] if t != -100])
        if scope == "assistant":  # (the Thinking template writes the last turn's empty think block, trained)
            think = "<think>\n\n</think>\n\n" if template == "qwen3_vl_thinking" else ""
            assert trained == f"The first is red, the second blue.<|im_end|>{think}Green.<|im_end|>"
        image_ids = {tok.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>")}
        assert sum(i in image_ids for i in row["input_ids"]) == 9
        # (loss_scope all trains every text token; the expansion in data/vision.py masks the image spans)


def test_the_ms_swift_form_equals_typed_parts(tok):
    """{"messages": [... "<image>What is this?" ...], "images": [...]} renders as image parts do."""
    row = to_canonical({"messages": [{"role": "user", "content": f"{IMAGE}What animal is this?"},
                                     {"role": "assistant", "content": "A cat."}], "images": ["cat.png"]})
    parts = to_canonical({"messages": ONE})
    assert row == parts == {"messages": [{"role": "user", "content": f"{IMAGE}What animal is this?"},
                                         {"role": "assistant", "content": "A cat."}], "images": ["cat.png"]}
    ours = get_template("qwen2_vl", tok)
    assert ours.encode(row) == ours.encode({"messages": ONE})


@pytest.mark.parametrize("row, message", [
    ({"messages": [{"role": "user", "content": f"{IMAGE}{IMAGE}Two?"}, {"role": "assistant", "content": "x"}],
      "images": ["a.png"]}, "2 <image> placeholder(s) in the messages but 1 image(s)"),
    ({"messages": [{"role": "user", "content": "No placeholder"}, {"role": "assistant", "content": "x"}],
      "images": ["a.png"]}, "0 <image> placeholder(s) in the messages but 1 image(s)"),
    ({"messages": [{"role": "user", "content": [img()]}, {"role": "assistant", "content": "x"}],
      "images": ["a.png"]}, "images both in the 'images' column and in content parts"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": [img()]}]},
     "message 1: images belong to user or tool messages, not assistant"),
    ({"messages": [{"role": "user", "content": [{"type": "audio", "audio": "v.wav"}]},
                   {"role": "assistant", "content": "x"}]}, "'audio' content: audio and file parts"),
    ({"messages": [{"role": "user", "content": [{"type": "image"}]}, {"role": "assistant", "content": "x"}]},
     "an image part needs its source"),
])
def test_bad_image_rows_are_one_line_errors(row, message):
    with pytest.raises(RowError, match=message.replace("(", r"\(").replace(")", r"\)")):
        to_canonical(row)


def test_a_text_only_template_refuses_images(tok):
    with pytest.raises(TemplateError, match="template qwen3 is text-only and cannot read images"):
        get_template("qwen3", tok).encode({"messages": ONE})
    with pytest.raises(TemplateError, match="template qwen3 is text-only"):
        get_template("qwen3", tok).encode_prompt(ONE[:1])


def test_qwen2_vl_refuses_tools_that_its_official_template_would_drop(tok):
    with pytest.raises(TemplateError, match="template qwen2_vl has no tool support"):
        get_template("qwen2_vl", tok).render_text(TOOL_IMAGE, [WEATHER])
