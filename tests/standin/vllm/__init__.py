"""A stand-in for vLLM 0.32.0 (the release pyproject.toml pins), for tests on machines without a GPU.

Put on ``sys.path`` by the ``standin_vllm`` fixture (tests/conftest.py) for the tests that ask for it.
It checks every argument our code passes against the real release's signatures
(tests/vllm_signatures.py: names read from that release's source, file and line given there) and
its checks (dtype literals, max_lora_rank values, an adapter's rank against max_lora_rank, single-
process data parallelism refused), counts engines and their shutdowns, builds the engine's logits
processors the way vLLM does (by class or "module:Class" name, with ``vllm_config.additional_config``;
through the V2 model runner's interface, vLLM 0.32's default on CUDA, or the V1 runner's when
``VLLM_USE_V2_MODEL_RUNNER=0``),
and generates with a plain transformers model (one full forward per token), so its answers can be
compared with the hf backend's. It does not emulate scheduling, memory, CUDA graphs or parallelism.
A model folder without weights gets a randomly initialised model: the engine's weights are the
engine's business, and a test can thereby prove that our process never loads them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import torch

import vllm_signatures as real

from .v1.sample.logits_processor import load_logitsprocs
from .v1.worker.gpu.sample.logits_processor import LogitsContext, LogitsProcRequestState, load_v2_logitsprocs

__version__ = real.VERSION
ENGINES: list["LLM"] = []  # every engine started since reset(), in order
ON_START: list[Callable[[dict[str, Any]], None]] = []  # called with an engine's arguments as it starts
TORCH_DTYPES = {"auto": torch.float32, "half": torch.float16, "float16": torch.float16, "bfloat16": torch.bfloat16,
                "float": torch.float32, "float32": torch.float32}


def reset() -> None:
    ENGINES.clear()
    ON_START.clear()
    SamplingParams.made.clear()


class SamplingParams:
    """vllm/sampling_params.py: keyword fields only (a msgspec.Struct), checked by _verify_args."""

    made: list["SamplingParams"] = []
    DEFAULTS = dict(n=1, temperature=1.0, top_p=1.0, top_k=0, min_p=0.0, seed=None, stop=None, stop_token_ids=None,
                    max_tokens=16, skip_special_tokens=True, detokenize=True, allowed_token_ids=None, logit_bias=None)

    def __init__(self, **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - real.SAMPLING_PARAMS)
        if unknown:
            raise TypeError(f"Unexpected keyword argument {unknown[0]!r}")
        for name, value in {**self.DEFAULTS, **kwargs}.items():
            setattr(self, name, value)
        if not 0.0 <= self.temperature <= real.MAX_TEMPERATURE:
            raise ValueError(f"temperature must be in [0, {real.MAX_TEMPERATURE}], got {self.temperature}.")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}.")
        if self.temperature == 0 and self.n != 1:
            raise ValueError(f"n must be 1 when using greedy sampling, got {self.n}.")
        if self.stop and not self.detokenize:
            raise ValueError("stop strings are only supported when detokenize is True.")
        if not all(isinstance(token, int) for token in self.stop_token_ids or []):
            raise ValueError(f"stop_token_ids must contain only integers, got {self.stop_token_ids}.")
        SamplingParams.made.append(self)


def TokensPrompt(**fields: Any) -> dict[str, Any]:  # noqa: N802  (a TypedDict in vLLM: calling it makes a dict)
    _check_prompt(fields)
    return dict(fields)


def _check_prompt(prompt: Any) -> None:
    if not isinstance(prompt, dict) or "prompt_token_ids" not in prompt:
        raise TypeError(f"expected a TokensPrompt with prompt_token_ids, got {prompt!r}")
    unknown = sorted(set(prompt) - real.TOKENS_PROMPT)
    if unknown:
        raise TypeError(f"TokensPrompt has no key {unknown[0]!r}")


class _EngineCore:
    def __init__(self, llm: "LLM"):
        self.llm = llm

    def shutdown(self, timeout: float | None = None) -> None:
        self.llm.alive = False
        self.llm.model = self.llm.adapted = None


class LLM:
    def __init__(self, model: str, **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - real.LLM_PARAMETERS - real.ENGINE_ARGS)
        if unknown:
            raise TypeError(f"EngineArgs.__init__() got an unexpected keyword argument {unknown[0]!r}")
        dtype = kwargs.get("dtype", "auto")
        if dtype not in real.MODEL_DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {real.MODEL_DTYPES}")
        if int(kwargs.get("data_parallel_size", 1)) > 1:
            raise ValueError("LLM(data_parallel_size>1) is not supported for single-process usage and may hang.")
        self.max_lora_rank = kwargs.get("max_lora_rank", real.DEFAULT_MAX_LORA_RANK)
        if kwargs.get("enable_lora") and self.max_lora_rank not in real.MAX_LORA_RANKS:
            raise ValueError(f"max_lora_rank {self.max_lora_rank} is not one of {real.MAX_LORA_RANKS}")
        if any(engine.alive for engine in ENGINES):  # vLLM's free-memory check at start would fail
            raise RuntimeError("stand-in vLLM: another engine still holds the GPU")
        self.args = {"model": model, **kwargs}
        for hook in ON_START:
            hook(self.args)
        from transformers import AutoTokenizer

        self.alive, self.calls = True, []
        engine, client, _ = real.SHUTDOWN_PATH  # the attributes the real LLM has on the way to shutdown()
        setattr(self, engine, SimpleNamespace(**{client: _EngineCore(self)}))
        self.tokenizer = AutoTokenizer.from_pretrained(kwargs.get("tokenizer") or model)
        self.model, self.adapted = _engine_model(model, TORCH_DTYPES[dtype], int(kwargs.get("seed", 0))), None
        vllm_config = SimpleNamespace(additional_config=kwargs.get("additional_config") or {},
                                      model_config=SimpleNamespace(model=model))
        # vllm/config/vllm.py:703 use_v2_model_runner: V2 unless the environment says otherwise (or
        # Triton is missing, or a feature V2 lacks is asked for); each runner loads its own interface.
        self.runner = "v1" if os.environ.get("VLLM_USE_V2_MODEL_RUNNER", "").lower() in ("0", "false") else "v2"
        if self.runner == "v2":
            state = LogitsProcRequestState(torch.device("cpu"), 1, self.model.config.vocab_size)
            self.processors = [cls(vllm_config, state) for cls in load_v2_logitsprocs(kwargs.get("logits_processors"))]
        else:
            self.processors = [cls(vllm_config, torch.device("cpu"), False)
                               for cls in load_logitsprocs(kwargs.get("logits_processors"))]
        ENGINES.append(self)

    def generate(self, prompts: Any, sampling_params: Any = None, **kwargs: Any) -> list[SimpleNamespace]:
        unknown = sorted(set(kwargs) - (real.GENERATE_PARAMETERS - {"prompts", "sampling_params"}))
        if unknown:
            raise TypeError(f"LLM.generate() got an unexpected keyword argument {unknown[0]!r}")
        if not self.alive:
            raise RuntimeError("stand-in vLLM: the engine was shut down")
        prompts = list(prompts) if isinstance(prompts, (list, tuple)) else [prompts]
        params = (list(sampling_params) if isinstance(sampling_params, (list, tuple))
                  else [sampling_params or SamplingParams()] * len(prompts))
        if len(params) != len(prompts):
            raise ValueError("The lengths of prompts and sampling_params must be the same.")
        for prompt in prompts:
            _check_prompt(prompt)
        model = self._model_for(kwargs.get("lora_request"))
        self.calls.append(len(prompts))
        return [self._complete(list(prompt["prompt_token_ids"]), param, model)
                for prompt, param in zip(prompts, params)]

    def _model_for(self, lora: Any) -> Any:
        if lora is None:
            if self.adapted is not None:
                raise NotImplementedError("stand-in vLLM: requests without the LoRA after requests with it")
            return self.model
        if not self.args.get("enable_lora"):
            raise ValueError("LoRA is not enabled!")
        if self.adapted is None:
            settings = json.loads((Path(lora.lora_path) / "adapter_config.json").read_text())
            rank = max([settings["r"], *(settings.get("rank_pattern") or {}).values()])
            if rank > self.max_lora_rank:  # vllm/lora/peft_helper.py, validate_legal
                raise ValueError(f"LoRA rank {rank} is greater than max_lora_rank {self.max_lora_rank}.")
            from peft import PeftModel

            self.adapted = PeftModel.from_pretrained(self.model, lora.lora_path).eval()
        return self.adapted

    def _complete(self, prompt: list[int], params: SamplingParams, model: Any) -> SimpleNamespace:
        seed = params.seed if params.seed is not None else int(self.args.get("seed", 0))
        generator = torch.Generator().manual_seed(seed)
        stops, eos = set(params.stop_token_ids or []), self.tokenizer.eos_token_id
        new: list[int] = []
        finish, reason = "length", None
        # V2 asks each processor whether the request needs it, then applies them all to the batch.
        needed = self.runner == "v1" or any([p.add_request(0, params) for p in self.processors])
        context = LogitsContext(expanded_idx_mapping=torch.zeros(1, dtype=torch.long))
        while len(new) < params.max_tokens:
            with torch.no_grad():
                logits = model(torch.tensor([prompt + new])).logits[:, -1].float()
            for processor in self.processors if needed else ():
                logits = processor.apply(logits, context) if self.runner == "v2" else processor.apply(logits)
            if params.allowed_token_ids is not None:
                allowed = torch.full_like(logits, float("-inf"))
                allowed[:, params.allowed_token_ids] = 0
                logits = logits + allowed
            new.append(_pick(logits[0], params, generator))
            if new[-1] == eos or new[-1] in stops:  # vllm/v1/core/sched/utils.py, check_stop
                finish, reason = "stop", (None if new[-1] == eos else new[-1])
                break
            text = self.tokenizer.decode(new, skip_special_tokens=params.skip_special_tokens)
            hit = next((stop for stop in params.stop or [] if stop in text), None)
            if hit is not None:
                finish, reason = "stop", hit
                break
        text = self.tokenizer.decode(new, skip_special_tokens=params.skip_special_tokens)
        if isinstance(reason, str):
            text = text[:text.index(reason)]
        choice = SimpleNamespace(index=0, text=text, token_ids=new, finish_reason=finish, stop_reason=reason)
        return SimpleNamespace(prompt_token_ids=prompt, outputs=[choice], finished=True)


def _pick(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    if params.temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1:
        ordered, order = probs.sort(descending=True)
        outside = ordered.cumsum(-1) - ordered >= params.top_p
        probs = probs.scatter(-1, order, ordered.masked_fill(outside, 0.0))
    return int(torch.multinomial(probs, 1, generator=generator))


def _engine_model(path: str, dtype: torch.dtype, seed: int) -> Any:
    """The engine's own copy of the model: its weights when the folder has them, else random ones."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if any(Path(path).glob("*.safetensors")):
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=dtype).eval()
