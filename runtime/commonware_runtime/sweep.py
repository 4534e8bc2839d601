"""The seed sweep: run every bundled example on many seeds of the deterministic runtime.

Each example is a module with ``async def main(context)``.  A module that also has
``async def after_crash(context)`` is run as ``main``, a simulated crash, then
``after_crash`` on the recovered state, and ``check(main_value, recovered_value)``
must accept the pair.  For every seed the sweep runs once (and the first few seeds twice, to check the run is reproducible); a failing
seed is reported with the command that reproduces it.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from .deterministic import Config, Runner
from .deterministic.strategies import ORDERINGS, make_strategy

DEFAULT_SEEDS = 100
DETERMINISM_CHECKS = 3


def load_examples(directory: Path) -> list[tuple[str, ModuleType]]:
    if not directory.is_dir():
        raise SystemExit(f"sweep: no examples directory at {directory}")
    found = []
    for path in sorted(directory.glob("*.py")):
        if path.name.startswith("_"):
            continue
        spec = importlib.util.spec_from_file_location(f"cw_example_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if callable(getattr(module, "main", None)):
            found.append((path.stem, module))
    if not found:
        raise SystemExit(f"sweep: no example with an async main(context) in {directory}")
    return found


def run_seed(module: ModuleType, seed: int, timeout: float, strategy: str = "swarm", ordering: str = "any") -> tuple[object, str]:
    runner = Runner(Config(seed=seed, timeout=timeout, strategy=strategy, ordering=ordering))
    after_crash = getattr(module, "after_crash", None)
    if after_crash is None:
        value = runner.start(module.main)
        assert runner.auditor_state is not None
        return value, runner.auditor_state
    before, checkpoint = runner.start_and_recover(module.main)
    restarted = Runner.from_checkpoint(checkpoint)
    after = restarted.start(after_crash)
    module.check(before, after)
    assert restarted.auditor_state is not None
    return (before, after), restarted.auditor_state


def sweep(directory: Path, seeds: Sequence[int], timeout: float, strategy: str = "swarm", ordering: str = "any") -> int:
    failures = 0
    print(f"strategy {strategy}, ordering {ordering}")
    print(f"{'example':<16} {'seeds':>6} {'failed':>7} {'distinct runs':>14} {'wall s':>8}")
    for name, module in load_examples(directory):
        started = time.perf_counter()
        states: dict[str, int] = {}
        failed: list[tuple[int, str]] = []
        for index, seed in enumerate(seeds):
            try:
                value, state = run_seed(module, seed, timeout, strategy, ordering)
                if index < DETERMINISM_CHECKS:
                    again = run_seed(module, seed, timeout, strategy, ordering)
                    if again != (value, state):
                        raise AssertionError(f"seed {seed} is not reproducible: {state} then {again[1]}")
                states[state] = states.get(state, 0) + 1
            except Exception as exc:  # noqa: BLE001 - each failing seed is reported below
                failed.append((seed, "".join(traceback.format_exception_only(type(exc), exc)).strip()))
        wall = time.perf_counter() - started
        print(f"{name:<16} {len(seeds):>6} {len(failed):>7} {len(states):>14} {wall:>8.2f}")
        for seed, message in failed[:5]:
            print(f"    seed {seed}: {message.splitlines()[0]}")
            print(f"    reproduce: python -m commonware_runtime sweep --examples {directory} --seed {seed} "
                  f"--strategy {strategy} --ordering {ordering}")
        failures += len(failed)
    print("all seeds passed" if failures == 0 else f"{failures} failing run(s)")
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m commonware_runtime", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sweep", help="run the bundled examples over many seeds")
    p.add_argument("--examples", type=Path, default=Path("examples"), help="directory of example modules")
    p.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, help=f"number of seeds (default {DEFAULT_SEEDS})")
    p.add_argument("--seed-base", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--seed", type=int, default=None, help="run exactly this seed")
    p.add_argument("--timeout", type=float, default=600.0, help="virtual-time deadline per run, seconds")
    p.add_argument("--strategy", default="swarm", help="scheduling strategy (default swarm: the seed picks one)")
    p.add_argument("--ordering", default="any", choices=ORDERINGS, help="which orders may happen (default any)")
    args = parser.parse_args(argv)
    if args.seeds <= 0:
        parser.error(f"--seeds must be positive, got {args.seeds}")
    try:
        make_strategy(args.strategy)
    except ValueError as exc:
        parser.error(f"--strategy: {exc}")
    seeds = [args.seed] if args.seed is not None else list(range(args.seed_base, args.seed_base + args.seeds))
    return sweep(args.examples, seeds, args.timeout, args.strategy, args.ordering)


if __name__ == "__main__":
    sys.exit(main())
