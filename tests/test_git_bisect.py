"""docs/plugin.md, "Which commit broke it": ``git bisect run`` with ``pytest --cw-seed=N``.

A tiny repository of four commits; the third makes a bank's deposit read, await, then write
(a lost update some seeds catch). A failing seed found at the newest commit, handed to
``git bisect run``, names the third commit.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

BANK_GOOD = '''
import asyncio

class Bank:
    def __init__(self):
        self.balance = 0

    async def deposit(self, amount, delay=0):
        for _ in range(delay):
            await asyncio.sleep(0)
        self.balance += amount          # read and write with no await between
'''

BANK_BAD = '''
import asyncio

class Bank:
    def __init__(self):
        self.balance = 0

    async def deposit(self, amount, delay=0):
        for _ in range(delay):
            await asyncio.sleep(0)
        balance = self.balance
        await asyncio.sleep(0)          # "audit log" await between read and write: the race
        self.balance = balance + amount
'''

TEST = '''
from bank import Bank

async def test_deposits(deterministic_context):
    bank = Bank()
    ctx = deterministic_context
    a = ctx.with_label("a").spawn(lambda _: bank.deposit(10))
    b = ctx.with_label("b").spawn(lambda _: bank.deposit(5, delay=1))
    await a
    await b
    assert bank.balance == 15, "lost update"
'''


def _git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.invalid", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.invalid", GIT_CONFIG_NOSYSTEM="1", GIT_TERMINAL_PROMPT="0")
    env["GIT_CONFIG_GLOBAL"] = os.devnull
    return subprocess.run(["git", "-c", "commit.gpgsign=false", "-c", "init.defaultBranch=main", *args], cwd=repo,
                          capture_output=True, text=True, env=env, timeout=600, check=check)


def _commit(repo: Path, message: str, files: dict[str, str]) -> str:
    for name, text in files.items():
        (repo / name).write_text(text)
    _git(repo, "add", *files)
    _git(repo, "commit", "-q", "-m", message)
    return _git(repo, "rev-parse", "HEAD").stdout.strip()


def _pytest(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=repo,
                          capture_output=True, text=True, env=_env(), timeout=600, check=False)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "runtime"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def test_git_bisect_run_with_a_failing_seed_finds_the_commit(tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not on PATH")
    repo = tmp_path / "bank"
    repo.mkdir()
    _git(repo, "init", "-q")
    good = _commit(repo, "bank and its test", {"bank.py": BANK_GOOD, "test_x.py": TEST, ".gitignore": "traces/\n"})
    _commit(repo, "readme", {"README": "a bank\n"})
    culprit = _commit(repo, "deposit: write an audit log entry", {"bank.py": BANK_BAD})
    _commit(repo, "readme: more", {"README": "a bank, with deposits\n"})

    # A sweep at the newest commit: which seeds fail?
    sweep = _pytest(repo, "--cw-seeds=16", "--cw-record=none", "test_x.py")
    failing = sorted({int(s) for s in re.findall(r"FAILED test_x\.py::test_deposits\[seed=(\d+)\]", sweep.stdout)})
    assert sweep.returncode == 1 and failing, sweep.stdout[-3000:]
    seed = failing[0]

    # git bisect: the newest commit is bad, the first good; pytest's exit code judges the rest.
    _git(repo, "bisect", "start")
    _git(repo, "bisect", "bad", "HEAD")
    _git(repo, "bisect", "good", good)
    env_python = sys.executable
    run = subprocess.run(
        ["git", "bisect", "run", env_python, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--cw-seed={seed}",
         "test_x.py"],
        cwd=repo, capture_output=True, text=True, timeout=600, check=False,
        env=dict(_env(), GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull),
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert f"{culprit} is the first bad commit" in run.stdout, run.stdout[-3000:]
    assert _git(repo, "rev-parse", "refs/bisect/bad").stdout.strip() == culprit
    _git(repo, "bisect", "reset")
