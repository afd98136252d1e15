"""Bad input through the command line: one line naming the file, line or setting, exit code 2, no
traceback, no input changed, nothing left behind that refuses the corrected rerun (docs/ERRORS.md).

One test per case of the reliability probe (and a few found on the way), on the tiny random pair.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import lightreasoner.sampling as sampling
from lightreasoner.cli import main
from lightreasoner.records import JsonlAppender

from tiny import make_tokenizer

QUESTIONS = ["How many clips did Natalia sell?", "Weng earns $12 an hour. How much?", "What is 7 + 2?"]


# ------------------------------------------------------------------------------------------ helpers


@pytest.fixture()
def data(tmp_path) -> Path:
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": q, "answer": "#### 1"}) + "\n"
                            for i, q in enumerate(QUESTIONS)))
    return path


def sample_args(pair, data, out, *extra) -> list[str]:
    return ["sample", "--expert", str(pair[0]), "--amateur", str(pair[1]), "--data", str(data), "--out", str(out),
            "--max-new-tokens", "4", "--batch-size", "1", "--dtype", "float32", "--device", "cpu",
            "--quiet", *map(str, extra)]


def train_args(pair, samples, out, *extra) -> list[str]:
    return ["train", "--model", str(pair[0]), "--samples", str(samples), "--out", str(out), "--max-steps", "1",
            "--steps-per-update", "2", "--dtype", "float32", *map(str, extra)]


def eval_args(model, out, *extra) -> list[str]:
    return ["eval", "--model", str(model), "--benchmarks", "arith", "--limit", "2", "--max-new-tokens", "4",
            "--dtype", "float32", "--device", "cpu", "--out", str(out), "--quiet", *map(str, extra)]


@pytest.fixture(scope="module")
def samples(pair, tmp_path_factory) -> Path:
    """A finished sample file of the tiny pair."""
    folder = tmp_path_factory.mktemp("samples")
    data = folder / "questions.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "question": q}) + "\n" for i, q in enumerate(QUESTIONS)))
    assert main(sample_args(pair, data, folder / "samples.jsonl", "--beta", "0")) == 0  # keep every step
    return folder / "samples.jsonl"


@pytest.fixture(scope="module")
def adapter(pair, samples, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    assert main(train_args(pair, samples, out)) == 0
    return out


def fingerprint(*paths: Path) -> dict[str, str]:
    """sha256 of every file under ``paths``: inputs must come out of a failed command as they went in."""
    files = [f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("*"))) if f.is_file()]
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def fails(capsys, argv: list[str], *expected: str, code: int = 2) -> str:
    """Run the command line; it must exit with ``code`` and one error line holding every ``expected``
    text, with no traceback. Returns the line."""
    assert main([str(a) for a in argv]) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("lightreasoner ")]
    assert len(lines) == 1, err
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def unwritable(tmp_path: Path) -> Path:
    """A folder nothing can be created in: read-only by permission, or (as root, whom permissions do
    not stop) under /sys, which no one may create files in."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder / "out"
    if not Path("/sys/kernel").is_dir():
        pytest.skip("running as root without /sys: no folder to make unwritable")
    return Path("/sys/kernel/lightreasoner-test/out")


# ------------------------------------------------------------------------------------------ security


def remote_code_model(root: Path, expert: Path) -> tuple[Path, Path]:
    """A copy of the expert whose tokenizer config names a Python class of its own (auto_map); importing
    that module writes a marker file. Returns the folder and the marker."""
    folder = root / "remote-model"
    shutil.copytree(expert, folder)
    marker = root / "remote-code-ran"
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    settings.update(auto_map={"AutoTokenizer": [None, "evil.EvilTokenizer"]}, tokenizer_class="EvilTokenizer")
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    (folder / "evil.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
                                    "from transformers import PreTrainedTokenizerFast\n\n\n"
                                    "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n")
    return folder, marker


def test_restore_never_runs_code_the_published_folder_asks_for(pair, tmp_path, capsys, data):
    model, marker = remote_code_model(tmp_path, pair[0])
    published = tmp_path / "published"
    published.mkdir()
    (published / "run.json").write_text(json.dumps({"settings": {"expert": str(model)}}))
    # The header asks for remote code and names the model: restore must take neither's word for trust.
    header = {"type": "header", "format": "lightreasoner-samples", "version": 1, "expert": str(model),
              "amateur": str(pair[1]), "tokenizer": {"fingerprint": "0" * 64, "vocab_size": 10},
              "settings": {"data": str(data), "split": "train", "limit": None, "seed": 0, "trust_remote_code": True,
                           "system_prompt": "Please reason step by step."}}
    (published / "samples.outputs.jsonl").write_text(json.dumps(header) + "\n")
    before = fingerprint(published, model)
    fails(capsys, ["restore", published, tmp_path / "run", "--data-dir", tmp_path],
          f"{model}: its tokenizer needs remote code (evil.EvilTokenizer in tokenizer_config.json)",
          "pass --trust-remote-code")
    assert not marker.exists()
    assert not (tmp_path / "run").exists()  # a failed restore leaves nothing that blocks the next one
    assert fingerprint(published, model) == before
    # The test model really runs its code when the user allows it (the fingerprint then differs).
    fails(capsys, ["restore", published, tmp_path / "run", "--trust-remote-code"], "made with another tokenizer")
    assert marker.read_text() == "ran"


def test_the_report_and_adapter_fit_run_tokenizer_code_only_when_allowed(pair, tmp_path, monkeypatch):
    from lightreasoner import adapter_fit, models
    from lightreasoner.errors import LightReasonerError
    from lightreasoner.report import report_tokenizer

    model, marker = remote_code_model(tmp_path, pair[0])
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"settings": {"expert": str(model)}}))
    (run / "samples.jsonl").write_text("")
    with pytest.raises(LightReasonerError, match="needs remote code"):
        report_tokenizer(run)
    assert not marker.exists()
    assert report_tokenizer(run, trust_remote_code=True) is not None and marker.read_text() == "ran"

    # `run --trust-remote-code` reaches the fit check after training (it loads the tokenizer first).
    asked = []

    def load_tokenizer(spec, *, trust_remote_code=False):
        asked.append(trust_remote_code)
        raise LightReasonerError("stop here")

    monkeypatch.setattr(models, "load_tokenizer", load_tokenizer)
    (run / "adapter").mkdir()
    (run / "adapter" / "train_summary.json").write_text(json.dumps({"config": {}}))
    for trust in (True, False):
        with pytest.raises(LightReasonerError, match="stop here"):
            adapter_fit.adapter_fit(str(model), run / "samples.jsonl", run / "adapter", trust_remote_code=trust)
    assert asked == [True, False]


def test_remote_code_is_never_turned_on_by_a_yaml_file(pair, data, tmp_path, capsys):
    for text in ("trust_remote_code: true\n", "sample:\n  trust-remote-code: true\n"):
        (tmp_path / "c.yaml").write_text(text)
        fails(capsys, sample_args(pair, data, tmp_path / "out.jsonl", "--config", tmp_path / "c.yaml"),
              "c.yaml", "trust", "only the --trust-remote-code option of the command turns it on")
    (tmp_path / "run.yaml").write_text("train:\n  trust_remote_code: true\n")
    fails(capsys, ["run", "--config", tmp_path / "run.yaml", "--out", tmp_path / "run"], "run.yaml: train: trust")
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------ nothing destroyed


def test_sample_refuses_a_users_file_before_repairing_it(pair, data, tmp_path, capsys):
    out = tmp_path / "mine.jsonl"
    out.write_text('{"a": 1}\n{"b": 2}')  # no final newline: it would look like a torn line of ours
    before = fingerprint(out, data)
    fails(capsys, sample_args(pair, data, out), f"{out}: exists and is not a lightreasoner sample file")
    assert fingerprint(out, data) == before


def test_merge_and_train_refuse_to_write_into_their_own_inputs(pair, adapter, samples, tmp_path, capsys):
    before = fingerprint(pair[0], adapter, samples)
    merge = ["merge", "--model", pair[0], "--adapter", adapter, "--dtype", "float32", "--out"]
    fails(capsys, [*merge, pair[0]], f"--out {pair[0]}: is the model folder this command reads")
    relative = os.path.relpath(adapter)  # the same folder by another path
    fails(capsys, [*merge, relative], "is the adapter folder this command reads")
    fails(capsys, train_args(pair, samples, pair[0]), "is the model folder this command reads")
    fails(capsys, eval_args(pair[0], pair[0]), "is the model folder this command reads")
    fails(capsys, ["control", "--model", pair[0], "--samples", samples, "--out", pair[0]],
          "is the model folder this command reads")
    assert fingerprint(pair[0], adapter, samples) == before


def test_other_commands_refuse_users_files_and_their_own_inputs(pair, samples, tmp_path, capsys):
    mine = tmp_path / "mine.jsonl"
    mine.write_text('{"x": 1}\n')
    graded = tmp_path / "in.jsonl"
    graded.write_text(json.dumps({"completion": "The answer is 3.", "gold": "3"}) + "\n")
    before = fingerprint(mine, graded, samples)
    fails(capsys, ["score", "--benchmark", "gsm8k", "--input", graded, "--out", graded, "--quiet"],
          "is the --input file this command reads")
    fails(capsys, ["score", "--benchmark", "gsm8k", "--input", graded, "--out", mine, "--quiet"],
          f"{mine}: exists and is not a graded file")
    fails(capsys, ["export", "--samples", samples, "--out", samples], "is the --samples file")
    fails(capsys, ["export", "--samples", samples, "--out", mine], f"{mine}: exists and is not a reference-format")
    parquet = ["export", "--format", "parquet", "--samples", samples, "--out"]
    fails(capsys, [*parquet, samples], "is the --samples file")
    fails(capsys, [*parquet, mine], f"{mine}: exists and is not a Parquet export")
    answers = tmp_path / "results"  # a user's folder that happens to hold a file named like our answers
    answers.mkdir()
    (answers / "arith.jsonl").write_text('{"mine": true}')
    before[str(answers / "arith.jsonl")] = hashlib.sha256(b'{"mine": true}').hexdigest()
    fails(capsys, eval_args(pair[0], answers), "arith.jsonl: exists without the run.json")
    assert fingerprint(mine, graded, samples, answers) == before


def interrupted_samples(pair, data, out, monkeypatch) -> None:
    """A sample file whose run was stopped after its first question (Ctrl-C: exit code 130)."""
    calls, original = [], sampling.sample_batch

    def stop_on_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(sampling, "sample_batch", stop_on_second_batch)
        assert main(sample_args(pair, data, out, "--beta", "0")) == 130


def test_train_and_control_refuse_an_unfinished_sample_file_unless_told(pair, data, tmp_path, capsys, monkeypatch):
    samples = tmp_path / "samples.jsonl"
    interrupted_samples(pair, data, samples, monkeypatch)
    capsys.readouterr()
    before = fingerprint(samples, samples.with_name("samples.jsonl.meta.json"))
    message = "its sampling run did not finish: it holds 1 of the 3 questions its run asked for"
    fails(capsys, train_args(pair, samples, tmp_path / "adapter"), f"{samples}: {message}", "--allow-incomplete")
    fails(capsys, ["control", "--model", pair[0], "--samples", samples, "--out", tmp_path / "control"], message)
    assert not (tmp_path / "adapter").exists() and not (tmp_path / "control").exists()
    assert fingerprint(samples, samples.with_name("samples.jsonl.meta.json")) == before
    samples.with_name("samples.jsonl.meta.json").unlink()
    fails(capsys, train_args(pair, samples, tmp_path / "adapter"), "no samples.jsonl.meta.json beside it",
          "it holds 1 question(s)")
    assert main(train_args(pair, samples, tmp_path / "adapter", "--allow-incomplete")) == 0


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_limit_below_one_is_refused(pair, data, tmp_path, capsys, limit):
    fails(capsys, sample_args(pair, data, tmp_path / "out.jsonl", "--limit", limit), f"--limit: must be >= 1, got {limit}")
    fails(capsys, eval_args(pair[0], tmp_path / "eval", "--limit", limit), "--limit: must be >= 1")
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "eval").exists()


# ------------------------------------------------------------------------------------------ no locked folders


@pytest.mark.parametrize("bad,message", [
    (["--learning-rate", "-1"], "--learning-rate: must be > 0, got -1.0"),
    (["--target-modules", "nosuch_proj"], "--target-modules: Target modules {'nosuch_proj'} not found"),
])
def test_a_failed_training_start_does_not_lock_its_folder(pair, samples, tmp_path, capsys, bad, message):
    out = tmp_path / "adapter"
    before = fingerprint(samples, pair[0])
    fails(capsys, train_args(pair, samples, out, *bad), message)
    assert not (out / "train_run.json").exists()
    assert main(train_args(pair, samples, out)) == 0  # the corrected command, same folder
    assert json.loads((out / "train_summary.json").read_text())["optimizer_steps"] == 1
    assert fingerprint(samples, pair[0]) == before


def test_a_garbage_adapter_does_not_lock_the_evaluation_folder(pair, adapter, tmp_path, capsys):
    garbage = tmp_path / "garbage"
    shutil.copytree(adapter, garbage)
    (garbage / "adapter_model.safetensors").write_bytes(b"not a safetensors file" * 4)
    out = tmp_path / "eval"
    fails(capsys, eval_args(pair[0], out, "--adapter", garbage),
          f"{garbage / 'adapter_model.safetensors'}: not a readable safetensors file")
    assert not (out / "run.json").exists() and not list(out.glob("*.jsonl"))
    assert main(eval_args(pair[0], out, "--adapter", adapter)) == 0
    assert json.loads((out / "run.json").read_text())["adapter"] == str(adapter)


def test_a_failed_sft_or_control_start_does_not_lock_its_arm_folder(pair, samples, tmp_path, capsys):
    out = tmp_path / "control"
    control = ["control", "--model", pair[0], "--samples", samples, "--out", out, "--max-steps", "1",
               "--steps-per-update", "2", "--dtype", "float32"]
    fails(capsys, [*control, "--target-modules", "nosuch_proj"], "--target-modules")
    assert main([str(a) for a in control]) == 0  # arm.json of the failed start binds nothing
    assert json.loads((out / "arm.json").read_text())["train"]["target_modules"] == ["q_proj", "v_proj"]


def test_a_control_whose_training_failed_keeps_its_examples_and_their_seed(pair, samples, tmp_path, capsys):
    out = tmp_path / "random"
    control = ["control", "--model", pair[0], "--samples", samples, "--out", out, "--positions", "random",
               "--max-steps", "1", "--steps-per-update", "2", "--dtype", "float32", "--quiet"]
    fails(capsys, [*control, "--seed", "1", "--target-modules", "nosuch_proj"], "--target-modules")
    examples = fingerprint(out / "examples.jsonl")  # written before the training failed
    assert json.loads((out / "examples.jsonl").read_text().splitlines()[0])["control"]["seed"] == 1
    fails(capsys, [*control, "--seed", "2"], "train.seed=1, now 2")  # the seed drew the examples' positions
    assert main([str(a) for a in [*control, "--seed", "1"]]) == 0  # the other training settings were free
    assert fingerprint(out / "examples.jsonl") == examples
    capsys.readouterr()
    # train takes the examples as finished in their folder; a copy elsewhere is not known to be
    elsewhere = tmp_path / "copy" / "examples.jsonl"
    elsewhere.parent.mkdir()
    shutil.copyfile(out / "examples.jsonl", elsewhere)
    assert main(train_args(pair, out / "examples.jsonl", tmp_path / "adapter")) == 0
    fails(capsys, train_args(pair, elsewhere, tmp_path / "adapter2"), f"{elsewhere}: a control's examples",
          "--allow-incomplete")
    assert main(train_args(pair, elsewhere, tmp_path / "adapter2", "--allow-incomplete")) == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_a_failed_run_start_does_not_lock_the_run_folder(pair, tmp_path, capsys):
    run = ["run", "--expert", pair[0], "--amateur", pair[1], "--arms", "baseline", "--eval-limit", "2",
           "--eval-max-new-tokens", "4", "--dtype", "float32", "--out", tmp_path / "run", "--quiet"]
    fails(capsys, [*run, "--device", "cuda"], "--device cuda: CUDA is not available")
    stages = tmp_path / "run" / "stages.json"  # the device may be refused before the stage bookkeeping starts
    assert not stages.exists() or "eval_before" not in json.loads(stages.read_text())
    assert main([str(a) for a in [*run, "--device", "cpu"]]) == 0  # eval.device was cuda: free until it ran
    assert json.loads((tmp_path / "run" / "stages.json").read_text())["eval_before"]["done"]


# ------------------------------------------------------------------------------------------ one error path


def test_non_utf8_data_names_file_and_line(pair, tmp_path, capsys):
    data = tmp_path / "questions.jsonl"
    data.write_bytes(b'{"question": "fine"}\n{"question": "caf\xe9"}\n')
    before = fingerprint(data)
    fails(capsys, sample_args(pair, data, tmp_path / "out.jsonl"), f"{data}:2: not UTF-8 text (byte 0xe9 at column 18)")
    fails(capsys, ["score", "--benchmark", "gsm8k", "--input", data, "--out", tmp_path / "g.jsonl", "--quiet"],
          f"{data}:2: not UTF-8 text")
    (tmp_path / "c.yaml").write_bytes(b"beta: 0.4\n# caf\xe9\n")
    fails(capsys, sample_args(pair, data, tmp_path / "out.jsonl", "--config", tmp_path / "c.yaml"),
          "c.yaml:2: not UTF-8 text")
    assert fingerprint(data) == before and not (tmp_path / "out.jsonl").exists()


def test_unwritable_outputs_fail_before_any_work(pair, data, samples, tmp_path, capsys, monkeypatch):
    out = unwritable(tmp_path)
    graded = tmp_path / "in.jsonl"
    graded.write_text(json.dumps({"completion": "3", "gold": "3"}) + "\n")
    # Nothing may be computed for an output that cannot be written: no model is loaded, nothing graded.
    import lightreasoner.evaluation as evaluation
    import lightreasoner.models as models

    monkeypatch.setattr(models.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("model loaded"))
    monkeypatch.setattr(evaluation.grading, "grade", lambda *a, **k: pytest.fail("graded"))
    for argv in (sample_args(pair, data, out / "s.jsonl"), eval_args(pair[0], out), train_args(pair, samples, out),
                 ["score", "--benchmark", "gsm8k", "--input", graded, "--out", out / "g.jsonl", "--quiet"]):
        fails(capsys, argv, f"{out}", "cannot write in")


def test_a_full_disk_is_one_line_and_the_run_resumes_identically(pair, data, tmp_path, capsys, monkeypatch):
    assert main(sample_args(pair, data, tmp_path / "straight.jsonl")) == 0
    out = tmp_path / "out.jsonl"
    write = JsonlAppender.write
    calls = []

    def disk_full_on_second_write(self, records):
        calls.append(1)
        if len(calls) == 2 and self.path == out:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out))
        return write(self, records)

    monkeypatch.setattr(JsonlAppender, "write", disk_full_on_second_write)
    fails(capsys, sample_args(pair, data, out), f"{out}: No space left on device",
          "run the same command again to continue")
    monkeypatch.undo()
    assert main(sample_args(pair, data, out)) == 0
    assert out.read_bytes() == (tmp_path / "straight.jsonl").read_bytes()


def test_merge_with_a_missing_or_garbage_adapter(pair, adapter, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(adapter, broken)
    (broken / "adapter_model.safetensors").unlink()
    merge = ["merge", "--model", pair[0], "--out", tmp_path / "merged", "--adapter"]
    fails(capsys, [*merge, broken], f"{broken}: no adapter_model.safetensors")
    (broken / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    fails(capsys, [*merge, broken], f"{broken / 'adapter_model.safetensors'}: not a readable safetensors file")
    fails(capsys, [*merge, tmp_path / "nowhere"], "no adapter_config.json here")
    assert not (tmp_path / "merged").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_on_a_machine_without_it(pair, data, tmp_path, capsys):
    fails(capsys, [*sample_args(pair, data, tmp_path / "out.jsonl"), "--device", "cuda"],
          "--device cuda: CUDA is not available")
    fails(capsys, eval_args(pair[0], tmp_path / "eval", "--device", "cuda:1"), "--device cuda:1: CUDA is not available")
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "eval").exists()


def test_a_model_folder_without_tokenizer(pair, data, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        shutil.copy(pair[1] / name, bare / name)
    fails(capsys, sample_args((pair[0], bare), data, tmp_path / "out.jsonl"), f"{bare}: no tokenizer in this folder")
    fails(capsys, eval_args(bare, tmp_path / "eval"), f"{bare}: no tokenizer in this folder")
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "eval").exists()


def test_garbage_model_weights_name_the_file(pair, data, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(pair[1], broken)
    (broken / "model.safetensors").write_bytes(b"\x08" + b"\0" * 63)
    fails(capsys, sample_args((pair[0], broken), data, tmp_path / "out.jsonl"),
          f"{broken / 'model.safetensors'}: cannot read the model's weights")


def test_a_bug_is_one_line_with_exit_code_1_and_debug_shows_the_traceback(pair, data, tmp_path, capsys,
                                                                          monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(sampling, "load_problems", broken)
    argv = sample_args(pair, data, tmp_path / "out.jsonl")
    fails(capsys, argv, "internal error: ZeroDivisionError: a bug", "--debug", code=1)
    with pytest.raises(ZeroDivisionError):
        main([*argv, "--debug"])
    with pytest.raises(ZeroDivisionError):
        main(["--debug", *argv])
    monkeypatch.setenv("LIGHTREASONER_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        main(argv)


# ------------------------------------------------------------------------------------------ settings checked


@pytest.mark.parametrize("text,message", [
    ("betta: 0.9\n", "c.yaml: unknown setting 'betta'; did you mean 'beta'?"),
    ("sample:\n  betta: 0.9\n", "c.yaml: sample: unknown setting 'betta'; did you mean 'beta'?"),
    ("evall:\n  limit: 3\n", "c.yaml: unknown setting 'evall'; did you mean 'eval'?"),
    ('beta: "high"\n', "c.yaml: beta: expected a number, got 'high'"),
    ('limit: "3"\n', "c.yaml: limit: expected a whole number, got '3'"),
    ("sample:\n  alpha: 2\n", "c.yaml: sample: alpha: must be in (0, 1], got 2.0"),
    ("beta: .nan\n", "c.yaml: beta: expected a finite number, got nan"),
    ("sample: 3\n", "c.yaml: section 'sample' must be a mapping"),
    ("beta: [0.4\n", "c.yaml: not valid YAML", ),
])
def test_every_yaml_value_is_checked_naming_its_key(pair, data, tmp_path, capsys, text, message):
    (tmp_path / "c.yaml").write_text(text)
    fails(capsys, sample_args(pair, data, tmp_path / "out.jsonl", "--config", tmp_path / "c.yaml"), message)
    assert not (tmp_path / "out.jsonl").exists()


def test_yaml_of_run_and_sft_checked_too(tmp_path, capsys):
    (tmp_path / "run.yaml").write_text("lora_r: 4\n")  # a training setting belongs in the train: section
    fails(capsys, ["run", "--config", tmp_path / "run.yaml"], "run.yaml: unknown setting 'lora_r'")
    (tmp_path / "run.yaml").write_text("train:\n  lora_rr: 4\n")
    fails(capsys, ["run", "--config", tmp_path / "run.yaml", "--out", tmp_path / "r"],
          "run.yaml: train: unknown setting 'lora_rr'; did you mean 'lora_r'?")
    (tmp_path / "run.yaml").write_text("train:\n  lora_r: four\n")
    fails(capsys, ["run", "--config", tmp_path / "run.yaml", "--out", tmp_path / "r"],
          "run.yaml: train: lora_r: expected a whole number, got 'four'")
    (tmp_path / "sft.yaml").write_text("sft:\n  temperature: 0\n  save_steps: 5\n")
    fails(capsys, ["sft", "--config", tmp_path / "sft.yaml", "--out", tmp_path / "s"],
          "sft.yaml: sft: temperature: must be > 0, got 0.0")
    (tmp_path / "sft.yaml").write_text("sft:\n  lora_r: 0\n")
    fails(capsys, ["sft", "--config", tmp_path / "sft.yaml", "--out", tmp_path / "s"], "sft.yaml: sft: lora_r: must be >= 1")
    assert not (tmp_path / "r").exists() and not (tmp_path / "s").exists()


@pytest.mark.parametrize("option,value,message", [
    ("--beta", "nan", "--beta: expected a finite number, got nan"),
    ("--alpha", "inf", "--alpha: expected a finite number, got inf"),
    ("--alpha", "0", "--alpha: must be in (0, 1], got 0.0"),
    ("--beta", "-1", "--beta: must be >= 0, got -1.0"),
    ("--max-new-tokens", "0", "--max-new-tokens: must be >= 1, got 0"),
    ("--batch-size", "0", "--batch-size: must be >= 1, got 0"),
])
def test_out_of_range_and_non_finite_options(pair, data, tmp_path, capsys, option, value, message):
    fails(capsys, [*sample_args(pair, data, tmp_path / "out.jsonl"), option, value], message)
    assert not (tmp_path / "out.jsonl").exists()


def test_train_settings_checked(pair, samples, tmp_path, capsys):
    fails(capsys, train_args(pair, samples, tmp_path / "a", "--max-steps", "0"), "--max-steps: must be >= 1, got 0")
    fails(capsys, train_args(pair, samples, tmp_path / "a", "--lora-dropout", "nan"), "--lora-dropout: expected a finite")
    fails(capsys, train_args(pair, samples, tmp_path / "a", "--lr-scheduler", "cosine"),
          "--lr-scheduler: expected one of linear, constant, got 'cosine'")
    fails(capsys, ["score", "--benchmark", "gsm8k", "--input", samples, "--out", tmp_path / "g", "--grading-timeout",
                   "0"], "--grading-timeout: must be > 0")
    assert not (tmp_path / "a").exists()


def test_options_are_never_abbreviated(pair, samples, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:  # --lr once meant --lr-scheduler
        main(train_args(pair, samples, tmp_path / "a", "--lr", "1e-2"))
    assert exited.value.code == 2 and "unrecognized arguments: --lr 1e-2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sam", "--out", "x"])
    assert not (tmp_path / "a").exists()


# ------------------------------------------------------------------------------------------ inputs that cannot fit


def test_a_question_past_the_context_is_refused_before_any_model_work(pair, tmp_path, capsys, monkeypatch):
    data = tmp_path / "questions.jsonl"
    data.write_text(json.dumps({"id": "short", "question": "What is 7 + 2?"}) + "\n" +
                    json.dumps({"id": "long", "question": "seven plus two " * 14_000}) + "\n")
    monkeypatch.setattr(sampling, "sample_batch", lambda *a, **k: pytest.fail("decoding ran"))
    fails(capsys, sample_args(pair, data, tmp_path / "out.jsonl"), f"{data}: question 'long': its prompt of",
          "plus --max-new-tokens 4 is past the 512-token context")
    assert not (tmp_path / "out.jsonl").exists()
    # A prompt that fits alone but not with the answer asked for is refused as well.
    fails(capsys, sample_args(pair, data, tmp_path / "out.jsonl", "--limit", "1", "--max-new-tokens", "510"),
          "question 'short'", "plus --max-new-tokens 510")
    import lightreasoner.evaluation as evaluation

    monkeypatch.setattr(evaluation, "open_backend", lambda *a, **k: pytest.fail("a model was loaded"))
    fails(capsys, eval_args(pair[0], tmp_path / "eval", "--max-new-tokens", "600"),
          "arith: question", "plus --max-new-tokens 600 is past the 512-token context")
    assert not (tmp_path / "eval").exists()


def test_models_by_relative_or_absolute_path_are_the_same_and_files_record_absolute_ones(pair, data, tmp_path,
                                                                                         capsys, monkeypatch):
    out = tmp_path / "out.jsonl"
    monkeypatch.chdir(pair[0].parent)
    relative = ["--expert", pair[0].name, "--amateur", pair[1].name]
    assert main([*sample_args(pair, data, out, "--limit", "2"), *relative]) == 0
    header = json.loads(out.read_text().splitlines()[0])
    assert header["expert"] == str(pair[0].resolve()) and header["amateur"] == str(pair[1].resolve())
    # The same models by absolute path continue the file (one more question), and the other way round.
    assert main(sample_args(pair, data, out)) == 0
    assert len(out.read_text().splitlines()) == 1 + len(QUESTIONS)
    assert main([*sample_args(pair, data, out), *relative]) == 0
    monkeypatch.chdir(tmp_path)  # a later command from another folder finds the model the file names
    assert main(["export", "--samples", str(out), "--out", str(tmp_path / "ref.jsonl")]) == 0
    evaluated = tmp_path / "eval"
    monkeypatch.chdir(pair[0].parent)
    assert main(eval_args(pair[0].name, evaluated)) == 0
    assert main(eval_args(pair[0], evaluated)) == 0  # resumes: same model
    assert json.loads((evaluated / "run.json").read_text())["model"] == str(pair[0].resolve())


def test_duplicate_ids_are_noted(pair, tmp_path, capsys, caplog):
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps({"id": "a", "question": q}) + "\n" for q in QUESTIONS[:2]))
    with caplog.at_level("WARNING"):
        assert main(sample_args(pair, data, tmp_path / "out.jsonl")) == 0
    notes = [r.getMessage() for r in caplog.records if "ids repeat" in r.getMessage()]
    assert notes == [f"note: {data}: question ids repeat (1 of them, first 'a'); a repeat is read as a#1, a#2, ..."]
    ids = [json.loads(line)["id"] for line in (tmp_path / "out.jsonl").read_text().splitlines()[1:]]
    assert ids == ["a", "a#1"]


# ------------------------------------------------------------------------------------------ cases that held already


@pytest.mark.parametrize("content,message", [
    ("", "no problems in file (empty)"),
    ('{"question": "a"}\n{"question": \n', "questions.jsonl:2: not valid JSON"),
    ("\x00\x01garbled\n", "questions.jsonl:1: not valid JSON"),
    ('{"question": "a"}\n{"id": 3, "text": "b"}\n', "questions.jsonl:2: missing field 'question'"),
])
def test_bad_data_files(pair, tmp_path, capsys, content, message):
    data = tmp_path / "questions.jsonl"
    data.write_text(content)
    fails(capsys, sample_args(pair, data, tmp_path / "out.jsonl"), message)
    assert not (tmp_path / "out.jsonl").exists()


def test_unknown_names_and_missing_paths(pair, data, tmp_path, capsys):
    fails(capsys, sample_args(pair, "gsm9k", tmp_path / "out.jsonl"), "unknown data source 'gsm9k'")
    fails(capsys, eval_args(pair[0], tmp_path / "eval", "--benchmarks", "gsm9k"), "--benchmarks: unknown benchmark")
    fails(capsys, sample_args((tmp_path / "nope", pair[1]), data, tmp_path / "out.jsonl"), "model path not found")
    fails(capsys, [*sample_args(pair, data, tmp_path / "out.jsonl"), "--config", tmp_path / "none.yaml"],
          "none.yaml: config file not found")
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "eval").exists()


def test_models_with_different_tokenizers(pair, data, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(pair[1] / name, other / name)
    make_tokenizer(corpus=["Zebras quietly juggle seventy purple xylophones."] * 3).save_pretrained(other)
    fails(capsys, sample_args((pair[0], other), data, tmp_path / "out.jsonl"), "tokenizers differ at id")
    assert not (tmp_path / "out.jsonl").exists()


def test_resume_with_another_setting_is_refused(pair, data, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    assert main(sample_args(pair, data, out, "--limit", "1")) == 0
    before = fingerprint(out)
    fails(capsys, [*sample_args(pair, data, out), "--alpha", "0.5"], f"{out}: made with alpha=0.2")
    assert fingerprint(out) == before


def test_train_on_broken_sample_files(pair, samples, tmp_path, capsys):
    torn = tmp_path / "torn.jsonl"
    torn.write_bytes(samples.read_bytes()[:-20])
    shutil.copy(samples.with_name("samples.jsonl.meta.json"), tmp_path / "torn.jsonl.meta.json")
    fails(capsys, train_args(pair, torn, tmp_path / "a"), f"{torn}:{len(QUESTIONS) + 1}: not valid JSON")
    headless = tmp_path / "headless.jsonl"
    headless.write_text("".join(samples.read_text().splitlines(keepends=True)[1:]))
    fails(capsys, train_args(pair, headless, tmp_path / "a"), f"{headless}:1: neither a lightreasoner sample header")
    assert not (tmp_path / "a").exists()


def test_adapter_without_weights(pair, adapter, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(adapter / "adapter_config.json", empty)
    fails(capsys, eval_args(pair[0], tmp_path / "eval", "--adapter", empty), f"{empty}: no adapter_model.safetensors")
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("line,message", [
    ({"gold": "3"}, "in.jsonl:1: field 'completion' missing"),
    ({"completion": "3"}, "in.jsonl:1: needs 'gold' or an 'id'"),
    ({"completion": "3", "id": "x"}, "gsm8k/test.jsonl: benchmark file not found"),
])
def test_score_bad_lines(tmp_path, capsys, line, message):
    (tmp_path / "in.jsonl").write_text(json.dumps(line) + "\n")
    fails(capsys, ["score", "--benchmark", "gsm8k", "--input", tmp_path / "in.jsonl", "--out", tmp_path / "g.jsonl",
                   "--data-dir", tmp_path / "no-data", "--quiet"], message)
    assert not (tmp_path / "g.jsonl").exists()


def test_invalid_yaml_names_file_line_and_column(pair, data, tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("beta: 0.4\nalpha: [0.2\n")
    line = fails(capsys, sample_args(pair, data, tmp_path / "out.jsonl", "--config", tmp_path / "c.yaml"),
                 "c.yaml: not valid YAML")
    assert "line 3, column 1" in line
