"""Unregistered models use their tokenizer's chat template, with prefix-rendered labels."""
import copy

import pytest

from conftest import DATA
from swiftlike.errors import UserError
from swiftlike.templates import TemplateError, get_template

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"},
        {"role": "assistant", "content": "2"}, {"role": "user", "content": "and 2+2?"},
        {"role": "assistant", "content": "4"}]


@pytest.fixture
def tokenizer_with(qwen3_tokenizer):
    def make(template_file):
        tok = copy.copy(qwen3_tokenizer)
        tok.chat_template = (DATA / "chat_templates" / template_file).read_text()
        return tok
    return make


def test_fallback_equals_the_registered_template(tokenizer_with):
    tok = tokenizer_with("qwen2.5-instruct.jinja")
    fallback = get_template("someone/unregistered-qwen2.5-finetune", tok)
    assert fallback.name == "jinja:someone/unregistered-qwen2.5-finetune"
    registered = get_template("qwen2_5", tok)
    for messages in (CHAT, CHAT[1:3]):
        assert fallback.encode({"messages": messages}) == registered.encode({"messages": messages})
    assert fallback.encode_prompt(CHAT[:2]) == registered.encode_prompt(CHAT[:2])


@pytest.mark.parametrize("template_file, eos, registered", [("phi-3.5-mini-instruct.jinja", "<|endoftext|>", "phi3_5"),
                                                             ("internlm2-chat-7b.jinja", "</s>", "internlm2")])
def test_fallback_does_not_train_the_eos_a_template_appends_where_a_chat_ends(tokenizer_with, template_file, eos,
                                                                                registered):
    """Phi-3.5 and InternLM2 append eos after a finished chat: the fallback trained "\n" and it after the turn's
    own end marker, as the registered templates do not."""
    tok = tokenizer_with(template_file)
    tok.eos_token = eos
    chat = CHAT[1:3]
    fallback, reference = get_template("someone/unregistered", tok), get_template(registered, tok)
    trained = [text for text, on in fallback.render(chat) if on]
    assert trained == [text for text, on in reference.render(chat) if on] and not trained[0].endswith(eos)
    assert fallback.render_text(chat).endswith(eos)  # (written, untrained)


def test_fallback_refuses_a_template_that_rewrites_earlier_text(tokenizer_with):
    tok = tokenizer_with("mistral-nemo-instruct-2407.jinja")
    tok.bos_token, tok.eos_token = "<|endoftext|>", "<|im_end|>"
    template = get_template("someone/unregistered-mistral", tok)
    with pytest.raises(TemplateError, match=r"not prefix-stable at message 2 \(assistant\)"):
        template.encode({"messages": CHAT})
    assert template.encode({"messages": CHAT[1:3]})["input_ids"]  # no system message: stable


def test_no_chat_template_is_a_clear_error(qwen3_tokenizer):
    tok = copy.copy(qwen3_tokenizer)
    tok.chat_template = None
    with pytest.raises(UserError, match="its tokenizer has no chat template"):
        get_template("someone/base-model", tok)
