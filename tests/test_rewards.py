"""Built-in reward functions, answer extraction, and how user functions are found and called."""
import asyncio
import math

import pytest

from swiftlike.errors import UserError
from swiftlike.rewards import RewardContext, register_reward, resolve, score
from swiftlike.rewards.answers import extract_answer, same_answer, to_number


@pytest.mark.parametrize("text,answer", [
    ("so the total is \\boxed{42}.", "42"),
    ("\\boxed{\\frac{3}{4}} then \\boxed{7}", "7"),
    ("\\boxed{x^{2}+1}", "x^{2}+1"),
    ("Natalia sold 48/2 = 24 clips.\n#### 72", "72"),
    ("first 3, then 5, finally -12.5", "-12.5"),
    ("no number here", None),
])
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


@pytest.mark.parametrize("a,b,same", [
    ("1,234", "1234", True), ("0.5", "1/2", True), ("\\frac{1}{2}", "0.5", True), ("$12", "12", True),
    ("50%", "0.5", True), ("7.0", "7", True), ("7", "8", False), ("Paris", " paris.", True),
    (None, "3", False), ("72", "Natalia sold 48/2 = 24 clips.\n#### 72", True),
])
def test_same_answer(a, b, same):
    assert same_answer(a, b) is same


def test_to_number_rejects_words():
    assert to_number("twelve") is None and to_number("3/0") is None


def _builtin(name, **ctx):
    return resolve([name], RewardContext(**ctx))[0]


def test_accuracy_reads_the_solution_column():
    r = _builtin("accuracy")
    out = r({"completions": ["<think>3+4 is 7, not 8</think>\nThe answer is 7", "#### 8", "\\boxed{7}"],
             "solution": ["7", "7", "#### 7"], "prompts": [[]] * 3})
    assert out == [1.0, 0.0, 1.0]
    # a row without a solution (a mixed dataset) cannot be judged: it was scored against the string "None"
    assert r({"completions": ["#### None", "#### 7"], "solution": [None, "7"]}) == [None, 1.0]
    cosine = _builtin("cosine", max_completion_length=10)
    assert cosine({"completions": ["7", "7"], "completion_ids": [[0], [0]], "solution": [None, "7"]})[0] is None


def test_accuracy_without_solution_names_the_columns():
    r = _builtin("accuracy")
    with pytest.raises(UserError, match="`solution` column.*question"):
        r({"completions": ["1"], "question": ["q"]})


def test_format():
    r = _builtin("format")
    assert r({"completions": ["<think>hmm</think>\n42", "42", "<think>hmm</think>", " <think>a\nb</think> c"]}) == \
        [1.0, 0.0, 0.0, 1.0]
    custom = _builtin("format", format_pattern=r"^Answer: \d+$")
    assert custom({"completions": ["Answer: 12", "answer: 12"]}) == [1.0, 0.0]
    whole = _builtin("format", format_pattern=r"#### \d+")  # the whole completion (a prefix once sufficed)
    assert whole({"completions": ["#### 5", "#### 5 and then a lot of rambling", "#### 5\n"]}) == [1.0, 0.0, 1.0]


def test_length_soft_overlong_penalty():
    r = _builtin("length", max_completion_length=10, soft_cache_length=4)
    ids = [[0] * n for n in (3, 6, 7, 8, 10)]
    assert r({"completions": [""] * 5, "completion_ids": ids}) == [0.0, 0.0, -0.25, -0.5, -1.0]


def test_cosine_prefers_short_correct_and_long_wrong():
    r = _builtin("cosine", max_completion_length=100)
    ids = [[0] * 0, [0] * 100, [0] * 0, [0] * 100, [0] * 50]
    out = r({"completions": ["7", "7", "8", "8", "7"], "completion_ids": ids, "solution": ["7"] * 5})
    assert out[:4] == pytest.approx([1.0, 0.5, -0.5, 0.0])
    assert out[4] == pytest.approx(0.75)


def test_repetition():
    r = _builtin("repetition")
    out = r({"completions": ["a b c d e", "go go go go go", ""]})
    assert out[0] == 0.0 and out[2] == 0.0
    assert out[1] == pytest.approx(-(1 - 1 / 3))


def test_tool_call_valid(qwen3_tokenizer):
    from swiftlike.templates import get_template

    r = _builtin("tool_call_valid", template=get_template("qwen3", qwen3_tokenizer))
    good = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    other = '<tool_call>\n{"name": "launch", "arguments": {}}\n</tool_call>'
    broken = '<tool_call>\n{"name": "get_weather", "arguments": {city}}\n</tool_call>'
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    assert r({"completions": [good, other, broken, "It is sunny."], "tools": [tools] * 4}) == [1.0, 0.0, 0.0, 0.0]
    assert r({"completions": [other]}) == [1.0]   # no tools column: any well-formed call


def test_tool_call_valid_needs_a_tool_format(qwen3_tokenizer):
    from swiftlike.templates.base import Template, TemplateSpec

    plain = Template(TemplateSpec("plain", lambda *a, **k: [], ()), qwen3_tokenizer)
    with pytest.raises(UserError, match="tool-call format"):
        _builtin("tool_call_valid", template=plain)


# -- user functions ---------------------------------------------------------------------------------
def test_callable_gets_only_the_arguments_it_names():
    seen = {}

    def short(completions, level):
        seen["level"] = level
        return [-len(c) for c in completions]

    r = resolve([short], RewardContext())[0]
    assert r({"completions": ["ab", "abcd"], "level": [1, 2], "prompts": [[], []]}) == [-2, -4]
    assert seen["level"] == [1, 2] and r.name == "short"


def test_kwargs_function_gets_every_column():
    def everything(completions, **kwargs):
        return [float(len(kwargs))] * len(completions)

    r = resolve([everything], RewardContext())[0]
    assert r({"completions": ["x"], "prompts": [[]], "completion_ids": [[1]], "solution": ["1"]}) == [3.0]


def test_async_function():
    async def slow(completions, **_):
        await asyncio.sleep(0)
        return [1.0 for _ in completions]

    assert resolve([slow], RewardContext())[0]({"completions": ["a", "b"]}) == [1.0, 1.0]


def test_async_function_inside_a_running_loop():
    async def slow(completions, **_):
        return [2.0 for _ in completions]

    r = resolve([slow], RewardContext())[0]

    async def caller():
        return r({"completions": ["a"]})

    assert asyncio.run(caller()) == [2.0]


def test_function_from_a_file(tmp_path):
    f = tmp_path / "my_rewards.py"
    f.write_text("def has_yes(completions, **kw):\n    return [1.0 if 'yes' in c else 0.0 for c in completions]\n")
    r = resolve([f"{f}:has_yes"], RewardContext())[0]
    assert r.name == "has_yes" and r({"completions": ["yes", "no"]}) == [1.0, 0.0]
    with pytest.raises(UserError, match="has no function 'nope'.*has_yes"):
        resolve([f"{f}:nope"], RewardContext())
    with pytest.raises(UserError, match="no such file"):
        resolve([f"{tmp_path}/missing.py:f"], RewardContext())
    bad = tmp_path / "bad.py"
    bad.write_text("import not_a_module_anywhere\n")
    with pytest.raises(UserError, match="importing .*bad.py failed: ModuleNotFoundError"):
        resolve([f"{bad}:f"], RewardContext())


def test_registered_name_and_unknown_name():
    @register_reward("always_half")
    def half(completions, **_):
        return [0.5] * len(completions)

    assert resolve(["always_half"], RewardContext())[0]({"completions": ["a"]}) == [0.5]
    with pytest.raises(UserError, match="unknown reward function 'acuracy'.*accuracy"):
        resolve(["acuracy"], RewardContext())


def test_a_failing_function_is_named(tmp_path):
    def broken(completions, solution):
        return [float(s) for s in solution]

    r = resolve([broken], RewardContext())[0]
    with pytest.raises(UserError, match="reward function 'broken' failed: ValueError: could not convert"):
        r({"completions": ["a"], "solution": ["seven"]})


def test_score_table_none_and_errors():
    rs = resolve([lambda completions, **_: [1, None], lambda completions, **_: [0.5, 2]], RewardContext())
    table = score(rs, {"completions": ["a", "b"]}, 2)
    assert table[0] == [1.0, 0.5] and math.isnan(table[1][0]) and table[1][1] == 2.0
    assert [r.name for r in rs] == ["<lambda>_1", "<lambda>_2"]
    with pytest.raises(UserError, match="returned 1 values for 2 completions"):
        score(resolve([lambda completions, **_: [1.0]], RewardContext()), {"completions": ["a", "b"]}, 2)
    with pytest.raises(UserError, match="returned 'high' for completion 0"):
        score(resolve([lambda completions, **_: ["high"]], RewardContext()), {"completions": ["a"]}, 1)
    # an infinite reward made the loss inf, then every weight NaN, and the run exited 0
    with pytest.raises(UserError, match="returned -inf for completion 1; rewards must be finite"):
        score(resolve([lambda completions, **_: [1.0, float("-inf")]], RewardContext()), {"completions": "ab"}, 2)
    assert math.isnan(score(resolve([lambda completions, **_: [float("nan")]], RewardContext()),
                            {"completions": ["a"]}, 1)[0][0])  # NaN: cannot judge, as None
