"""Evaluation prompt templates (zero-shot), as in the Qwen2.5-Math evaluation toolkit.

* ``qwen25-math-cot`` (default, the paper's): the chat template with the system prompt
  "Please reason step by step, and put your final answer within \\boxed{}." For Qwen tokenizers
  this is the toolkit's hard-coded ChatML text exactly; a tokenizer without a chat template
  gets that ChatML text too.
* ``plain``: "Question: ...\\nAnswer:" for base models without a chat template (the toolkit's
  ``direct`` layout, zero-shot). Generation also stops at a following "Question:".

Questions come from :mod:`lightreasoner.data` already built the toolkit's way (SVAMP/ASDiv
body + question, MMLU-STEM with "Answer Choices: (A) ..."). Like the toolkit's
``parse_question``, a question whose gold answer is yes/no or true/false gets " (Yes or No)"
or " (True or False)" appended.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from .errors import LightReasonerError

COT_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
DEFAULT_PROMPT = "qwen25-math-cot"


@dataclass(frozen=True)
class PromptTemplate:
    system: str | None  # system prompt for the chat template; None means no chat template
    stop_strings: tuple[str, ...] = ()  # end the completion at these (besides the stop tokens)


PROMPTS: dict[str, PromptTemplate] = {
    "qwen25-math-cot": PromptTemplate(system=COT_SYSTEM_PROMPT),
    "plain": PromptTemplate(system=None, stop_strings=("\nQuestion:", "\n\n\n")),
}


def get_template(name: str) -> PromptTemplate:
    if name not in PROMPTS:
        raise LightReasonerError(f"--prompt: unknown prompt {name!r} (choose from {', '.join(PROMPTS)})")
    return PROMPTS[name]


def toolkit_question(question: str, gold: str | None) -> str:
    """The question as the toolkit shows it: yes/no and true/false questions say so."""
    answer = (gold or "").strip().lower()
    if answer in ("yes", "no"):
        return f"{question.strip()} (Yes or No)"
    if answer in ("true", "false"):
        return f"{question.strip()} (True or False)"
    return question.strip()


def build_prompt(name: str, question: str, tokenizer: PreTrainedTokenizerBase | None = None) -> str:
    """The full prompt text for ``question`` under template ``name``."""
    template = get_template(name)
    if template.system is None:
        return f"Question: {question}\nAnswer:"
    if tokenizer is None or tokenizer.chat_template is None:
        return (f"<|im_start|>system\n{template.system}<|im_end|>\n"
                f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")
    messages = [{"role": "system", "content": template.system}, {"role": "user", "content": question}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

