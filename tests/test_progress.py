"""Long stages print plain start/end lines when stderr is not a terminal (logs, CI)."""

from __future__ import annotations

import io
import re
import subprocess
import sys

import pytest

from edgezoo.progress import stage

DONE = re.compile(r"edgezoo: (.+) done in [0-9.]+ (s|min)")


def test_stage_prints_start_and_timed_end_lines_off_a_terminal():
    out = io.StringIO()
    with stage("packing", out):
        pass
    assert out.getvalue().splitlines()[0] == "edgezoo: packing …"
    assert DONE.fullmatch(out.getvalue().splitlines()[1])
    out = io.StringIO()
    with pytest.raises(ValueError), stage("unpacking", out):
        raise ValueError("boom")
    assert re.search(r"edgezoo: unpacking failed after [0-9.]+ s", out.getvalue())


def test_stage_on_a_terminal_prints_no_plain_start_line(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    with stage("packing", out):
        pass
    assert "edgezoo: packing …\n" not in out.getvalue()
    assert DONE.search(out.getvalue())
    monkeypatch.setenv("EDGEZOO_PROGRESS", "0")
    quiet = io.StringIO()
    with stage("packing", quiet):
        pass
    assert quiet.getvalue() == ""


def test_tokenizer_training_and_tokenization_report_their_stages(capsys, tmp_path):
    from edgezoo.zoo.data import token_cache
    from edgezoo.zoo.tokenizer import train_tokenizer

    (tmp_path / "a.txt").write_text("def f(x):\n    return x + 1\n" * 200)
    tok = train_tokenizer(["def f(x): return x"] * 50, vocab_size=300)
    token_cache(str(tmp_path), tok, val_frac=0.1)
    err = capsys.readouterr().err
    assert "edgezoo: training a 300-token BPE tokenizer …" in err
    assert f"edgezoo: tokenizing {tmp_path} …" in err
    assert [m.group(1) for m in DONE.finditer(err)] == [
        "training a 300-token BPE tokenizer",
        f"tokenizing {tmp_path}",
    ]


def test_cli_export_and_eval_print_stage_lines_to_a_pipe(tmp_path, tokenizer, capsys):
    from conftest import make_model_dir, tiny_llama

    make_model_dir(tmp_path, tiny_llama(), tokenizer)
    cmd = [sys.executable, "-m", "edgezoo.cli", "export", str(tmp_path), "--greedy-steps", "4"]
    err = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    stages = [m.group(1) for m in DONE.finditer(err)]
    name = tmp_path.name
    assert f"export {name}: build the portable graph" in stages
    assert f"export {name}: check the gqa graph" in stages
    from edgezoo.zoo.evaluate import evaluate_dir

    (tmp_path / "b.txt").write_text("x = 1\n" * 300)
    capsys.readouterr()
    evaluate_dir(tmp_path, str(tmp_path / "b.txt"))
    assert [m.group(1) for m in DONE.finditer(capsys.readouterr().err)][-1] == (
        f"evaluating {name} on the val split"
    )
