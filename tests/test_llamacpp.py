"""The llamacpp backend on a tiny Qwen2 model written to GGUF by our converter: greedy output against
a direct single-sequence call of llama-cpp-python's own API, batched against single-sequence decoding,
padding rows, a converted LoRA adapter, the Backend interface (finish reasons, stop strings), seeded
sampling, and ``eval --backend llamacpp`` and ``sft --backend llamacpp`` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

llama_cpp = pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not installed (the optional extra: pip install -e '.[llamacpp]')")

from lightreasoner import gguf_export, zoo  # noqa: E402
from lightreasoner.decoding import derived_seed, seeded_sampler  # noqa: E402
from lightreasoner.evaluation import EvalConfig, evaluate  # noqa: E402
from lightreasoner.backends import decoding_problem  # noqa: E402
from lightreasoner.llamacpp import LlamaCppModel  # noqa: E402
from lightreasoner.models import chat_prompt, encode_prompt, load_tokenizer, real_vocab_size, stop_token_ids  # noqa: E402
from test_gguf_export import save_lora  # noqa: E402
from tiny import make_model, make_tokenizer  # noqa: E402

QUESTIONS = ["How many clips did Natalia sell?", "Weng earns $12 an hour for babysitting. How much for 50 minutes?",
             "What is 3 + 4?", "Let x be the number of apples. The answer is", "0 1 2 3 4 5 6 7 8 9 10 + - * / = ?"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The tiny model folder (padding rows that would win every argmax unmasked), its GGUF, tokenizer
    and prompts; the cache in a temporary folder."""
    root = tmp_path_factory.mktemp("llamacpp")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(zoo.CACHE_ENV, str(root / "cache"))
        tokenizer = make_tokenizer()
        model = make_model(3, layers=2)
        prompts = [encode_prompt(tokenizer, chat_prompt(tokenizer, q, "Please reason step by step.")) for q in QUESTIONS]
        with torch.no_grad():  # every padding row a scaled copy of the first answer's first token's row
            first = int(model(input_ids=torch.tensor([prompts[0]])).logits[0, -1, :len(tokenizer)].argmax())
            model.lm_head.weight[len(tokenizer):] = 2 * model.lm_head.weight[first]
        model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        model.save_pretrained(root / "model")
        tokenizer.save_pretrained(root / "model")
        tokenizer = load_tokenizer(root / "model")
        gguf = gguf_export.model_gguf(root / "model")
        problem = decoding_problem(str(gguf))
        if problem is not None:  # the build's kernels cannot run on this machine (docs/EVALUATION.md)
            pytest.skip(f"llama.cpp as installed here {problem}: rebuild it (docs/EVALUATION.md#the-llamacpp-backend)")
        yield {"root": root, "dir": root / "model", "gguf": gguf, "tokenizer": tokenizer, "prompts": prompts,
               "vocab": real_vocab_size(tokenizer), "stops": stop_token_ids(tokenizer)}


def direct_greedy(gguf: Path, prompt: list[int], steps: int, *, vocab: int | None, stops: list[int],
                  lora: Path | None = None) -> list[int]:
    """One sequence through llama-cpp-python's high-level ``Llama``: evaluate, read the last token's
    logits, argmax over the real vocabulary (all rows when ``vocab`` is None), feed the token back.

    Only the last token's logits are computed (``logits_all=False``), as in the backend: llama.cpp
    then computes the last layer's feed-forward for that row alone, with other kernels and sums
    than for a whole prompt, which moves logits by ~1e-2 on this Q8_0 model. Flash attention is on,
    as in llama.cpp's default context on a CPU."""
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=512, n_batch=512, flash_attn=True, verbose=False,
                          lora_path=None if lora is None else str(lora))
    llm.eval(prompt)
    out: list[int] = []
    for _ in range(steps):
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
        token = int(np.argmax(logits if vocab is None else logits[:vocab]))
        out.append(token)
        if token in stops:
            break
        llm.eval([token])
    llm.close()
    return out


def ours(setup, *, slots: int, max_new_tokens, adapter: Path | None = None, **kwargs) -> list[list[int]]:
    results: list[list[int]] = [[] for _ in setup["prompts"]]
    with LlamaCppModel(setup["gguf"], adapter=adapter) as model:
        for done in model.decode(setup["prompts"], slots=slots, max_new_tokens=max_new_tokens,
                                 stop_ids=setup["stops"], vocab_size=setup["vocab"], **kwargs):
            assert not results[done.index] and done.seconds > 0
            results[done.index] = done.token_ids
    return results


def test_greedy_equals_a_direct_llama_cpp_call_and_never_picks_padding_rows(setup):
    single = ours(setup, slots=1, max_new_tokens=24)
    for prompt, tokens in zip(setup["prompts"], single):
        assert tokens == direct_greedy(setup["gguf"], prompt, 24, vocab=setup["vocab"], stops=setup["stops"])
        assert max(tokens) < setup["vocab"]
    # Unmasked, the same engine would generate a padding row first: the mask is what keeps them out.
    unmasked = direct_greedy(setup["gguf"], setup["prompts"][0], 1, vocab=None, stops=setup["stops"])
    assert unmasked[0] >= setup["vocab"]


def test_batched_decoding_equals_single_sequence_decoding(setup):
    limits = [24, 5, 17, 24, 9]  # one limit per prompt
    single = ours(setup, slots=1, max_new_tokens=limits)
    assert [len(t) for t in single] == [min(n, len(t)) for n, t in zip(limits, single)]
    assert any(len(t) == n for n, t in zip(limits, single))
    for slots in (2, 5):
        assert ours(setup, slots=slots, max_new_tokens=limits) == single


def test_a_converted_lora_adapter_changes_the_output_as_llama_cpp_applies_it(setup, tmp_path):
    adapter = save_lora(setup["dir"], tmp_path / "adapter")
    lora = gguf_export.adapter_gguf(adapter, setup["gguf"])
    plain = ours(setup, slots=3, max_new_tokens=16)
    tuned = ours(setup, slots=3, max_new_tokens=16, adapter=lora)
    assert tuned != plain
    for prompt, tokens in zip(setup["prompts"], tuned):
        assert tokens == direct_greedy(setup["gguf"], prompt, 16, vocab=setup["vocab"], stops=setup["stops"], lora=lora)


def test_the_time_budget_measures_llama_cpp_with_a_fresh_adapter_applied(setup, monkeypatch):
    from functools import partial

    from lightreasoner import budget
    from lightreasoner.models import load_model
    from lightreasoner.training import TrainConfig, attach_lora

    model = load_model(setup["dir"])
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    attach = partial(attach_lora, config=TrainConfig(lora_r=4, lora_alpha=8))
    cached = set(setup["root"].joinpath("cache").glob("**/lora-*.gguf"))
    applied = []  # the llama.cpp LoRA files measured with, while they exist
    real = budget.measure_llamacpp
    monkeypatch.setattr(budget, "measure_llamacpp", lambda *args, adapter=None, **kwargs: applied.append(
        adapter and (adapter.name, adapter.is_file())) or real(*args, adapter=adapter, **kwargs))
    speeds = budget.measure(model, setup["prompts"][0], 2, attach_lora=attach, gguf=setup["gguf"],
                            vocab_size=setup["vocab"])
    assert all(value > 0 for value in (speeds.torch_step, speeds.adapter_step, speeds.adapter_prefill_token,
                                       speeds.eval_step, speeds.eval_adapter_step))
    assert applied == [("lora.gguf", True), None]  # with the converted fresh adapter, then bare
    assert speeds.eval_step != speeds.torch_step and speeds.on_torch().eval_adapter_step == speeds.adapter_step
    assert model.state_dict().keys() == state.keys()  # the adapter is gone again
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in state.items())
    assert set(setup["root"].joinpath("cache").glob("**/lora-*.gguf")) == cached  # nothing cached for a throwaway


def test_the_adapter_moves_logits_as_peft_does(setup, tmp_path):
    """Same adapter, two engines: llama.cpp's change of the last logits follows peft's (Q8_0 weights
    and quantized activations blur it, but the direction and size agree)."""
    from peft import PeftModel

    from lightreasoner.models import load_model

    adapter = save_lora(setup["dir"], tmp_path / "adapter")
    lora = gguf_export.adapter_gguf(adapter, setup["gguf"])
    prompt = setup["prompts"][1]
    vocab = setup["vocab"]

    def llama_logits(lora_path: Path | None) -> np.ndarray:
        llm = llama_cpp.Llama(model_path=str(setup["gguf"]), n_ctx=256, flash_attn=True, verbose=False,
                              lora_path=None if lora_path is None else str(lora_path))
        llm.eval(prompt)
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))[:vocab]
        logits = logits.copy()  # a view of llama.cpp's buffer, which close() frees
        llm.close()
        return logits

    base = load_model(setup["dir"])
    with torch.no_grad():
        torch_plain = base(input_ids=torch.tensor([prompt])).logits[0, -1, :vocab].numpy()
        tuned_model = PeftModel.from_pretrained(load_model(setup["dir"]), str(adapter)).eval()
        torch_tuned = tuned_model(input_ids=torch.tensor([prompt])).logits[0, -1, :vocab].numpy()
    torch_shift, llama_shift = torch_tuned - torch_plain, llama_logits(lora) - llama_logits(None)
    assert np.abs(torch_shift).max() > 0.5  # the adapter matters
    assert np.corrcoef(torch_shift, llama_shift)[0, 1] > 0.95
    assert np.abs(llama_shift - torch_shift).max() < 0.2 * np.abs(torch_shift).max()


def test_the_backend_reports_why_each_answer_ended_and_stops_on_a_stop_string(setup):
    """The Backend interface over the engine: per-request budgets, "eos" / "length" as the engine
    ended, and a stop string found in the newest tokens' text ends the answer as "stop"."""
    from lightreasoner.backends import Request, Sampling
    from lightreasoner.llamacpp import LlamaCppBackend

    tokenizer, prompts = setup["tokenizer"], setup["prompts"]
    limits = [24, 5, 17, 24, 9]
    engine = ours(setup, slots=1, max_new_tokens=limits)
    with LlamaCppBackend(str(setup["dir"]), tokenizer, slots=3) as backend:
        outputs = {o.index: o for chunk in backend.generate([Request(p, n) for p, n in zip(prompts, limits)],
                                                            Sampling()) for o in chunk}
        assert [outputs[i].token_ids for i in range(len(prompts))] == engine
        for output, limit in zip((outputs[i] for i in range(len(prompts))), limits):  # request order
            ended_on_stop = output.token_ids[-1] in setup["stops"]
            assert output.finish == ("eos" if ended_on_stop else "length")
            assert ended_on_stop or len(output.token_ids) == limit
        longest = max(range(len(prompts)), key=lambda i: len(engine[i]))
        stop = tokenizer.decode(engine[longest][2:4], skip_special_tokens=True)
        assert stop.strip()
        [[cut]] = list(backend.generate([Request(prompts[longest], limits[longest])], Sampling(stop_strings=(stop,))))
    assert cut.finish == "stop" and engine[longest][:len(cut.token_ids)] == cut.token_ids
    assert stop in tokenizer.decode(cut.token_ids, skip_special_tokens=True)
    assert stop not in tokenizer.decode(cut.token_ids[:-1], skip_special_tokens=True)


def test_seeded_sampling_draws_the_same_whatever_the_batch(setup):
    seeds = [derived_seed(0, i) for i in range(len(setup["prompts"]))]
    draws = [ours(setup, slots=slots, max_new_tokens=12, choose=seeded_sampler(seeds, temperature=1.0))
             for slots in (1, 4)]
    assert draws[0] == draws[1]
    assert draws[0] != ours(setup, slots=1, max_new_tokens=12)  # it samples, not argmax


def test_eval_with_the_llamacpp_backend_writes_resumable_records(setup, tmp_path):
    data = tmp_path / "data" / "gsm8k"
    data.mkdir(parents=True)
    data.joinpath("test.jsonl").write_text("".join(
        json.dumps({"question": q, "answer": f"Reasoning.\n#### {i}"}) + "\n" for i, q in enumerate(QUESTIONS)))
    values = dict(model=str(setup["dir"]), benchmarks=["gsm8k"], data_dir=str(tmp_path / "data"),
                  max_new_tokens=10, batch_size=3, backend="llamacpp")
    out = tmp_path / "eval"
    evaluate(EvalConfig(**values, limit=2), out, progress=False)
    summary = evaluate(EvalConfig(**values), out, progress=False)  # resumes: three more questions
    records = [json.loads(line) for line in (out / "gsm8k.jsonl").read_text().splitlines()]
    assert len(records) == summary["benchmarks"]["gsm8k"]["n"] == 5
    assert json.loads((out / "run.json").read_text())["backend"] == "llamacpp"
    tokenizer = setup["tokenizer"]
    with LlamaCppModel(setup["gguf"]) as model:
        for record in records:
            prompt = encode_prompt(tokenizer, record["prompt"])
            expected = next(model.decode([prompt], slots=1, max_new_tokens=10, stop_ids=setup["stops"],
                                         vocab_size=setup["vocab"])).token_ids
            cut = expected[:-1] if expected[-1] in setup["stops"] else expected
            assert record["completion"] == tokenizer.decode(cut, skip_special_tokens=True)
            assert record["tokens"] == len(expected)
    from lightreasoner.errors import LightReasonerError

    with pytest.raises(LightReasonerError, match="backend='llamacpp'"):
        evaluate(EvalConfig(**{**values, "backend": "hf"}), out, progress=False)


def test_sft_sampling_with_llamacpp_draws_the_same_whatever_the_batch(setup, tmp_path):
    from lightreasoner.sft import SFTConfig, read_sft_samples, sample_solutions, sft_train_config

    data = tmp_path / "data" / "gsm8k"
    data.mkdir(parents=True)
    data.joinpath("train.jsonl").write_text("".join(
        json.dumps({"question": q, "answer": f"Reasoning.\n#### {i}"}) + "\n" for i, q in enumerate(QUESTIONS[:3])))
    files = []
    for batch in (1, 4):
        config = SFTConfig(model=str(setup["dir"]), data="gsm8k", split="train", data_dir=str(tmp_path / "data"),
                           samples_per_question=2, max_new_tokens=8, batch_size=batch, backend="llamacpp",
                           train=sft_train_config({"dtype": "float32"}))
        counts = sample_solutions(config, tmp_path / f"samples-{batch}.jsonl", progress=False)
        assert counts["problems_sampled"] == 3 and counts["solutions_sampled"] == 6
        header, records = read_sft_samples(tmp_path / f"samples-{batch}.jsonl")
        assert header["settings"]["backend"] == "llamacpp"
        files.append([[s["completion_ids"] for s in r["samples"]] for _, r in records])
    assert files[0] == files[1]
    assert any(a != b for a, b in files[0])  # two samples of one question differ: it samples
    assert all(max(ids) < setup["vocab"] for question in files[0] for ids in question)


def test_an_explicit_llamacpp_backend_that_crashes_on_this_cpu_stops_with_one_line(pair, tokenizer, tmp_path,
                                                                                monkeypatch):
    """A segfault cannot be caught in the process it kills: the backend asks the child-process probe
    first and refuses, naming the GGUF file and the way out."""
    from lightreasoner.errors import LightReasonerError
    from lightreasoner.llamacpp import LlamaCppBackend

    probed: list[str] = []
    monkeypatch.setattr("lightreasoner.gguf_export.model_gguf", lambda spec, progress=True: tmp_path / "expert.gguf")
    monkeypatch.setattr("lightreasoner.llamacpp.decoding_problem",
                        lambda gguf: probed.append(gguf) or "crashed (SIGSEGV) decoding one token")
    with pytest.raises(LightReasonerError) as error:
        LlamaCppBackend(str(pair[0]), tokenizer, slots=2)
    assert probed == [str(tmp_path / "expert.gguf")]
    message = str(error.value)
    assert "crashed (SIGSEGV)" in message and "expert.gguf" in message and "--backend hf" in message
    assert "\n" not in message


def test_llama_cpp_logs_its_errors_and_nothing_else(tmp_path, capfd):
    """By ggml's own level numbers: the package's stale mapping printed every warning and hid errors."""
    from lightreasoner.errors import LightReasonerError
    from lightreasoner.llamacpp import llama_log

    for level, text in [(2, b"loading tensors\n"), (3, b"lora cannot use buft CPU_REPACK\n"), (4, b"error: "),
                        (5, b"bad magic\n"), (3, b"a warning "), (5, b"continued\n"), (1, b"debug\n")]:
        llama_log(level, text)
    assert capfd.readouterr().err == "error: bad magic\n"
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(LightReasonerError, match="broken.gguf: llama.cpp cannot load this GGUF file"):
        LlamaCppModel(broken)
    printed = capfd.readouterr().err  # the log the message points to ("its log above says why")
    assert printed.strip() and "broken.gguf" in printed
