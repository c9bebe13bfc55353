"""Named datasets: the project's own demo sets (shipped with the package) and well-known hub datasets.

Use a name wherever a path goes: `--dataset identity#200`, `--dataset alpaca-gpt4#5000`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "datasets"


@dataclass(frozen=True)
class DatasetMeta:
    name: str
    source: str                 # a file under assets/datasets, or hf::... / ms::...
    task: str                   # sft | preference | kto | grpo
    description: str
    columns: dict = field(default_factory=dict)  # source column -> canonical field
    placeholders: bool = False  # {{name}} / {{author}} filled from --model_name / --model_author
    license: str = ""
    metric: str = ""            # wb eval's default metric for the dataset

    @property
    def path(self) -> str:
        return self.source if "::" in self.source else str(ASSETS / self.source)


DATASETS = {d.name: d for d in [
    DatasetMeta("identity", "identity.jsonl", "sft",
                "Self-cognition answers (English and Chinese) naming the model and its author", placeholders=True,
                license="Apache-2.0 (written for swiftlike)"),
    DatasetMeta("arithmetic", "arithmetic.jsonl", "grpo",
                "300 arithmetic prompts with verifiable answers in a `solution` column",
                license="Apache-2.0 (written for swiftlike)"),
    DatasetMeta("preference-demo", "preference_demo.jsonl", "preference",
                "12 factual questions with a correct (chosen) and a wrong or evasive (rejected) answer",
                license="Apache-2.0 (written for swiftlike)"),
    DatasetMeta("kto-demo", "kto_demo.jsonl", "kto",
                "The preference-demo answers as 24 labelled examples (correct: desirable)",
                license="Apache-2.0 (written for swiftlike)"),
    DatasetMeta("gsm8k-test", "gsm8k_test.jsonl", "sft",
                "The first 512 GSM8K test problems with worked answers ending in `#### n` (evaluation, calibration)",
                columns={"question": "query", "answer": "response"}, license="MIT", metric="math"),
    DatasetMeta("mcq-demo", "mcq_demo.jsonl", "sft",
                "60 four-option questions in ten school subjects, MMLU layout (question, choices, answer index)",
                license="Apache-2.0 (written for swiftlike)", metric="choice"),
    DatasetMeta("alpaca-gpt4", "hf::vicgalle/alpaca-gpt4", "sft", "52k GPT-4 answers to the Alpaca instructions",
                license="CC BY-NC 4.0"),
    DatasetMeta("ultrafeedback-binarized", "hf::HuggingFaceH4/ultrafeedback_binarized:default:train_prefs",
                "preference", "UltraFeedback pairs (chosen/rejected message lists)", license="MIT"),
    DatasetMeta("gsm8k", "hf::openai/gsm8k:main", "sft", "Grade-school math word problems with worked answers",
                columns={"question": "query", "answer": "response"}, license="MIT", metric="math"),
    DatasetMeta("gsm8k-grpo", "hf::openai/gsm8k:main", "grpo", "GSM8K questions as prompts, answers as `solution`",
                columns={"question": "prompt", "answer": "solution"}, license="MIT"),
]}


def lookup(name: str) -> DatasetMeta | None:
    return DATASETS.get(name)
