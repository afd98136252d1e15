"""``lightreasoner run``: sample -> train -> evaluate before and after -> report, in one run folder.

The run folder's layout (run.json, stages.json, samples.jsonl, adapter/, eval_before/, eval_after/, an
arm folder per other arm asked for with ``--arms``, the report) is :mod:`lightreasoner.layout`'s; every
evaluation answers with one backend.

Every stage resumes on its own (sample files, checkpoints and evaluation files are appended as
work finishes), and a finished stage is skipped, so rerunning the same command after a crash
continues where it stopped. The defaults need nothing: the embedded offline pair and the
project's generated arithmetic problems, at a demonstration budget (16 questions, 6 optimizer steps,
16 evaluation questions; ``lightreasoner run`` with no options sizes them to a 15-minute
``time_budget`` on the machine it runs on, :mod:`lightreasoner.budget`): it shows every stage working,
it is not a reproduction (configs/ has those). Evaluation runs on the backend ``auto`` picks (on a
CPU: llama.cpp for the embedded pair where the extra is installed and measures faster than torch);
sampling and training need full distributions and gradients and always run on torch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable

from .adapter_fit import adapter_fit
from .arms import ARM_EVAL_DIRS, ARMS, CONTROL_ARMS, Stages, lightreasoner_efficiency, stage_started
from .backends import is_gguf_model, release_memory, resolve_backend
from .config import SettingError, build_config, check_fields, config_to_dict, refuse_unknown
from .errors import LightReasonerError
from .evaluation import EvalConfig, evaluate
from .layout import (ADAPTER_DIR, ADAPTER_FIT_FILE, EFFICIENCY_FILE, EVAL_AFTER_DIR, EVAL_BEFORE_DIR, RUN_FILE,
                     RUN_KIND, SAMPLES_FILE, STAGES_FILE)
from .records import check_writable, read_json, refuse_own_input, write_json_atomic
from .resume import RUNTIME_SETTINGS, check_same_settings, setting_names
from .report import build_report
from .sampling import SampleConfig, load_pair, sample
from .controls import control
from .sft import ARM_RESUME_SETTINGS, SFTConfig, sft, sft_config_dict, sft_train_config
from .models import DTYPE_HELP, model_location, resolve_device
from .training import TrainConfig, train_from_file

BUDGETED_ARMS = ("baseline", "lightreasoner")

# The stages that read each config section (the sft arm shares the LoRA/optimizer settings).
SECTION_STAGES = {"sample": ("sample",), "train": ("train", "sft", *CONTROL_ARMS.values()), "sft": ("sft",),
                  "eval": tuple(ARM_EVAL_DIRS.values())}
# What run.json binds, section by section, once a stage that reads the section has started: every setting but
# how the work is run (resume.RUNTIME_SETTINGS), and evaluation's batch size, which an evaluation folder lets
# change too (a greedy float32 answer does not depend on its batch); a larger evaluation budget grows the
# evaluations instead.
RESUME_SETTINGS = (*setting_names(SampleConfig, "sample."), *setting_names(TrainConfig, "train."),
                   *setting_names(EvalConfig, "eval.", but=RUNTIME_SETTINGS | {"batch_size"}),
                   *(f"sft.{name}" for name in ARM_RESUME_SETTINGS if name != "arm"))


@dataclass
class RunConfig:
    """The headline settings of a run. Any other setting of a stage goes in the YAML sections
    ``sample:``, ``train:``, ``eval:`` and ``sft:`` (names as in ``lightreasoner sample/train/eval/sft
    --help``)."""

    expert: str = field(default="coder-1.5b", metadata={"help": "expert model"})
    amateur: str = field(default="coder-0.5b", metadata={"help": "amateur model"})
    data: str = field(default="arith", metadata={"help": "training questions: benchmark name or JSONL file"})
    split: str = field(default="train", metadata={"help": "split of the training questions"})
    data_dir: str | None = field(default=None, metadata={"help": "folder with <benchmark>/<split>.jsonl files"})
    questions: int | None = field(default=16, metadata={"help": "training questions to sample (None: all)", "min": 1})
    max_new_tokens: int = field(default=128, metadata={"help": "trajectory length when sampling", "min": 1})
    alpha: float = field(default=0.2, metadata={"help": "plausibility threshold", "above": 0, "max": 1})
    beta: float = field(default=0.4, metadata={"help": "KL threshold for keeping a step", "min": 0})
    max_steps: int = field(default=6, metadata={"help": "optimizer steps (16 kept steps each)", "min": 1})
    learning_rate: float = field(default=5e-5, metadata={"help": "peak learning rate", "above": 0})
    benchmarks: list[str] = field(default_factory=lambda: ["arith"], metadata={"help": "evaluation benchmarks"})
    eval_limit: int | None = field(default=16, metadata={"help": "questions per benchmark (None: all)", "min": 1})
    eval_max_new_tokens: int = field(default=2048, metadata={
        "help": "generation limit when evaluating (the Qwen2.5-Math toolkit's and the paper's 2048; fewer cut off "
                "long answers, and the toolkit's grading may still credit their last number)", "min": 1})
    time_budget: float | None = field(default=None, metadata={
        "help": "minutes: size questions, max_steps, eval_limit and fit_trajectories to finish in about this long "
                "on this machine, from its speed measured first, in 1-4 minutes (lightreasoner run with no config "
                "and no sizes: 15)", "above": 0})
    fit_trajectories: int = field(default=40, metadata={
        "help": "adapter fit: trajectories per group (trained on / never seen) whose kept steps are scored "
                "without and with the adapter (0: skip)", "min": 0})
    batch_size: int = field(default=16, metadata={"help": "questions decoded together (sampling and evaluation)",
                                                  "min": 1})
    dtype: str = field(default="auto", metadata={"help": DTYPE_HELP})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, mps"})
    seed: int = field(default=0, metadata={"help": "seed for data subsets, LoRA init and data order"})
    arms: list[str] = field(default_factory=lambda: ["baseline", "lightreasoner"], metadata={
        "help": "what to train and evaluate on the same questions: baseline (the expert as is), lightreasoner, "
                "sft (rejection-sampled SFT), and the controls (docs/SFT.md): format-only (one-hot labels at the "
                "kept steps), random-positions (one-hot at as many random positions), entropy-one-hot (one-hot at "
                "the expert's highest-entropy positions: no amateur), kept-expert (the expert's own plausible "
                "distribution at the kept steps) and the other <positions>-<labels> cells"})
    sft_samples_per_question: int = field(default=4, metadata={
        "help": "sft arm: solutions sampled per training question (YAML section sft: sets its other options)",
        "min": 1})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow Python code shipped with the models"})

    def __post_init__(self) -> None:
        check_fields(self)
        self.expert, self.amateur = model_location(self.expert), model_location(self.amateur)
        unknown = [arm for arm in self.arms if arm not in ARMS]
        if unknown or not self.arms:
            raise SettingError("arms", f"unknown arm {unknown[0] if unknown else ''!r} (choose from {', '.join(ARMS)})")
        if self.time_budget is not None and set(self.arms) - set(BUDGETED_ARMS):
            raise SettingError("time_budget", f"it sizes the {' and '.join(BUDGETED_ARMS)} arms only")



def stage_configs(config: RunConfig, overrides: dict[str, dict[str, Any]] | None = None, *,
                  source: str = "run config") -> tuple[SampleConfig, TrainConfig, EvalConfig]:
    """The three stage configs a run uses: headline settings first, then the YAML sections (read from
    ``source``, the file named in messages)."""
    overrides = overrides or {}
    trust = config.trust_remote_code
    sample_config = SampleConfig(expert=config.expert, amateur=config.amateur, data=config.data, split=config.split,
                                 data_dir=config.data_dir, limit=config.questions, max_new_tokens=config.max_new_tokens,
                                 alpha=config.alpha, beta=config.beta, batch_size=config.batch_size,
                                 dtype=config.dtype, device=config.device, seed=config.seed, trust_remote_code=trust)
    train_config = TrainConfig(max_steps=config.max_steps, learning_rate=config.learning_rate, dtype=config.dtype,
                               seed=config.seed, save_steps=10, resume=True, trust_remote_code=trust)
    eval_config = EvalConfig(model=config.expert, benchmarks=config.benchmarks, data_dir=config.data_dir,
                             limit=config.eval_limit, max_new_tokens=config.eval_max_new_tokens,
                             batch_size=config.batch_size, dtype=config.dtype, device=config.device,
                             seed=config.seed, trust_remote_code=trust)
    result = []
    for name, base in (("sample", sample_config), ("train", train_config), ("eval", eval_config)):
        section = overrides.get(name, {})
        refuse_unknown(section, {f.name for f in fields(type(base))}, f"{source}: {name}")
        values = {**config_to_dict(base), **section}
        result.append(build_config(type(base), values, source=f"{source}: {name}"))
    return result[0], result[1], result[2]


def sft_stage_config(config: RunConfig, train_config: TrainConfig, overrides: dict[str, Any] | None = None, *,
                     source: str = "run config") -> SFTConfig:
    """The sft arm's settings: the run's questions and LoRA/optimizer settings, SFT's own training
    length (one epoch over the kept solutions), solutions as long as evaluation answers; then the
    YAML section ``sft:`` (any option of ``lightreasoner sft``)."""
    shared = {k: v for k, v in config_to_dict(train_config).items()
              if k not in ("max_steps", "epochs", "steps_per_update", "gradient_accumulation_steps")}
    names = {f.name for f in fields(SFTConfig)} - {"train"}
    refuse_unknown(overrides or {}, names | {f.name for f in fields(TrainConfig)}, f"{source}: sft")
    overrides = {k.replace("-", "_"): v for k, v in (overrides or {}).items()}
    train = sft_train_config({**shared, **{k: v for k, v in overrides.items() if k not in names}})
    values = {"model": config.expert, "data": config.data, "split": config.split, "data_dir": config.data_dir,
              "limit": config.questions, "samples_per_question": config.sft_samples_per_question,
              "max_new_tokens": config.eval_max_new_tokens, "batch_size": config.batch_size, "device": config.device,
              **{k: v for k, v in overrides.items() if k in names}}
    return build_config(SFTConfig, {**values, "train": train}, source=f"{source}: sft")


def recorded_eval_backend(run_dir: Path) -> str | None:
    """The backend the run folder's evaluations answered with, if one has answered: every arm's
    answers come from one engine, since answers of different engines are never paired."""
    for folder in ARM_EVAL_DIRS.values():
        path = run_dir / folder / RUN_FILE
        if path.is_file() and isinstance(recorded := read_json(path), dict) and recorded.get("backend"):
            return str(recorded["backend"])
    return None


def choose_eval_backend(eval_config: EvalConfig, run_dir: Path, say: Callable[[str], None]) -> str:
    """The evaluation backend of the run: the one asked for, else (``auto``) the one its evaluations
    already used, else :func:`lightreasoner.backends.resolve_backend`'s pick for the expert, saying so
    when llama.cpp would serve the embedded pair on this CPU but is not installed. Another backend than
    the one the run's answers came from is refused: the arms' answers would be paired across engines."""
    recorded = recorded_eval_backend(run_dir)
    if recorded is not None:
        if eval_config.backend not in ("auto", recorded):
            raise LightReasonerError(
                f"eval.backend={eval_config.backend}: {run_dir}'s evaluations answered with {recorded}, and answers "
                f"of two engines are never paired; set eval: backend: {recorded} (or auto), or use another --out")
        return recorded
    if eval_config.backend != "auto":
        return eval_config.backend
    backend = resolve_backend("auto", eval_config.device, llamacpp_model=eval_config.model)
    if backend == "hf" and is_gguf_model(eval_config.model) and resolve_device(eval_config.device).type == "cpu":
        from .llamacpp import INSTALL_HINT

        say(f"evaluating with the hf backend: llama.cpp is not installed ({INSTALL_HINT})")
    return backend


def fit_to_budget(config: RunConfig, run_dir: Path, sample_config: SampleConfig, train_config: TrainConfig,
                  eval_backend: str, say: Callable[[str], None], *,
                  may_fall_back: bool) -> tuple[RunConfig, dict[str, Any], Any]:
    """The run's sizes for ``config.time_budget`` (:mod:`lightreasoner.budget`): the plan recorded in
    run.json for the same budget, else one made from this machine's measured speed. Where ``auto``
    chose llamacpp (``may_fall_back``) and llama.cpp measures slower than torch for the two evaluations
    (the bare expert's steps and the adapted one's), evaluation falls back to hf: the plan records the
    backend it was made for (``measured.eval_backend``). Returns the sized
    config, the plan's record, and the model pair when it was loaded to measure."""
    from . import budget
    from .data import load_problems
    from .models import chat_prompt, encode_prompt
    from .training import attach_lora

    previous = read_json(run_dir / RUN_FILE).get("plan") if (run_dir / RUN_FILE).exists() else None
    pair = None
    if previous and previous.get("budget_minutes") == config.time_budget:
        record = previous
    else:
        say(f"measuring this machine's speed for a {config.time_budget:g}-minute plan ...")
        began = time.perf_counter()
        pair = load_pair(sample_config)
        question = load_problems(config.data, split=config.split, data_dir=config.data_dir, limit=1)[0].question
        prompt = encode_prompt(pair.tokenizer, chat_prompt(pair.tokenizer, question, sample_config.system_prompt))
        gguf = None
        if eval_backend == "llamacpp":
            from .gguf_export import model_gguf

            gguf = model_gguf(config.expert)
        speeds = budget.measure(pair.expert, prompt, config.batch_size, gguf=gguf, vocab_size=pair.vocab_size,
                                attach_lora=None if train_config.full else partial(attach_lora, config=train_config))
        # auto: the faster engine for the two evaluations (bare and adapted) here, not llama.cpp at any cost
        on_torch = speeds.on_torch()
        if gguf is not None and may_fall_back and \
                speeds.eval_step + speeds.eval_adapter_step > on_torch.eval_step + on_torch.eval_adapter_step:
            say(f"evaluating with the hf backend: here llama.cpp took {speeds.eval_step:.2f} s per decoding step of "
                f"{config.batch_size} questions ({speeds.eval_adapter_step:.2f} with an adapter), torch "
                f"{on_torch.eval_step:.2f} s ({on_torch.eval_adapter_step:.2f})")
            eval_backend, speeds = "hf", on_torch
        made = budget.plan(config.time_budget, speeds, measuring=time.perf_counter() - began,
                           prompt_tokens=len(prompt), trajectory_tokens=config.max_new_tokens,
                           answer_tokens=min(budget.ANSWER_TOKENS, config.eval_max_new_tokens),
                           benchmarks=len(config.benchmarks), steps_per_update=train_config.steps_per_update)
        record = {**made.record(), "measured": {**speeds.record(), "eval_backend": eval_backend}}
        say(made.text())
    sized = replace(config, questions=record["questions"], max_steps=record["max_steps"],
                    eval_limit=record["eval_limit"], fit_trajectories=record["fit_trajectories"])
    return sized, record, pair


def run_pipeline(config: RunConfig, run_dir: str | Path, *, overrides: dict[str, dict[str, Any]] | None = None,
                 progress: bool = True, say: Callable[[str], None] = print, source: str = "run config") -> Path:
    """Run (or resume) the whole method, and any other arms asked for, into ``run_dir``; returns the
    path of report.html. Every arm trains on the same questions and is evaluated on the same ones.
    ``overrides`` are the YAML sections, read from ``source`` (named in messages)."""
    run_dir = Path(run_dir)
    sample_config, train_config, eval_config = stage_configs(config, overrides, source=source)
    refuse_own_input(run_dir, {"expert model folder": config.expert, "amateur model folder": config.amateur})
    check_writable(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    eval_backend = choose_eval_backend(eval_config, run_dir, say)
    plan, pair = None, None
    if config.time_budget is not None:
        fall_back = eval_config.backend == "auto" and recorded_eval_backend(run_dir) is None
        config, plan, pair = fit_to_budget(config, run_dir, sample_config, train_config, eval_backend, say,
                                           may_fall_back=fall_back)
        if fall_back:
            eval_backend = plan["measured"]["eval_backend"]
        sample_config, train_config, eval_config = stage_configs(config, overrides, source=source)
    eval_config = replace(eval_config, backend=eval_backend)
    arms = config.arms
    previous = read_json(run_dir / RUN_FILE) if (run_dir / RUN_FILE).exists() else None
    started = read_json(run_dir / STAGES_FILE) if (run_dir / STAGES_FILE).exists() else {}
    sft_config = sft_stage_config(config, train_config, _sft_overrides(overrides, previous, started), source=source) \
        if "sft" in arms else None
    # "overrides" keeps what the YAML sections changed, so the report can show it beside the headline.
    record = {"kind": RUN_KIND, "settings": config_to_dict(config), "overrides": overrides or {},
              "sample": config_to_dict(sample_config), "train": config_to_dict(train_config),
              "eval": config_to_dict(eval_config), **({"plan": plan} if plan is not None else {}),
              **({"sft": sft_config_dict(sft_config)} if sft_config is not None else {})}
    if previous is not None:
        record = continued_record(run_dir / RUN_FILE, previous, record, started)
    write_json_atomic(run_dir / RUN_FILE, record)
    stages = Stages(run_dir, started=lambda name: stage_started(run_dir, name))
    reopen_smaller_budgets(run_dir, stages, eval_config.max_new_tokens)

    def get_pair():
        nonlocal pair
        pair = pair or load_pair(sample_config)
        return pair

    # The controls train on the LightReasoner trajectories (and the kept steps' count) too.
    on_samples = [arm for arm in ("lightreasoner", *CONTROL_ARMS.values()) if arm in arms]
    samples_needed = bool(on_samples) and not stages.done("sample")
    # vLLM loads the model in its own engine: the pair would only hold GPU memory the engine needs.
    eval_on_hf = eval_backend == "hf"

    def eval_before() -> None:
        if samples_needed and eval_on_hf:  # load the pair once for both stages
            loaded = get_pair()
            evaluate(eval_config, run_dir / EVAL_BEFORE_DIR, model=loaded.expert, tokenizer=loaded.tokenizer,
                     progress=progress)
        else:  # the expert alone, and only if an answer is missing
            evaluate(eval_config, run_dir / EVAL_BEFORE_DIR, progress=progress)

    def eval_arm(folder: Path, stage: str) -> None:
        after = replace(eval_config, adapter=str(folder / ADAPTER_DIR))
        stages.timed(stage, lambda: evaluate(after, folder / EVAL_AFTER_DIR, progress=progress), say)
        stages.finish(stage)

    if "baseline" in arms:
        stages.timed(ARM_EVAL_DIRS["baseline"], eval_before, say)
        stages.finish(ARM_EVAL_DIRS["baseline"])
    if on_samples:
        stages.timed("sample", lambda: sample(sample_config, run_dir / SAMPLES_FILE, progress=progress,
                                              pair=get_pair()), say)
        stages.finish("sample")
    tokenizer = pair.tokenizer if pair is not None else None
    pair = None  # free both models before training (and any vLLM engine: it measures free GPU memory)
    release_memory()

    if "lightreasoner" in arms:
        stages.timed("train", lambda: train_from_file(sample_config.expert, run_dir / SAMPLES_FILE, train_config,
                                                      run_dir / ADAPTER_DIR), say)
        stages.finish("train")
        if config.fit_trajectories:
            stages.timed("adapter_fit", lambda: write_json_atomic(run_dir / ADAPTER_FIT_FILE, adapter_fit(
                sample_config.expert, run_dir / SAMPLES_FILE, run_dir / ADAPTER_DIR,
                trajectories=config.fit_trajectories, seed=config.seed, progress=progress,
                trust_remote_code=config.trust_remote_code)), say)
            stages.finish("adapter_fit")
        eval_arm(run_dir, ARM_EVAL_DIRS["lightreasoner"])
        write_json_atomic(run_dir / EFFICIENCY_FILE, lightreasoner_efficiency(run_dir))
    if sft_config is not None:
        stages.timed("sft", lambda: sft(sft_config, run_dir / "sft", progress=progress,
                                        say=lambda text: say(f"[sft] {text}")), say)
        stages.finish("sft")
        eval_arm(run_dir / "sft", ARM_EVAL_DIRS["sft"])
    for (positions, labels), arm in CONTROL_ARMS.items():
        if arm not in arms:
            continue
        # Same samples, same training settings, same optimizer steps as the lightreasoner arm; its
        # cost includes that arm's sampling, which made the trajectories.
        stages.timed(arm, lambda: control(sample_config.expert, run_dir / SAMPLES_FILE, train_config, run_dir / arm,
                                          positions=positions, labels=labels, progress=progress,
                                          sample_seconds=stages.state["sample"]["seconds"],
                                          say=lambda text: say(f"[{arm}] {text}")), say)
        stages.finish(arm)
        eval_arm(run_dir / arm, ARM_EVAL_DIRS[arm])

    if tokenizer is None:
        from .models import load_tokenizer

        tokenizer = load_tokenizer(sample_config.expert, trust_remote_code=config.trust_remote_code)
    _, html_path = stages.timed("report", lambda: build_report(run_dir, tokenizer=tokenizer), say)
    stages.finish("report")
    stages.state.pop("report", None)  # the report is redrawn on every run; it is not a stage to skip
    stages.save()
    return html_path


def continued_record(path: Path, previous: dict[str, Any], record: dict[str, Any],
                     started: dict[str, Any]) -> dict[str, Any]:
    """The run.json of a run continued in a folder made with ``previous``: an arm added to it brings its
    own section; a section whose stages have not started yet may still change; the others must match,
    or results would be mixed, except a larger evaluation budget, which grows the evaluations."""
    for section in ("sample", "train", "eval", *(["sft"] if "sft" in previous and "sft" in record else [])):
        if not any(stage in started for stage in SECTION_STAGES[section]):
            continue
        before = previous.get(section, {})
        if section == "eval":
            before = grown_eval_budget(path, before, record["eval"])
        check_same_settings(path, {section: before}, {section: record[section]},
                            [name for name in RESUME_SETTINGS if name.startswith(f"{section}.")])
    # One command per arm is the usual way to fill a folder: it records the arms of them all.
    arms = list(dict.fromkeys([*previous.get("settings", {}).get("arms", ()), *record["settings"]["arms"]]))
    return {**previous, **record, "settings": {**record["settings"], "arms": arms}}


def reopen_smaller_budgets(run_dir: Path, stages: Stages, max_new_tokens: int) -> None:
    """Mark every evaluation done at a smaller budget to run again, to grow; saved before it starts, so
    that a kill once its folder records the larger budget leaves it marked to finish."""
    for stage in SECTION_STAGES["eval"]:
        folder = run_dir / stage / RUN_FILE
        if stages.done(stage) and folder.is_file() and read_json(folder)["max_new_tokens"] < max_new_tokens:
            stages.state[stage]["done"] = False
            stages.save()


def grown_eval_budget(path: Path, before: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
    """The eval section ``before`` (of ``path``) with the budget of ``now`` when that is larger: a rerun
    with a larger ``max_new_tokens`` grows every evaluation (their cut-off answers are continued,
    docs/EVALUATION.md). A smaller one is refused."""
    budget = before.get("max_new_tokens")
    if not isinstance(budget, int):
        return before
    if now["max_new_tokens"] < budget:
        raise LightReasonerError(f"{path}: its evaluations were made with eval.max_new_tokens={budget}; a budget can "
                                 f"grow, not shrink: use --eval-max-new-tokens {budget} or more, or another --out")
    return {**before, "max_new_tokens": now["max_new_tokens"]}


def _sft_overrides(overrides: dict[str, dict[str, Any]] | None, previous: dict[str, Any] | None,
                   started: dict[str, Any]) -> dict[str, Any] | None:
    """The YAML section ``sft:``, plus, once the sft arm has started, the length its solutions were
    sampled at: it follows the evaluation budget by default, and a grown budget must not change them."""
    section = (overrides or {}).get("sft")
    if previous is None or "sft" not in started or "sft" not in previous:
        return section
    if any(key.replace("-", "_") == "max_new_tokens" for key in section or {}):
        return section
    return {"max_new_tokens": previous["sft"]["max_new_tokens"], **(section or {})}
