"""The README's commands are ones the tools accept, its links lead inside the repository, and its
library example runs."""

import re
import shlex

import pytest
import typer

from pipeline.cli import app
from pipeline.params import load_params
from tests.helpers import ROOT

README = (ROOT / "README.md").read_text()
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def commands(program: str) -> list[list[str]]:
    """Every ``program ...`` command of the README's bash blocks, comments and placeholders cut."""
    out = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s#.*$", "", line)
            lexer = shlex.shlex(line, posix=True, punctuation_chars="|&;")
            lexer.whitespace_split = True
            words = []
            for token in [*lexer, ";"]:
                if token.strip("|&;"):
                    words.append(token)
                    continue
                if words[:1] == [program]:
                    out.append([w for w in words[1:] if not w.startswith(("$(", "<"))])
                words = []
    return out


def overrides(words: list[str]) -> list[str]:
    return [words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-S", "--set")]


def test_every_ffl_command_parses():
    cli = typer.main.get_command(app)
    found = commands("ffl")
    assert len(found) >= 8
    for words in found:
        if words == ["--version"]:
            continue
        sub = cli.get_command(None, words[0])
        assert sub is not None, f"ffl {words[0]}: no such command"
        if words[0] != "bench":  # bench parses its own options (argparse), checked below
            sub.make_context(words[0], words[1:])
        params = next((words[i + 1] for i, w in enumerate(words) if w in ("-p", "--params")), "params.yaml")
        load_params(ROOT / params, overrides(words))  # raises naming the key if a value is refused


def test_every_dvc_exp_run_sets_params_that_exist():
    found = [w for w in commands("dvc") if w[:2] == ["exp", "run"]]
    assert len(found) >= 5
    for words in found:
        load_params(ROOT / "params.yaml", overrides(words))


def test_docs_link_only_to_files_in_the_repository():
    for doc in DOCS:
        text = doc.read_text()
        assert "shared/" not in text, f"{doc.name} points outside the repository"
        for target in re.findall(r"\]\(([^)#\s]+)\)", text):
            if not target.startswith(("http://", "https://")):
                assert (doc.parent / target).exists(), f"{doc.name}: {target} does not exist"
        for path in re.findall(r"`((?:configs|docs|benchmarks)/[\w./-]+)`", text):
            assert (ROOT / path).exists(), f"{doc.name}: {path} does not exist"


@pytest.mark.slow
def test_the_library_example_runs(tmp_path, monkeypatch, capsys):
    (code,) = blocks("python")
    short = code.replace("make_shapes(1000, 1000)", "make_shapes(16, 6)").replace(
        "epochs=30, milestones=[15, 23]", "epochs=2, milestones=[1]"
    )
    assert short.count("make_shapes(16, 6)") == 1 and short.count("epochs=2,") == 1  # the example still fits
    monkeypatch.chdir(tmp_path)
    printed = []
    exec(compile(short, "README.md", "exec"), {"print": printed.append})
    (errors,) = printed
    assert set(errors) == {"sub0", "sub1", "ensemble", "fused"}
    epochs = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert [e.split(":")[0] for e in epochs] == ["epoch 1/2", "epoch 2/2"]  # progress, a line per epoch
    assert "validation error sub0" in epochs[0] and "fused" in epochs[0]
    assert all(v == round(v, 2) for v in errors.values())
    assert (tmp_path / "model.pt").exists()
