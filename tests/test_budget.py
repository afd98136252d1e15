"""Sizing a run to a time budget: the estimate, the plan's search, and the run that records and keeps it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from lightreasoner import budget
from lightreasoner.cli import main
from lightreasoner.errors import LightReasonerError
from lightreasoner.pipeline import RunConfig, run_pipeline
from tiny import save_pair

SHAPE = dict(prompt_tokens=60, trajectory_tokens=128, answer_tokens=192, benchmarks=1)


def test_the_estimate_counts_each_stage_from_the_measured_speeds():
    speeds = budget.Speeds(torch_step=2.0, torch_prefill_token=0.01, adapter_step=3.0, adapter_prefill_token=0.02,
                           eval_step=0.5, eval_adapter_step=0.7, batch=16)
    sizes, seconds = budget.estimate(1.0, speeds, **SHAPE)
    assert sizes == {"questions": 16, "max_steps": 6, "eval_limit": 16, "fit_trajectories": 16}
    assert list(seconds) == ["eval_before", "sample", "train", "adapter_fit", "eval_after", "fixed"]  # stage names
    assert seconds["sample"] == pytest.approx(1 * 128 * 2.0 * budget.SAMPLING_OVERHEAD)  # one batch of 16
    forward_tokens = 6 * 16 / budget.KEPT_PER_FORWARD * (60 + 128)  # with the adapter, forward and backward
    assert seconds["train"] == pytest.approx(forward_tokens * 0.02 * budget.TRAIN_PASSES)
    # 16 trajectories in all, each scored without and with the adapter, in float32.
    assert seconds["adapter_fit"] == pytest.approx(16 * 2 * (60 + 128) * 0.01 * budget.FLOAT32_FIT_COST)
    assert seconds["eval_before"] == pytest.approx(1 * 192 * 0.5)  # 16 answers = one batch
    assert seconds["eval_after"] == pytest.approx(1 * 192 * 0.7)
    in_float32 = budget.estimate(1.0, replace(speeds, float32=True), **SHAPE)[1]
    assert in_float32["adapter_fit"] == pytest.approx(16 * 2 * (60 + 128) * 0.01)


@pytest.mark.parametrize("training", [False, True])
def test_measuring_with_a_lora_leaves_the_model_as_it_was(tmp_path, training):
    from functools import partial

    import torch

    from lightreasoner.models import load_model
    from lightreasoner.training import TrainConfig, attach_lora

    model = load_model(save_pair(tmp_path / "pair")[0]).train(training)
    model.lm_head.weight.requires_grad_(False)
    ids = torch.tensor([[3, 5, 7, 9]])
    before = {name: p.clone() for name, p in model.state_dict().items()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    with torch.no_grad():
        logits = model.eval()(ids).logits
    model.train(training)
    attach = partial(attach_lora, config=TrainConfig(lora_r=4, lora_alpha=8))
    step, prefill = budget.measure_with_fresh_lora(model, attach, [1, 2, 3, 4, 5], batch=2)[:2]
    assert step > 0 and prefill > 0 and model.training == training
    assert not any("lora" in name for name, _ in model.named_modules())
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[name], value) for name, value in before.items())
    with torch.no_grad():
        assert torch.equal(model.eval()(ids).logits, logits)


@pytest.mark.parametrize("minutes", [12, 15, 60])
def test_the_plan_is_the_largest_that_fits(minutes):
    speeds = budget.Speeds(torch_step=1.5, torch_prefill_token=0.005, adapter_step=2.0, adapter_prefill_token=0.008,
                           eval_step=0.3, eval_adapter_step=0.4, batch=16)
    made = budget.plan(minutes, speeds, **SHAPE)
    assert sum(made.seconds.values()) <= minutes * 60
    _, bigger = budget.estimate(made.scale * 1.05, speeds, **SHAPE)
    assert sum(bigger.values()) > minutes * 60
    assert made.questions == max(1, round(16 * made.scale)) and made.max_steps == max(1, round(6 * made.scale))
    assert f"{made.questions} training questions" in made.text() and "total" in made.text()
    # Time spent measuring comes off the budget, and is part of the plan's total.
    after = budget.plan(minutes, speeds, measuring=120.0, **SHAPE)
    assert after.seconds["measuring"] == 120.0 and sum(after.seconds.values()) <= minutes * 60
    assert after.scale <= made.scale


def test_a_machine_too_slow_for_the_budget_gets_the_smallest_plan_with_its_estimate():
    speeds = budget.Speeds(torch_step=60.0, torch_prefill_token=1.0, adapter_step=90.0, adapter_prefill_token=1.5,
                           eval_step=60.0, eval_adapter_step=90.0, batch=16)
    made = budget.plan(15, speeds, **SHAPE)
    assert (made.questions, made.max_steps, made.eval_limit) == (8, 3, 8)
    assert sum(made.seconds.values()) > 15 * 60  # said, not hidden


def test_a_budgeted_run_measures_plans_records_and_keeps_its_plan(tmp_path, monkeypatch):
    import lightreasoner.pipeline as pipeline

    pair = save_pair(tmp_path / "pair")
    config = RunConfig(expert=str(pair[0]), amateur=str(pair[1]), max_new_tokens=8, eval_max_new_tokens=8,
                       batch_size=4, dtype="float32", device="cpu", time_budget=2.0)
    measured = []
    measure = budget.measure_torch
    # The tiny models are fast enough for thousands of questions: pretend a slow CPU (and check the real
    # measurement ran on the expert at the run's batch width).
    from peft import PeftModel

    fake = iter([(0.5, 0.002), (0.7, 0.003)])  # bare, then with the fresh LoRA: told apart in the record
    monkeypatch.setattr(budget, "measure_torch", lambda model, prompt, batch: measured.append(
        (isinstance(model, PeftModel), measure(model, prompt, batch))) or next(fake))
    said: list[str] = []
    out = tmp_path / "run"
    run_pipeline(config, out, progress=False, say=said.append)
    record = json.loads((out / "run.json").read_text())
    plan = record["plan"]
    # The bare expert, then with a fresh LoRA of the run's settings (what training and evaluation after it run).
    assert [adapted for adapted, _ in measured] == [False, True]
    assert all(seconds > 0 for _, speeds in measured for seconds in speeds)
    assert plan["budget_minutes"] == 2.0 and plan["measured"]["torch_step"] == 0.5
    assert plan["measured"]["adapter_step"] == 0.7 and plan["measured"]["adapter_prefill_token"] == 0.003
    assert plan["seconds"]["measuring"] > 0  # the time spent measuring is part of the plan
    assert 8 <= plan["questions"] < 100
    assert plan["measured"]["eval_backend"] == "hf"  # a folder model: hf, whatever is installed
    assert any(line.startswith("plan for 2 minutes") for line in said)
    assert record["sample"]["limit"] == plan["questions"] and record["train"]["max_steps"] == plan["max_steps"]
    assert record["eval"]["limit"] == plan["eval_limit"]
    assert json.loads((out / "eval_before" / "summary.json").read_text())["benchmarks"]["arith"]["n"] == \
        plan["eval_limit"]
    report = (out / "report.md").read_text()  # each stage's estimate beside its time
    assert "| stage | planned | seconds | status |" in report
    assert f"| sample | {plan['seconds']['sample']:.0f} | " in report
    assert f"| eval_after | {plan['seconds']['eval_after']:.0f} | " in report
    # A rerun keeps the recorded plan: nothing is measured again (no model is even loaded).
    monkeypatch.setattr(pipeline, "load_pair", lambda *a, **k: pytest.fail("measured again"))
    run_pipeline(config, out, progress=False, say=lambda _: None)
    assert json.loads((out / "run.json").read_text())["plan"] == plan
    # A plan recorded before its estimates were named as the stages: no half-filled column.
    from lightreasoner.report import build_report

    record["plan"]["seconds"] = {"sample": 1.0, "train": 2.0, "adapter fit": 3.0, "evaluations": 4.0, "fixed": 5.0}
    (out / "run.json").write_text(json.dumps(record))
    build_report(out)
    assert "| stage | seconds | status |" in (out / "report.md").read_text()


def test_the_command_line_budget_and_explicit_sizes_exclude_each_other(tmp_path, capsys):
    assert main(["run", "--time-budget", "5", "--questions", "3", "--out", str(tmp_path / "run")]) == 2
    assert "--time-budget sizes --questions itself" in capsys.readouterr().err
    with pytest.raises(ValueError, match="time_budget: it sizes the baseline and lightreasoner arms only"):
        RunConfig(time_budget=5, arms=["baseline", "sft"])


def test_lightreasoner_run_with_nothing_given_is_the_15_minute_run(tmp_path, monkeypatch):
    import lightreasoner.commands.run as command

    seen = []
    monkeypatch.setattr(command, "run_pipeline", lambda config, out, **kwargs: seen.append(config) or out / "report.html")
    monkeypatch.setattr(command, "text_summary", lambda out: "")
    assert main(["run", "--out", str(tmp_path / "a"), "--quiet"]) == 0
    assert main(["run", "--out", str(tmp_path / "b"), "--eval-limit", "4", "--quiet"]) == 0
    assert main(["run", "--out", str(tmp_path / "c"), "--time-budget", "30", "--quiet"]) == 0
    assert [c.time_budget for c in seen] == [15.0, None, 30.0]


def test_the_run_evaluates_on_llamacpp_for_the_embedded_pair_and_keeps_what_its_folder_used(tmp_path, monkeypatch):
    import lightreasoner.pipeline as pipeline
    from lightreasoner.evaluation import EvalConfig

    import importlib.util

    real_find_spec, installed = importlib.util.find_spec, []
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: (object() if name in installed else None)
                        if name == "llama_cpp" else real_find_spec(name, *args))
    # llama.cpp decodes here (its probe in a child process is tested in test_backends), without a fetch.
    monkeypatch.setattr("lightreasoner.gguf_export.model_gguf", lambda spec, progress=True: Path(str(spec)))
    monkeypatch.setattr("lightreasoner.backends.decoding_problem", lambda gguf: None)
    said: list[str] = []
    embedded = EvalConfig(model="coder-1.5b", device="cpu")
    assert pipeline.choose_eval_backend(embedded, tmp_path, said.append) == "hf"
    assert said == ['evaluating with the hf backend: llama.cpp is not installed (pip install -e ".[test,llamacpp]" '
                    '(builds llama.cpp for this CPU; docs/EVALUATION.md))']
    installed.append("llama_cpp")
    assert pipeline.choose_eval_backend(embedded, tmp_path, said.append) == "llamacpp"
    assert pipeline.choose_eval_backend(EvalConfig(model=str(tmp_path), device="cpu"), tmp_path, said.append) == "hf"
    assert pipeline.choose_eval_backend(EvalConfig(model="coder-1.5b", backend="hf"), tmp_path, said.append) == "hf"
    assert len(said) == 1
    # Answers exist: every later evaluation of the run uses their backend, whatever is installed now.
    (tmp_path / "eval_before").mkdir()
    (tmp_path / "eval_before" / "run.json").write_text(json.dumps({"backend": "hf", "max_new_tokens": 8}))
    assert pipeline.choose_eval_backend(embedded, tmp_path, said.append) == "hf"
    assert pipeline.choose_eval_backend(replace(embedded, backend="hf"), tmp_path, said.append) == "hf"
    with pytest.raises(LightReasonerError, match=r"eval.backend=llamacpp: .*'s evaluations answered with hf, and "
                                                 r"answers of two engines are never paired; set eval: backend: hf"):
        pipeline.choose_eval_backend(replace(embedded, backend="llamacpp"), tmp_path, said.append)


def test_auto_falls_back_to_hf_where_llamacpp_measures_slower(tmp_path, monkeypatch):
    import lightreasoner.pipeline as pipeline

    pair = save_pair(tmp_path / "pair")
    config = RunConfig(expert=str(pair[0]), amateur=str(pair[1]), max_new_tokens=8, eval_max_new_tokens=8,
                       batch_size=4, dtype="float32", device="cpu", time_budget=2.0)
    monkeypatch.setattr(budget, "measure_torch", lambda model, prompt, batch: (0.5, 0.002))
    monkeypatch.setattr(budget, "measure_with_fresh_lora", lambda model, attach, prompt, batch, gguf=None, vocab_size=0:
                        (0.6, 0.003, None if gguf is None else 0.9))
    monkeypatch.setattr(budget, "measure_llamacpp", lambda *args, **kwargs: 0.8)
    monkeypatch.setattr("lightreasoner.gguf_export.model_gguf", lambda spec, **kwargs: tmp_path / "model.gguf")
    said: list[str] = []
    sample_config, train_config, _ = pipeline.stage_configs(config)
    _, record, _ = pipeline.fit_to_budget(config, tmp_path, sample_config, train_config, "llamacpp", said.append,
                                          may_fall_back=True)
    measured = record["measured"]
    assert measured["eval_backend"] == "hf" and (measured["eval_step"], measured["eval_adapter_step"]) == (0.5, 0.6)
    assert any("here llama.cpp took 0.80 s per decoding step of 4 questions (0.90 with an adapter), torch 0.50 s "
               "(0.60)" in line for line in said)
    _, record, _ = pipeline.fit_to_budget(config, tmp_path, sample_config, train_config, "llamacpp", said.append,
                                          may_fall_back=False)  # asked for by name: kept, and planned with
    measured = record["measured"]
    assert measured["eval_backend"] == "llamacpp"
    assert (measured["eval_step"], measured["eval_adapter_step"]) == (0.8, 0.9)
    assert record["seconds"]["eval_after"] == pytest.approx(record["seconds"]["eval_before"] * 0.9 / 0.8, abs=0.2)
