"""Run one EvalScope task described by a JSON file: `python evalscope_task.py TASK.json`.

Executed by the interpreter of EvalScope's own environment (its pins, datasets<5 and huggingface_hub<2, conflict
with swiftlike's), so it imports only the standard library and EvalScope. TASK.json holds TaskConfig's fields, with
`mcq_english: true` for the English single-answer template of general_mcq.
"""
import json
import os
import sys


def main(path: str) -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]  # our modules are not EvalScope's
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
        os.environ.setdefault(key, "1")
    from evalscope import TaskConfig, run_task
    from evalscope.constants import EvalType
    from evalscope.utils.multi_choices import MultipleChoiceTemplate

    task = json.loads(open(path, encoding="utf-8").read())
    if task.pop("mcq_english", False) and "general_mcq" in task["dataset_args"]:
        task["dataset_args"]["general_mcq"]["prompt_template"] = MultipleChoiceTemplate.SINGLE_ANSWER
    run_task(TaskConfig(eval_type=EvalType.OPENAI_API, **task))


if __name__ == "__main__":
    main(sys.argv[1])
