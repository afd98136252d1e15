"""Generation backends: the vLLM contract on a stand-in vLLM that checks the pinned release's signatures
(tests/standin), the hf backend against it, and evaluation over several worker processes."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lightreasoner import backends, eval_workers
from lightreasoner.backends import PADDING_MASK, VOCAB_SIZE_KEY, HFBackend, Request, Sampling, VLLMBackend
from lightreasoner.errors import LightReasonerError
from lightreasoner.evaluation import EvalConfig, evaluate
from lightreasoner.models import load_model, load_tokenizer, real_vocab_size, stop_token_ids
from tiny import make_model, make_tokenizer

import vllm_signatures as real

QUESTIONS = [("Natalia sold 48 clips in April and half as many in May. How many clips?", "72"),
             ("Weng earns $12 an hour. How much for 50 minutes?", "10"),
             ("Let x be the number of apples. 3 + 4 = ?", "7"),
             ("How many clips did Natalia sell in April?", "48"),
             ("What is 10 - 9?", "1")]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny model whose padding rows would win every argmax if they were not masked."""
    folder = tmp_path_factory.mktemp("backends") / "model"
    tokenizer, model = make_tokenizer(), make_model(3, layers=2)
    vocab = len(tokenizer)
    with torch.no_grad():
        model.lm_head.weight[vocab:] = 50 * model.lm_head.weight[:vocab].abs().max()
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture()
def data_dir(tmp_path) -> Path:
    folder = tmp_path / "data"
    (folder / "gsm8k").mkdir(parents=True)
    (folder / "gsm8k" / "test.jsonl").write_text("".join(
        json.dumps({"question": q, "answer": f"Reasoning.\n#### {a}"}) + "\n" for q, a in QUESTIONS))
    (folder / "svamp").mkdir()
    (folder / "svamp" / "test.jsonl").write_text("".join(
        json.dumps({"Body": f"There are {n} apples", "Question": "How many apples are there?", "Answer": n}) + "\n"
        for n in (3, 5, 8)))
    return folder


def settings(model_dir: Path, data_dir: Path, **overrides) -> EvalConfig:
    values = dict(model=str(model_dir), benchmarks=["gsm8k", "svamp"], data_dir=str(data_dir), max_new_tokens=10,
                  batch_size=2, device="cpu", dtype="float32", backend="hf")
    values.update(overrides)
    return EvalConfig(**values)


def answers(folder: Path, benchmark: str) -> dict[str, tuple]:
    records = [json.loads(line) for line in (folder / f"{benchmark}.jsonl").read_text().splitlines()]
    return {r["id"]: (r["completion"], r["tokens"], r["finish"], r["pred"], r["correct"]) for r in records}


def save_adapter(model_dir: Path, folder: Path, r: int) -> Path:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(r)
    lora = LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(load_model(model_dir), lora)
    peft_model.save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------------ the vLLM contract


def test_vllm_answers_equal_hf_answers_from_one_engine_per_evaluation(model_dir, data_dir, tmp_path, standin_vllm):
    evaluate(settings(model_dir, data_dir), tmp_path / "hf", progress=False)
    evaluate(settings(model_dir, data_dir, backend="vllm", device="auto"), tmp_path / "vllm", progress=False)
    for benchmark in ("gsm8k", "svamp"):
        assert answers(tmp_path / "vllm", benchmark) == answers(tmp_path / "hf", benchmark)
    assert json.loads((tmp_path / "vllm" / "run.json").read_text())["backend"] == "vllm"

    [engine] = standin_vllm.ENGINES  # one engine for both benchmarks, shut down at the end
    assert not engine.alive
    assert engine.calls == [2, 2, 1, 2, 1]  # --batch-size prompts per engine call, per benchmark
    args = engine.args
    assert args["dtype"] == "float32" and args["generation_config"] == "vllm" and "enable_lora" not in args
    # The padding rows (which the tiny model prefers) are masked once, by the engine's logits processor.
    tokenizer = load_tokenizer(model_dir)
    assert args["logits_processors"] == [PADDING_MASK]
    assert args["additional_config"] == {VOCAB_SIZE_KEY: real_vocab_size(tokenizer, load_model(model_dir))}
    made = standin_vllm.SamplingParams.made
    assert len(made) == 8 and all(p.allowed_token_ids is None and p.temperature == 0 for p in made)
    assert all(p.stop_token_ids == stop_token_ids(tokenizer, load_model(model_dir)) for p in made)


def test_vllm_loads_no_hf_weights(model_dir, data_dir, tmp_path, standin_vllm, monkeypatch):
    """A model folder without weights: vLLM's engine (here a stand-in) loads the model; we only read
    its tokenizer and config files."""
    bare = tmp_path / "bare"
    bare.mkdir()
    for path in model_dir.iterdir():
        if path.suffix != ".safetensors":
            (bare / path.name).write_bytes(path.read_bytes())
    monkeypatch.setattr("lightreasoner.models.load_model", lambda *a, **k: pytest.fail("HF weights were loaded"))
    summary = evaluate(settings(bare, data_dir, backend="vllm", device="cuda"), tmp_path / "out", progress=False)
    assert summary["benchmarks"]["gsm8k"]["n"] == 5 and summary["benchmarks"]["svamp"]["n"] == 3
    assert len(standin_vllm.ENGINES) == 1 and not standin_vllm.ENGINES[0].alive


@pytest.mark.parametrize("ranks, limit", [((4, {}), 8), ((16, {}), 16), ((8, {"q_proj": 40}), 64),
                                          ((513, {}), None)])
def test_lora_rank_limit_is_the_smallest_vllm_accepts_above_the_adapters(tmp_path, standin_vllm, ranks, limit):
    r, pattern = ranks
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": r, "rank_pattern": pattern}))
    if limit is None:
        with pytest.raises(LightReasonerError, match="LoRA rank 513 is larger than vLLM supports"):
            backends.lora_rank_limit(tmp_path)
    else:
        assert backends.lora_rank_limit(tmp_path) == limit and limit in real.MAX_LORA_RANKS


def test_an_adapter_above_vllms_default_rank_gives_the_hf_answers(model_dir, data_dir, tmp_path, standin_vllm):
    adapter = str(save_adapter(model_dir, tmp_path / "adapter", 32))  # vLLM's default max_lora_rank is 16
    evaluate(settings(model_dir, data_dir, benchmarks=["gsm8k"], adapter=adapter), tmp_path / "hf", progress=False)
    evaluate(settings(model_dir, data_dir, benchmarks=["gsm8k"], adapter=adapter, backend="vllm", device="auto"),
             tmp_path / "vllm", progress=False)
    [engine] = standin_vllm.ENGINES
    assert engine.args["enable_lora"] and engine.args["max_lora_rank"] == 32
    assert answers(tmp_path / "vllm", "gsm8k") == answers(tmp_path / "hf", "gsm8k")  # the adapter was applied


def test_the_standin_refuses_what_the_real_release_refuses(model_dir, tmp_path, standin_vllm):
    """The checks the backend's arguments pass are real: without max_lora_rank an r=32 adapter fails
    as in vLLM, and so do our old dtype aliases and unknown arguments."""
    adapter = save_adapter(model_dir, tmp_path / "adapter", 32)
    engine = standin_vllm.LLM(model=str(model_dir), enable_lora=True)
    from vllm.lora.request import LoRARequest

    lora = LoRARequest("adapter", 1, str(adapter))
    with pytest.raises(ValueError, match="LoRA rank 32 is greater than max_lora_rank 16"):
        engine.generate([standin_vllm.TokensPrompt(prompt_token_ids=[5, 6])], standin_vllm.SamplingParams(),
                        lora_request=lora)
    engine.llm_engine.engine_core.shutdown()
    for wrong in ({"dtype": "bf16"}, {"max_lora_rank": 17, "enable_lora": True}, {"device": "cuda:1"}):
        with pytest.raises((TypeError, ValueError)):
            standin_vllm.LLM(model=str(model_dir), **wrong)
    with pytest.raises(TypeError, match="allowed_tokens"):
        standin_vllm.SamplingParams(allowed_tokens=[1])
    assert set(real.SAMPLING_PARAMS) >= {"seed", "stop_token_ids", "max_tokens", "detokenize", "allowed_token_ids"}


@pytest.mark.parametrize("v2", ["1", "0"])
def test_the_padding_mask_works_under_both_model_runners(model_dir, standin_vllm, monkeypatch, v2):
    """vLLM 0.32 builds logits processors through its V2 model runner (its default on CUDA) or its
    V1 runner, each accepting only its own interface: the mask implements both."""
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", v2)
    tokenizer, model = load_tokenizer(model_dir), load_model(model_dir)
    vocab = real_vocab_size(tokenizer, model)
    prompt = tokenizer("How many clips did Natalia sell?", add_special_tokens=False)["input_ids"]
    assert int(model(torch.tensor([prompt])).logits[0, -1].argmax()) >= vocab  # unmasked, a padding row wins
    requests = [Request(prompt, 6), Request(prompt[:4], 6)]
    with VLLMBackend(str(model_dir), tokenizer, dtype="float32", chunk_size=8) as engine:
        masked = [o.token_ids for chunk in engine.generate(requests, Sampling()) for o in chunk]
    assert standin_vllm.ENGINES[0].runner == ("v2" if v2 == "1" else "v1")
    with HFBackend(model, tokenizer, slots=2) as hf:
        expected = {o.index: o.token_ids for chunk in hf.generate(requests, Sampling()) for o in chunk}
    assert masked == [expected[0], expected[1]] and all(t < vocab for ids in masked for t in ids)


@pytest.mark.parametrize("ours, theirs", [("bf16", "bfloat16"), ("bfloat16", "bfloat16"), ("fp16", "float16"),
                                          ("float16", "float16"), ("fp32", "float32"), ("float32", "float32")])
def test_dtype_names_map_to_vllm_literals(ours, theirs):
    assert backends.vllm_dtype(ours) == theirs and theirs in real.MODEL_DTYPES


def test_auto_dtype_is_what_the_hf_backend_would_use_on_that_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert backends.vllm_dtype("auto") == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert backends.vllm_dtype("auto") == "float16"


@pytest.mark.parametrize("flags, capability, native", [
    ("fpu avx2 avx512f avx512_bf16", "AVX512", True), ("fpu avx2 amx_tile amx_bf16", "AVX512", True),
    ("fpu avx2 avx512f", "AVX512", False),  # AVX-512 without its bf16 instructions
    ("fpu avx2 avx512f avx512_bf16", "AVX2", False),  # ATEN_CPU_CAPABILITY=avx2: torch's kernels emulate bf16
    ("fp asimd bf16", "DEFAULT", False)])
def test_auto_dtype_on_a_cpu_is_bf16_only_where_torch_computes_it_natively(flags, capability, native):
    from lightreasoner.models import cpu_has_native_bf16

    assert cpu_has_native_bf16(flags, capability) is native


def test_a_capped_torch_capability_makes_auto_float32():
    import os
    import subprocess
    import sys

    code = ("import torch; from lightreasoner.models import resolve_dtype; "
            "print(torch.backends.cpu.get_cpu_capability(), resolve_dtype('auto', torch.device('cpu')))")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    capability, dtype = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                       check=True).stdout.split()
    assert capability != "AVX512" and dtype == "torch.float32"


def test_devices_vllm_cannot_honour_are_refused_before_anything_loads(model_dir, data_dir, tmp_path, standin_vllm):
    with pytest.raises(LightReasonerError, match="CUDA_VISIBLE_DEVICES=1 and --device cuda"):
        evaluate(settings(model_dir, data_dir, backend="vllm", device="cuda:1"), tmp_path / "a", progress=False)
    with pytest.raises(LightReasonerError, match="--device cpu: the vllm backend runs on CUDA GPUs; use --backend hf"):
        evaluate(settings(model_dir, data_dir, backend="vllm", device="cpu"), tmp_path / "b", progress=False)
    assert standin_vllm.ENGINES == []


def test_a_crash_loses_at_most_one_engine_call_and_the_engine_is_shut_down(model_dir, data_dir, tmp_path,
                                                                           standin_vllm, monkeypatch):
    config = settings(model_dir, data_dir, benchmarks=["gsm8k"], backend="vllm", device="auto")
    evaluate(config, tmp_path / "whole", progress=False)
    real_generate = standin_vllm.LLM.generate

    def killed_in_the_third_call(self, *args, **kwargs):
        if len(self.calls) == 2:
            raise KeyboardInterrupt
        return real_generate(self, *args, **kwargs)

    monkeypatch.setattr(standin_vllm.LLM, "generate", killed_in_the_third_call)
    with pytest.raises(KeyboardInterrupt):
        evaluate(config, tmp_path / "resumed", progress=False)
    assert len(answers(tmp_path / "resumed", "gsm8k")) == 4  # two calls of two answers were written
    assert not standin_vllm.ENGINES[-1].alive  # shut down on the way out
    monkeypatch.setattr(standin_vllm.LLM, "generate", real_generate)
    evaluate(config, tmp_path / "resumed", progress=False)
    assert standin_vllm.ENGINES[-1].calls == [1]
    assert answers(tmp_path / "resumed", "gsm8k") == answers(tmp_path / "whole", "gsm8k")


def test_auto_backend_is_vllm_only_on_cuda_with_vllm_installed(standin_vllm, monkeypatch):
    assert backends.resolve_backend("auto", "auto") == "hf"  # no GPU here
    monkeypatch.setattr("lightreasoner.models.resolve_device", lambda device: torch.device("cuda"))
    assert backends.resolve_backend("auto", "auto") == "vllm"
    assert backends.resolve_backend("auto", "cuda:1") == "hf"  # vLLM takes no device index
    assert backends.resolve_backend("hf", "cuda") == "hf"


def test_auto_backend_on_a_cpu_is_llamacpp_only_for_gguf_models_with_the_extra(tmp_path, monkeypatch, capsys):
    import importlib.util

    real_find_spec, installed = importlib.util.find_spec, {"llama_cpp": True}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: (object() if installed[name] else None)
                        if name in installed else real_find_spec(name, *args))
    problems: dict[str, str] = {}  # what the child-process probe would say of each GGUF file
    monkeypatch.setattr("lightreasoner.gguf_export.model_gguf", lambda spec, progress=True: Path(str(spec)))
    monkeypatch.setattr(backends, "decoding_problem", problems.get)
    assert backends.resolve_backend("auto", "cpu", llamacpp_model="coder-1.5b") == "llamacpp"
    assert backends.resolve_backend("auto", "auto", llamacpp_model=str(tmp_path / "model.gguf")) == "llamacpp"
    assert backends.resolve_backend("auto", "cpu", llamacpp_model=str(tmp_path)) == "hf"  # a folder of safetensors
    assert backends.resolve_backend("auto", "cpu") == "hf"  # a caller that does not ask (SFT sampling)
    assert backends.resolve_backend("hf", "cpu", llamacpp_model="coder-1.5b") == "hf"
    installed["llama_cpp"] = False
    assert backends.resolve_backend("auto", "cpu", llamacpp_model="coder-1.5b") == "hf"
    installed["llama_cpp"] = True
    problems["coder-1.5b"] = "crashed (SIGSEGV) decoding one token"  # a build this CPU cannot run
    assert backends.resolve_backend("auto", "cpu", llamacpp_model="coder-1.5b") == "hf"
    assert "hf backend: llama.cpp crashed (SIGSEGV) decoding one token on this CPU" in capsys.readouterr().err
    assert backends.resolve_backend("llamacpp", "cpu", llamacpp_model="coder-1.5b") == "llamacpp"  # asked for
    monkeypatch.setattr("lightreasoner.models.resolve_device", lambda device: torch.device("cuda"))
    assert backends.resolve_backend("auto", "auto", llamacpp_model="coder-1.5b") == "hf"  # llama.cpp: CPU only here


def test_per_request_budgets_and_seeds_with_both_backends(model_dir, standin_vllm):
    """The interface later work builds on: each request its own budget (and seed), ids out."""
    tokenizer = load_tokenizer(model_dir)
    prompt = tokenizer("How many clips?", add_special_tokens=False)["input_ids"]
    requests = [Request(prompt, 3, seed=1), Request(prompt, 7, seed=2), Request(prompt + [5], 5, seed=3)]
    greedy, sampled = Sampling(), Sampling(temperature=1.0)
    with HFBackend(load_model(model_dir), tokenizer, slots=2) as hf, \
            VLLMBackend(str(model_dir), tokenizer, dtype="float32", chunk_size=2) as engine:
        for sampling in (greedy, sampled):
            outputs = {}
            for backend in (hf, engine):
                outputs[backend] = {o.index: o for chunk in backend.generate(requests, sampling) for o in chunk}
                assert [len(outputs[backend][i].token_ids) <= r.max_new_tokens for i, r in enumerate(requests)] == \
                    [True] * 3
            assert outputs[hf].keys() == outputs[engine].keys() == {0, 1, 2}
            if sampling.greedy:  # the same model, float32: the same tokens
                assert {i: o.token_ids for i, o in outputs[hf].items()} == \
                    {i: o.token_ids for i, o in outputs[engine].items()}
    assert [p.seed for p in standin_vllm.SamplingParams.made] == [None] * 3 + [1, 2, 3]
    assert [p.max_tokens for p in standin_vllm.SamplingParams.made] == [3, 7, 5] * 2


# ------------------------------------------------------------------------------ SFT sampling


def test_sft_sampling_through_vllm_is_seeded_per_request_and_resumes_identically(model_dir, tmp_path, standin_vllm,
                                                                                  monkeypatch):
    from lightreasoner import sft as sft_module
    from lightreasoner.decoding import derived_seed
    from lightreasoner.sft import SFTConfig, read_sft_samples, sample_solutions, sft_train_config

    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "question": q, "answer": a}) + "\n"
                            for i, (q, a) in enumerate(QUESTIONS[:3])))
    config = SFTConfig(model=str(model_dir), data=str(data), samples_per_question=2, max_new_tokens=6, batch_size=4,
                       temperature=0.9, top_p=0.95, device="auto", backend="vllm",
                       train=sft_train_config({"dtype": "float32", "seed": 3}))
    sample_solutions(config, tmp_path / "whole.jsonl", progress=False)
    [engine] = standin_vllm.ENGINES
    assert not engine.alive and engine.calls == [4, 2]  # 3 questions x 2 samples, 4 sequences per engine call
    made = standin_vllm.SamplingParams.made
    assert [p.seed for p in made] == [derived_seed(derived_seed("lightreasoner-sft", 3, f"q{i}"), k)
                                      for i in range(3) for k in range(2)]
    assert {(p.temperature, p.top_p, p.n, p.allowed_token_ids) for p in made} == {(0.9, 0.95, 1, None)}
    header, records = read_sft_samples(tmp_path / "whole.jsonl")
    assert header["settings"]["backend"] == "vllm" and len(records) == 3
    assert len({tuple(s["completion_ids"]) for _, r in records for s in r["samples"]}) > 1  # sampled, not greedy

    real_grade, graded = sft_module.grade_samples, []

    def crash_on_second_question(*args, **kwargs):
        graded.append(1)
        if len(graded) == 2:
            raise KeyboardInterrupt
        return real_grade(*args, **kwargs)

    monkeypatch.setattr(sft_module, "grade_samples", crash_on_second_question)
    with pytest.raises(KeyboardInterrupt):
        sample_solutions(config, tmp_path / "resumed.jsonl", progress=False)
    assert not standin_vllm.ENGINES[-1].alive
    monkeypatch.setattr(sft_module, "grade_samples", real_grade)
    sample_solutions(config, tmp_path / "resumed.jsonl", progress=False)
    assert standin_vllm.ENGINES[-1].calls == [4]  # only the two questions left
    assert (tmp_path / "resumed.jsonl").read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    with pytest.raises(LightReasonerError, match="made with backend='vllm', now 'hf'"):
        sample_solutions(replace(config, backend="hf"), tmp_path / "resumed.jsonl", progress=False)


def test_run_frees_its_models_before_each_vllm_engine_starts(tmp_path, standin_vllm, monkeypatch):
    """``lightreasoner run`` samples and trains in the process that then evaluates: by the time an
    engine starts, no model of ours may be alive and torch's cached memory must have been released."""
    import gc

    from transformers import PreTrainedModel

    from lightreasoner.pipeline import RunConfig, run_pipeline
    from tiny import save_pair

    pair = save_pair(tmp_path / "pair")
    released: list[int] = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: released.append(1))
    at_start: list[tuple[int, int]] = []

    def count_our_models(args):
        gc.collect()
        ours = [o for o in gc.get_objects() if isinstance(o, PreTrainedModel)
                and str(getattr(o, "name_or_path", "")).startswith(str(tmp_path))]
        at_start.append((len(ours), len(released)))

    standin_vllm.ON_START.append(count_our_models)
    config = RunConfig(expert=str(pair[0]), amateur=str(pair[1]), questions=4, max_new_tokens=8, max_steps=2,
                       eval_limit=2, eval_max_new_tokens=6, batch_size=4, dtype="float32", device="auto")
    run_pipeline(config, tmp_path / "run", overrides={"eval": {"backend": "vllm"}}, progress=False, say=lambda _: None)
    assert len(at_start) == 2  # eval_before and eval_after, one engine each
    assert [alive for alive, _ in at_start] == [0, 0]
    assert 0 < at_start[0][1] < at_start[1][1]  # memory released before each start
    assert not any(engine.alive for engine in standin_vllm.ENGINES)
    after = json.loads((tmp_path / "run" / "eval_after" / "run.json").read_text())
    assert after["backend"] == "vllm" and after["adapter"] == str(tmp_path / "run" / "adapter")


# ------------------------------------------------------------------------------ one process per GPU


def test_workers_answer_shards_and_merge_into_what_one_process_writes(model_dir, data_dir, tmp_path):
    evaluate(settings(model_dir, data_dir), tmp_path / "one", progress=False)
    summary = evaluate(settings(model_dir, data_dir, workers=2), tmp_path / "two", progress=False)
    for benchmark in ("gsm8k", "svamp"):
        assert answers(tmp_path / "two", benchmark) == answers(tmp_path / "one", benchmark)
        shards = [answers(tmp_path / "two" / "workers" / f"{k}-of-2", benchmark) for k in range(2)]
        assert shards[0].keys().isdisjoint(shards[1].keys()) and len(shards[0]) >= len(shards[1]) >= 1
    alone = json.loads((tmp_path / "one" / "summary.json").read_text())["benchmarks"]
    for benchmark, result in summary["benchmarks"].items():
        assert {k: v for k, v in result.items() if k != "seconds"} == \
            {k: v for k, v in alone[benchmark].items() if k != "seconds"}

    # A larger budget: each worker continues the cut-off answers of its own folder, and the merge takes them.
    evaluate(settings(model_dir, data_dir, max_new_tokens=14), tmp_path / "one", progress=False)
    evaluate(settings(model_dir, data_dir, workers=2, max_new_tokens=14), tmp_path / "two", progress=False)
    for benchmark in ("gsm8k", "svamp"):
        grown = answers(tmp_path / "two", benchmark)
        assert grown == answers(tmp_path / "one", benchmark) and any(a[1] == 14 for a in grown.values())
        assert all(a[1] == 14 for a in grown.values() if a[2] == "length")
        assert len((tmp_path / "two" / f"{benchmark}.jsonl").read_text().splitlines()) == len(grown)
    for folder in (tmp_path / "two", *(tmp_path / "two" / "workers").iterdir()):
        assert json.loads((folder / "run.json").read_text())["max_new_tokens"] == 14


def test_each_worker_sees_one_gpu(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert eval_workers.worker_gpus(4) == ["0", "1", "2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert eval_workers.worker_gpus(2) == ["4", "6"]
    with pytest.raises(LightReasonerError, match="--workers 3: only 2 GPUs are visible"):
        eval_workers.worker_gpus(3)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert eval_workers.worker_gpus(2) == [None, None]  # no GPU: the workers share the CPU


def test_a_child_that_crashes_or_fails_is_described_not_followed():
    import sys

    from lightreasoner.backends import child_problem

    assert child_problem([sys.executable, "-c", "pass"]) is None
    crash = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    assert child_problem([sys.executable, "-c", crash]) == "crashed (SIGSEGV) decoding one token"
    assert child_problem([sys.executable, "-c", "raise SystemExit('no model here')"]) == \
        "failed decoding one token: no model here"


def test_a_worker_allows_remote_code_on_its_command_line_not_in_its_settings_file(tmp_path):
    from lightreasoner.cli import build_parser
    from lightreasoner.commands._settings import config_from_args
    from lightreasoner.config import config_to_dict

    for trust in (True, False):
        settings = config_to_dict(EvalConfig(model="m", workers=2, trust_remote_code=trust))
        worker_settings, command = eval_workers.worker_command(settings, tmp_path, 1)
        (tmp_path / eval_workers.WORKER_CONFIG_FILE).write_text(json.dumps(worker_settings))
        config = config_from_args(EvalConfig, build_parser().parse_args(command[3:]), section="eval")
        assert (config.trust_remote_code, config.shard, config.workers, config.model) == (trust, "1/2", 1, "m")


def test_shard_settings_are_checked():
    assert EvalConfig(model="m", shard="1/3").shard_of(list(range(7))) == [1, 4]
    for wrong in ({"shard": "3/3"}, {"shard": "x"}, {"shard": "0/2", "workers": 2}, {"workers": 0}):
        with pytest.raises(ValueError, match="^(shard|workers): "):
            EvalConfig(model="m", **wrong)


# ------------------------------------------------------------------------------ the GPU smoke check


def test_gpu_smoke_script_runs_end_to_end_on_cpu(tmp_path, standin_vllm, capsys):
    """benchmarks/gpu_smoke.py with tiny models, a CPU and the stand-in vLLM: every stage runs and
    is timed, both backends answer, and their agreement is what decides the exit code."""
    import importlib.util

    from tiny import save_pair

    script = Path(__file__).parents[1] / "benchmarks" / "gpu_smoke.py"
    spec = importlib.util.spec_from_file_location("gpu_smoke", script)
    smoke = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(smoke)
    pair = save_pair(tmp_path / "pair")
    data = tmp_path / "data" / "gsm8k"
    data.mkdir(parents=True)
    for split in ("train", "test"):
        (data / f"{split}.jsonl").write_text("".join(
            json.dumps({"question": q, "answer": f"Reasoning.\n#### {a}"}) + "\n" for q, a in QUESTIONS))
    out = tmp_path / "smoke"
    argv = ["--expert", str(pair[0]), "--amateur", str(pair[1]), "--out", str(out), "--data-dir", str(data.parent),
            "--questions", "4", "--steps", "2", "--eval-questions", "4", "--max-new-tokens", "8", "--beta", "0.05",
            "--device", "cpu", "--dtype", "float32"]
    assert smoke.main(argv) == 0
    printed = capsys.readouterr().out
    for name in ("sample (hf)", "train", "sft sampling (vllm)", "eval (hf)", "eval (vllm)"):
        assert re.search(rf"^\[{re.escape(name)}\] \d+\.\d s$", printed, re.M), name
    assert "hf and vLLM answers agree on 100% of 4 questions" in printed  # float32, the same model
    assert len(standin_vllm.ENGINES) == 2 and not any(engine.alive for engine in standin_vllm.ENGINES)
    assert json.loads((out / "adapter" / "train_summary.json").read_text())["optimizer_steps"] == 2

    # Answers that disagree fail the check.
    path = out / "eval_vllm" / "gsm8k.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps({**r, "pred": r["pred"] + "1"}) + "\n" for r in records[:1]) +
                    "".join(json.dumps(r) + "\n" for r in records[1:]))
    assert smoke.agreement(out / "eval_hf", out / "eval_vllm")[0] == 0.75
    assert smoke.main(argv) == 1
