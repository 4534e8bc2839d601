"""Trace files: a recorded deterministic run as versioned YAML (see docs/trace-format.md).

A ``Recorder`` leaves a ``Schedule`` in memory (``trace.py``); this module is how one lives
on disk.  A trace holds what is needed to replay a run (the config and every scheduling
decision) and what is needed to explain it (test id, outcome, task labels, auditor
checkpoints): ``trace_from_schedule`` makes one of a finished run, ``write_trace`` and
``load_trace`` store and read it, ``config_from_dict`` turns its ``config`` back into the
``Config`` that replays it, ``trace_path`` names its file after the test and seed, and
``first_divergence`` compares two (the schedules' own comparison).

Writing is atomic (``atomicfile``: temp file, fsync, rename). Loading builds plain data only (no YAML
tags run code) from the YAML parser's events, with every size limit enforced as the file is
read (its size before reading, then nesting, values, aliases and the bytes of each part), so
a hostile file is refused after a bounded amount of work whatever its size or shape. Every
field and the consistency of the decoded schedule are then validated: a malformed,
truncated, hostile or future-version file fails with one ``TraceError`` line
``<file>: <problem>`` and never with a traceback from deep inside or with code execution.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import codecs
import collections
import dataclasses
import hashlib
import itertools
import json
import operator
import os
import platform
import re
import sys
import zlib
from array import array
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..atomicfile import atomic_write
from . import strategies
from .runner import Config
from .strategies import ORDERINGS
from .trace import Divergence, Schedule

__all__ = [
    "ENCODING",
    "FORMAT",
    "VERSION",
    "Divergence",
    "Trace",
    "TraceError",
    "atomic_write",
    "config_from_dict",
    "first_divergence",
    "format_version",
    "load_trace",
    "remove_failure_trace",
    "runtime_version",
    "trace_from_schedule",
    "trace_path",
    "write_trace",
]

FORMAT = "commonware-trace"
VERSION = 1  # the format version of docs/PLUGIN.md section 9, the one read and written
_DEVELOPMENT_VERSIONS = (2, 3)  # what builds before the first release wrote for the same content
ENCODING = "le-zlib-base64"  # the only `decisions.encoding`
LABELS_ENCODING = "json"  # the prefix of a compact `tasks` block

# Limits that keep a hostile or corrupt file from exhausting memory or time, each enforced
# while the file is read, before what it bounds is built (docs/trace-format.md, "Limits").
# A trace of a 5-million-decision run with many tasks is far below them: its schedule is a
# few compressed blocks, and more than INLINE_TASKS tasks or INLINE_CHECKPOINTS checkpoints
# are written as compact blocks too.
MAX_FILE_BYTES = 64 * 1024 * 1024  # the file, checked before reading
MAX_BLOCK_BYTES = 32 * 1024 * 1024  # the YAML text of one encoded block (`decisions.picks`, ...)
MAX_TEXT_BYTES = 16 * 1024 * 1024  # everything that is not an encoded block, together
MAX_NODES = 200_000  # YAML values in the document; an alias counts the values it repeats
MAX_DEPTH = 100  # YAML nesting
MAX_ALIASES = 1_000
MAX_NUMBER_CHARS = 1_000  # the text of one YAML int or float
MAX_STEPS = 20_000_000
MAX_TASKS = 5_000_000
MAX_LABELS_BYTES = 64 * 1024 * 1024  # a compact `tasks` block, decompressed
MAX_LABEL_CHARS = 65_536
MAX_TEXT_CHARS = 1_000_000  # test id, error message, version strings
MAX_PLAIN_NODES = 100_000  # values inside `config` and `extra`
MAX_PLAIN_DEPTH = 64
MAX_TIMING = 20_000_000  # timing choices (late wake-ups in both orderings, timer ties in "fifo")
MAX_STRATEGY_CHARS = 1_000

# Up to these, `tasks` and `checkpoints` are written as readable YAML.
INLINE_TASKS = 1_000
INLINE_CHECKPOINTS = 1_000

_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_ARRAY_SPEC = re.compile(r"([ui])(8|16|32|64):")
_REQUIRED = (
    "format", "version", "test", "seed", "runtime", "config", "outcome", "auditor",
    "steps", "tasks", "checkpoints", "decisions", "python", "commonware_runtime",
)
_OPTIONAL = ("error", "extra", "events")
_EVENT_KEYS = ("count", "tags", "kinds", "digests", "rounds")
MAX_EVENT_TAGS = 1_000
_DECISION_KEYS = (
    "encoding", "checkpoint_every", "ordering", "strategy", "chosen", "holds_back", "rounds", "timing_choices",
    "picks", "ids", "round_steps", "round_times", "timing",
)

# array typecodes by (signed, width in bytes): found by itemsize, which varies by platform.
_TYPECODES: dict[tuple[bool, int], str] = {}
for _code in "BHILQ":
    _TYPECODES.setdefault((False, array(_code).itemsize), _code)
for _code in "bhilq":
    _TYPECODES.setdefault((True, array(_code).itemsize), _code)
_BIG_ENDIAN = sys.byteorder == "big"


class TraceError(Exception):
    """A trace file cannot be read; ``str()`` is one line: ``<file>: <problem>``."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = " ".join(problem.split())  # one line, whatever the source said
        super().__init__(f"{self.path}: {self.problem}")


@dataclass
class Trace:
    """One recorded deterministic run (the fields of the file, see docs/trace-format.md).

    ``checkpoints`` are ``{"step": int, "time": int (virtual ns), "auditor": hex}``;
    ``tasks`` maps stable task id (from 1) to label; ``schedule`` is the runtime object a
    ``deterministic.Runner(config, replay=trace.schedule)`` replays.
    """

    test: str
    seed: int
    runtime: str
    config: dict[str, Any]
    outcome: str
    error: dict[str, str] | None
    auditor: str
    steps: int
    tasks: dict[int, str]
    checkpoints: list[dict[str, Any]]
    schedule: Schedule
    python: str = field(default_factory=platform.python_version)
    commonware_runtime: str = field(default_factory=lambda: runtime_version())
    extra: dict[str, Any] = field(default_factory=dict)

    def label(self, tid: int) -> str:
        """The label of task ``tid`` (``<callback>`` for 0, a plain loop callback)."""
        return self.schedule.task_label(tid)

    @property
    def ordering(self) -> str:
        """``"any"`` (the strategy chose every decision) or ``"fifo"`` (it chose timing only)."""
        return self.schedule.ordering

    @property
    def strategy(self) -> str:
        """The strategy the run was recorded under, with what it chose when that says more."""
        s = self.schedule
        return f"{s.strategy} (chose {s.chosen})" if s.chosen and s.chosen != s.strategy else s.strategy

    def failure(self, limit: int = 200) -> str:
        """``Type: message`` on one line (reports are one line per fact); empty if passed."""
        return self.schedule.failure(limit)


def runtime_version() -> str:
    """The installed commonware-runtime version (the package's own when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("commonware-runtime")
    except PackageNotFoundError:
        import commonware_runtime

        return str(getattr(commonware_runtime, "__version__", "unknown"))


# ------------------------------------------------------------------------------------------
# building and writing


def trace_from_schedule(
    schedule: Schedule, *, test: str, seed: int, config: dict[str, Any], runtime: str = "deterministic"
) -> Trace:
    """A ``Trace`` of a finished recorded run (``Recorder().schedule`` after the Runner returned or raised)."""
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a deterministic.Schedule, got {type(schedule).__name__}")
    if not isinstance(test, str) or not test:
        raise ValueError(f"test must be a non-empty str (the pytest node id), got {test!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if seed != schedule.seed:
        raise ValueError(f"seed {seed} is not the seed the schedule was recorded with ({schedule.seed})")
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict (e.g. Config.to_dict()), got {type(config).__name__}")
    if runtime != "deterministic":
        raise ValueError(f"only deterministic runs have a schedule to trace, got runtime={runtime!r}")
    if not _HEX64.match(schedule.auditor or ""):
        raise ValueError("the schedule is unfinished (no final auditor state): trace it after the Runner returned")
    if schedule.steps != len(schedule.ids) or len(schedule.ids) != len(schedule.picks):
        raise ValueError(
            f"the schedule is incomplete: the run counted {schedule.steps} steps, "
            f"{len(schedule.ids)} decisions were recorded (a run interrupted inside a round)"
        )
    if "ordering" in config and config["ordering"] != schedule.ordering:
        raise ValueError(f"config ordering {config['ordering']!r} is not the ordering the schedule was recorded "
                         f"with ({schedule.ordering!r})")
    tasks = {tid: label for tid, label in enumerate(schedule.labels) if tid > 0}
    checkpoints = [{"step": s, "time": t, "auditor": a} for s, t, a in schedule.checkpoints]
    error = None if schedule.error is None else dict(schedule.error)
    return Trace(
        test=test,
        seed=seed,
        runtime=runtime,
        config=dict(config),
        outcome=schedule.outcome,
        error=error,
        auditor=schedule.auditor,
        steps=schedule.steps,
        tasks=tasks,
        checkpoints=checkpoints,
        schedule=schedule,
    )


def write_trace(path: str | os.PathLike[str], trace: Trace) -> Path:
    """Write ``trace`` to ``path`` atomically (temp file in the same directory, fsync, rename)."""
    if not isinstance(trace, Trace):
        raise TypeError(f"trace must be a Trace, got {type(trace).__name__}")
    target = Path(os.fspath(path))
    document = _document(trace)
    try:
        # Never write what load_trace would refuse: the same checks run on the way out.
        _parse_document(document, str(target))
    except TraceError as exc:
        raise ValueError(f"refusing to write an invalid trace to {target}: {exc.problem}") from None
    text = yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
    atomic_write(target, text.encode("utf-8"))
    return target


def format_version(trace: Trace) -> int:
    """The format version ``write_trace`` writes ``trace`` as (every trace: ``VERSION``).

    More than ``INLINE_TASKS`` tasks or ``INLINE_CHECKPOINTS`` checkpoints are written as
    compact blocks, so that a trace of a long run with many tasks stays a few YAML values;
    a reader tells the two shapes apart by their type, so both are the same version.
    """
    return VERSION


def _document(trace: Trace) -> dict[str, Any]:
    schedule = trace.schedule
    doc: dict[str, Any] = {
        "format": FORMAT,
        "version": format_version(trace),
        "test": trace.test,
        "seed": trace.seed,
        "runtime": trace.runtime,
        "config": trace.config,
        "outcome": trace.outcome,
    }
    if trace.error is not None:
        doc["error"] = {"type": trace.error.get("type"), "message": trace.error.get("message")}
    doc.update(
        auditor=trace.auditor,
        steps=trace.steps,
        tasks=dict(trace.tasks) if len(trace.tasks) <= INLINE_TASKS else _Block(_encode_labels(trace.tasks)),
        checkpoints=_checkpoints(trace.checkpoints, schedule),
        decisions={
            "encoding": ENCODING,
            "checkpoint_every": schedule.checkpoint_every,
            "ordering": schedule.ordering,
            "strategy": schedule.strategy,
            "chosen": schedule.chosen,
            "holds_back": schedule.holds_back,
            "rounds": len(schedule.round_steps),
            "timing_choices": len(schedule.timing),
            # Callback seqs grow with the run and a decision takes a recent one: small deltas.
            "picks": _Block(_encode_array(schedule.picks, delta=True)),
            "ids": _Block(_encode_array(schedule.ids, delta=False)),
            "round_steps": _Block(_encode_array(schedule.round_steps, delta=True)),
            "round_times": _Block(_encode_array(schedule.round_times, delta=True)),
            "timing": _Block(_encode_array(schedule.timing, delta=False)),
        },
        python=trace.python,
        commonware_runtime=trace.commonware_runtime,
    )
    if schedule.events is not None:
        doc["events"] = _encode_events(schedule)
    if trace.extra:
        doc["extra"] = trace.extra
    return doc


def _encode_events(schedule: Schedule) -> dict[str, Any]:
    """The audited events of a run recorded with ``Recorder(events=True)`` (what the
    determinism check compares): each tag once, then per event its tag's index and its
    64-bit digest, and per round how many events came before it."""
    events = schedule.events or []
    tags: dict[str, int] = {}
    kinds = [tags.setdefault(tag, len(tags)) for tag, _ in events]
    return {
        "count": len(events),
        "tags": list(tags),
        "kinds": _Block(_encode_array(kinds, delta=False)),
        "digests": _Block(_encode_array([int(digest, 16) for _, digest in events], delta=False)),
        "rounds": _Block(_encode_array(schedule.event_rounds, delta=True)),
    }


class _Block(str):
    """A str dumped as a YAML literal block (wrapped base64 stays readable and diffable)."""


class _Flow(dict[str, Any]):
    """A mapping dumped on one line."""


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    """The safe dumper (the C emitter when libyaml is there: long base64 blocks are slow in Python)."""


_Dumper.add_representer(_Block, lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", str(v), style="|"))
_Dumper.add_representer(_Flow, lambda d, v: d.represent_mapping("tag:yaml.org,2002:map", v.items(), flow_style=True))


def _encode_labels(tasks: dict[int, str]) -> str:
    """A compact ``tasks`` block: ``json:`` then base64 of zlib of the JSON array of labels of tasks 1..N."""
    labels = [tasks.get(tid) for tid in range(1, len(tasks) + 1)]  # a gap stays null: the checks refuse it
    data = json.dumps(labels, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    return f"{LABELS_ENCODING}:" + _wrap(base64.b64encode(zlib.compress(data, 9)).decode("ascii"))


def _checkpoints(checkpoints: list[dict[str, Any]], schedule: Schedule) -> list[_Flow] | dict[str, Any]:
    """Readable up to ``INLINE_CHECKPOINTS``; beyond, their count, steps (delta-encoded) and auditors
    as 32-byte digests. Their times are their rounds' (loading checks that of every checkpoint),
    so not stored: checkpoints that are not exactly so stay readable, for the checks to name.
    """
    steps: list[Any] = [c.get("step") for c in checkpoints]
    times: list[Any] = [c.get("time") for c in checkpoints]
    auditors: list[Any] = [c.get("auditor") for c in checkpoints]
    rounds = schedule.round_steps
    if len(checkpoints) <= INLINE_CHECKPOINTS or not (
        all(isinstance(a, str) and _HEX64.match(a) for a in auditors)
        and all(type(s) is int and s >= 0 for s in steps)  # noqa: E721 (not a bool)
        and all(i < len(rounds) and rounds[i] == s and schedule.round_times[i] == t
                for s, t in zip(steps, times, strict=True) for i in (bisect.bisect_left(rounds, s),))
    ):
        return [_Flow(step=s, time=t, auditor=a) for s, t, a in zip(steps, times, auditors, strict=True)]
    digests = bytes.fromhex("".join(auditors))
    return {
        "count": len(checkpoints),
        "steps": _Block(_encode_array(steps, delta=True)),
        "auditors": _Block("u8:" + _wrap(base64.b64encode(zlib.compress(digests, 9)).decode("ascii"))),
    }


def _wrap(text: str) -> str:
    """Base64 wrapped at 76 characters, ending with a newline (a YAML literal block)."""
    return "\n".join([text[i : i + 76] for i in range(0, len(text), 76)] or [""]) + "\n"


def _encode_array(values: array[int] | list[int], *, delta: bool) -> str:
    """``<u|i><bits>:`` then base64 of zlib of the little-endian fixed-width values, wrapped at 76."""
    data = values.tolist() if isinstance(values, array) else list(values)
    if delta and data:
        data = [data[0], *map(operator.sub, itertools.islice(data, 1, None), data)]
    lo = min(data, default=0)
    hi = max(data, default=0)
    signed = lo < 0
    for width in (1, 2, 4, 8):
        bits = 8 * width
        if (signed and -(1 << (bits - 1)) <= lo and hi < (1 << (bits - 1))) or (not signed and hi < (1 << bits)):
            break
    else:
        raise ValueError(f"schedule value out of the 64-bit range: {lo if lo < -(1 << 63) else hi}")
    arr = array(_TYPECODES[(signed, width)], data)
    if _BIG_ENDIAN:
        arr.byteswap()
    text = base64.b64encode(zlib.compress(arr.tobytes(), 9)).decode("ascii")
    lines = [text[i : i + 76] for i in range(0, len(text), 76)] or [""]
    return f"{'i' if signed else 'u'}{8 * width}:" + "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------
# loading and validation

_EventSource = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser when it is there

_TAG = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (_TAG + t for t in ("str", "int", "float", "bool", "null"))
_SEQ, _MAP = _TAG + "seq", _TAG + "map"
_NOT_PLAIN = {
    _TAG + "timestamp": "a YAML timestamp", _TAG + "binary": "YAML binary data", _TAG + "set": "a YAML set",
    _TAG + "omap": "a YAML ordered map", _TAG + "pairs": "YAML pairs", _TAG + "merge": "a YAML merge key (<<)",
    _TAG + "value": "a YAML value key (=)",
}
_NO_KEY = object()  # a mapping frame waiting for its next key

# The encoded blocks: the only values that may be longer than MAX_TEXT_BYTES allows the rest.
_BLOCKS: dict[tuple[Any, ...], str] = {("tasks",): "tasks"}
_BLOCKS.update({("decisions", k): f"decisions.{k}" for k in ("picks", "ids", "round_steps", "round_times", "timing")})
_BLOCKS.update({("checkpoints", k): f"checkpoints.{k}" for k in ("steps", "auditors")})
_BLOCKS.update({("events", k): f"events.{k}" for k in ("kinds", "digests", "rounds")})


class _Overrun(Exception):
    """The file went past a byte limit while being read (the builder adds where)."""


class _Input:
    """The file as the YAML parser reads it: counted, checked to be UTF-8, and bounded.

    The parser pulls 16 KiB at a time and scans a value only when asked for its event, so
    bytes read while a block's value is awaited are that block's, all others the text's.
    """

    __slots__ = ("_f", "_decoder", "consumed", "text", "block", "block_start")

    def __init__(self, f: Any) -> None:
        self._f = f
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self.consumed = 0
        self.text = 0
        self.block: str | None = None  # the block whose value is being read
        self.block_start = 0

    def read(self, size: int = -1, /) -> bytes:
        data: bytes = self._f.read(size)
        start = self.consumed
        self.consumed = n = start + len(data)
        pending = len(self._decoder.getstate()[0])
        try:
            self._decoder.decode(data, not data)
        except UnicodeDecodeError as exc:
            raise _Problem(f"not UTF-8 text (byte {start - pending + exc.start}): not a trace file") from None
        if n > MAX_FILE_BYTES:
            raise _Overrun(f"file is more than the {MAX_FILE_BYTES} bytes a trace may have")
        if self.block is None:
            self.text += len(data)
            if self.text > MAX_TEXT_BYTES:
                raise _Overrun(f"more than {MAX_TEXT_BYTES} bytes besides the encoded blocks, more than a trace has")
        elif n - self.block_start > MAX_BLOCK_BYTES:
            raise _Overrun(f"{self.block} is more than the {MAX_BLOCK_BYTES} bytes an encoded block may have")
        return data


def _at(event: Any) -> str:
    mark = event.start_mark
    return f"(line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""


def _scalar(event: Any, loader: Any) -> Any:
    """The plain value of a scalar event, resolved as the safe loader would (YAML 1.1)."""
    value: str = event.value
    tag = event.tag
    if tag is None or tag == "!":
        if not event.implicit[0]:
            return value  # quoted or block: a string
        tag = loader.resolve(yaml.ScalarNode, value, event.implicit)
    if tag == _STR:
        return value
    if tag == _INT and value.isascii() and value.isdigit() and (value[0] != "0" or value == "0"):
        if len(value) > MAX_NUMBER_CHARS:
            raise _Problem(f"a number of {len(value)} digits {_at(event)}, more than {MAX_NUMBER_CHARS}")
        return int(value)
    if tag in (_INT, _FLOAT, _BOOL, _NULL):
        if len(value) > MAX_NUMBER_CHARS:
            raise _Problem(f"a {tag[len(_TAG):]} of {len(value)} characters {_at(event)}, more than {MAX_NUMBER_CHARS}")
        try:
            return loader.yaml_constructors[tag](loader, yaml.ScalarNode(tag, value))
        except (ValueError, KeyError, IndexError, TypeError, OverflowError):
            raise _Problem(f"{_short(value)} is not a valid YAML {tag[len(_TAG):]} {_at(event)}") from None
    if tag in _NOT_PLAIN:
        raise _Problem(f"{_short(value)} is {_NOT_PLAIN[tag]} {_at(event)}; only plain YAML data is allowed "
                       f"(quote it to make it a string)")
    raise _Problem(f"unsupported tag {_short(tag)} {_at(event)} (only plain YAML data is accepted)")


def _compose(f: Any) -> Any:
    """The YAML document in ``f`` as plain Python data, every limit enforced as it is read.

    Built from the parser's events rather than a node graph (which costs hundreds of bytes
    a value and is complete before anything could be counted): values are counted as they
    come, an alias counts the values it repeats, nesting and aliases are bounded, and the
    reader bounds the bytes of the file, of each encoded block and of everything else.
    """
    source = _Input(f)
    loader = _EventSource(source)
    try:
        return _build(loader, source)
    finally:
        loader.dispose()


def _build(loader: Any, source: _Input) -> Any:
    get = loader.get_event
    resolvable = frozenset(loader.yaml_implicit_resolvers)  # first characters of non-string plain scalars
    stack: list[list[Any]] = []  # [container, pending key or _NO_KEY, values before it, anchor]
    anchors: dict[str, tuple[Any, int]] = {}  # anchor -> (value, values it holds; -1 while open)
    nodes = aliases = documents = 0
    root: Any = None
    event: Any = None
    try:
        while True:
            event = get()
            source.block = None
            kind = event.__class__
            if kind is yaml.ScalarEvent:
                nodes += 1
                if nodes > MAX_NODES:
                    raise _Problem(f"more than {MAX_NODES} values {_at(event)}, more than a trace has")
                value = event.value
                if event.tag is None and (not event.implicit[0] or value[:1] not in resolvable):
                    pass  # a string: quoted, a block, or plain text no implicit type starts with
                elif (event.tag is None and value.isdigit() and value.isascii() and len(value) <= 18
                      and (value[0] != "0" or len(value) == 1)):
                    value = int(value)  # the usual case of an int (a leading 0 is octal)
                else:
                    value = _scalar(event, loader)
                if event.anchor is not None:
                    anchors[event.anchor] = (value, 1)
            elif kind is yaml.MappingStartEvent or kind is yaml.SequenceStartEvent:
                nodes += 1
                if nodes > MAX_NODES:
                    raise _Problem(f"more than {MAX_NODES} values {_at(event)}, more than a trace has")
                if len(stack) >= MAX_DEPTH:
                    raise _Problem(f"nested more than {MAX_DEPTH} levels deep {_at(event)}")
                mapping = kind is yaml.MappingStartEvent
                tag = event.tag
                if tag is not None and tag != "!" and tag != (_MAP if mapping else _SEQ):
                    if tag in _NOT_PLAIN:
                        raise _Problem(f"{_NOT_PLAIN[tag]} {_at(event)}; only plain YAML data is allowed")
                    raise _Problem(f"unsupported tag {_short(tag)} {_at(event)} (only plain YAML data is accepted)")
                container: Any = {} if mapping else []
                stack.append([container, _NO_KEY, nodes, event.anchor])
                if event.anchor is not None:
                    anchors[event.anchor] = (container, -1)
                continue
            elif kind is yaml.MappingEndEvent or kind is yaml.SequenceEndEvent:
                value, _, first, anchor = stack.pop()
                if anchor is not None:
                    anchors[anchor] = (value, nodes - first + 1)
            elif kind is yaml.AliasEvent:
                aliases += 1
                if aliases > MAX_ALIASES:
                    raise _Problem(f"more than {MAX_ALIASES} YAML aliases {_at(event)}, more than a trace has")
                target = anchors.get(event.anchor)
                if target is None:
                    raise _Problem(f"not valid YAML: the alias *{event.anchor[:40]} {_at(event)} names no anchor "
                                   f"before it")
                value, size = target
                if size < 0:
                    raise _Problem(f"a value contains itself (the recursive YAML alias *{event.anchor[:40]} "
                                   f"{_at(event)})")
                nodes += size
                if nodes > MAX_NODES:
                    raise _Problem(f"more than {MAX_NODES} values {_at(event)} (counting what aliases repeat), "
                                   f"more than a trace has")
            elif kind is yaml.DocumentStartEvent:
                documents += 1
                if documents > 1:
                    raise _Problem(f"a second YAML document {_at(event)}: a trace is one document")
                continue
            elif kind is yaml.StreamEndEvent:
                return root
            else:
                continue  # the stream's start, a document's end
            if not stack:
                root = value
                continue
            frame = stack[-1]
            container = frame[0]
            if container.__class__ is list:
                container.append(value)
            elif frame[1] is _NO_KEY:
                if value.__class__ is dict or value.__class__ is list:
                    raise _Problem(f"a mapping key {_at(event)} is a collection; only plain keys are allowed")
                if value in container:
                    raise _Problem(f"duplicate key {_short(value)} {_at(event)}")
                frame[1] = value
                if len(stack) <= 2:  # the value of a top-level key or of one level below
                    block = _BLOCKS.get((value,) if len(stack) == 1 else (stack[0][1], value))
                    if block is not None:
                        source.block = block
                        source.block_start = source.consumed
            else:
                container[frame[1]] = value
                frame[1] = _NO_KEY
    except _Overrun as exc:
        where = f" (after line {event.end_mark.line + 1})" if event is not None and event.end_mark is not None else ""
        raise _Problem(f"{exc}{where}") from None


def load_trace(path: str | os.PathLike[str]) -> Trace:
    """Read and validate a trace file; any problem raises ``TraceError("<file>: <problem>")``.

    The size is checked before reading and every other limit while the file is parsed, so a
    file over one is refused within a bounded time and memory whatever its size or shape.
    """
    name = os.fspath(path)
    try:
        f = open(name, "rb")
    except OSError as exc:
        raise TraceError(name, _os_problem(exc)) from None
    with f:
        try:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_FILE_BYTES:
                raise TraceError(name, f"file is {size} bytes, more than the {MAX_FILE_BYTES} a trace may have")
            document = _compose(f)
        except _Problem as exc:
            raise TraceError(name, str(exc)) from None
        except yaml.YAMLError as exc:
            raise TraceError(name, f"not valid YAML: {_yaml_problem(exc)}") from None
        except RecursionError:
            raise TraceError(name, "not valid YAML: nested too deeply") from None
        except OSError as exc:  # reading a directory fails only here on some systems
            raise TraceError(name, _os_problem(exc)) from None
    return _parse_document(document, name)


def _os_problem(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not a trace file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return f"cannot read: {exc.strerror or exc}"


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        where = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        if isinstance(exc, yaml.constructor.ConstructorError) and "constructor for the tag" in problem:
            problem = f"unsupported tag (only plain YAML data is accepted): {problem}"
        if where is not None:
            return f"{problem} (line {where.line + 1}, column {where.column + 1})"
        return problem
    return str(exc)


class _Problem(Exception):
    """A validation failure; turned into ``TraceError`` with the file name."""


def _parse_document(doc: Any, name: str) -> Trace:
    try:
        return _parse(doc)
    except _Problem as exc:
        raise TraceError(name, str(exc)) from None
    except RecursionError:
        raise TraceError(name, "nested too deeply") from None


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _int(doc: dict[str, Any], key: str, what: str, *, lo: int = 0, hi: int | None = None) -> int:
    value = doc[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Problem(f"{what} must be an integer, got {_type_name(value)} {_short(value)}")
    if value < lo or (hi is not None and value > hi):
        bound = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
        raise _Problem(f"{what} must be {bound}, got {value}")
    return value


def _str(doc: dict[str, Any], key: str, what: str, *, limit: int = MAX_TEXT_CHARS, empty: bool = False) -> str:
    value = doc[key]
    if not isinstance(value, str):
        raise _Problem(f"{what} must be a string, got {_type_name(value)} {_short(value)}")
    if not value and not empty:
        raise _Problem(f"{what} must not be empty")
    if len(value) > limit:
        raise _Problem(f"{what} is {len(value)} characters long, more than {limit}")
    return value


def _plain(value: Any, what: str) -> None:
    """``value`` is plain data (null, bool, int, float, str, lists, str-keyed mappings), finite and acyclic."""
    budget = [MAX_PLAIN_NODES]
    on_path: set[int] = set()

    def walk(v: Any, where: str, depth: int) -> None:
        budget[0] -= 1
        if budget[0] < 0:
            raise _Problem(f"{what} holds more than {MAX_PLAIN_NODES} values")
        if depth > MAX_PLAIN_DEPTH:
            raise _Problem(f"{where} is nested more than {MAX_PLAIN_DEPTH} levels deep")
        if v is None or isinstance(v, (bool, int, float, str)):
            return
        if isinstance(v, (list, dict)):
            if id(v) in on_path:
                raise _Problem(f"{where} contains itself (a recursive YAML alias)")
            on_path.add(id(v))
            if isinstance(v, list):
                for i, item in enumerate(v):
                    walk(item, f"{where}[{i}]", depth + 1)
            else:
                for k, item in v.items():
                    if not isinstance(k, str):
                        raise _Problem(f"{where} has a non-string key {_short(k)}")
                    walk(item, f"{where}.{k}", depth + 1)
            on_path.discard(id(v))
            return
        raise _Problem(f"{where} holds a {_type_name(v)} value ({_short(v)}); only plain YAML data is allowed")

    walk(value, what, 0)


def _parse(doc: Any) -> Trace:
    if doc is None:
        raise _Problem("empty file, not a trace")
    if not isinstance(doc, dict):
        raise _Problem(f"not a trace: the top level is a {_type_name(doc)}, expected a mapping")
    if "format" not in doc:
        raise _Problem(f"not a trace: no 'format: {FORMAT}' key")
    if doc["format"] != FORMAT:
        raise _Problem(f"format is {_short(doc['format'])}, expected {FORMAT!r}")
    if "version" not in doc:
        raise _Problem("missing key 'version'")
    version = doc["version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise _Problem(f"version must be an integer, got {_type_name(version)} {_short(version)}")
    if version in _DEVELOPMENT_VERSIONS and isinstance(doc.get("decisions"), dict) and "ordering" in doc["decisions"]:
        raise _Problem(
            f"trace format version {version} was written by a development build of pytest-commonware, before the "
            f"format was fixed at version {VERSION}; its content is version {VERSION}'s: set 'version: {VERSION}' "
            f"to read it"
        )
    if version > VERSION:
        raise _Problem(
            f"trace format version {version} is newer than this pytest-commonware reads (version {VERSION}); "
            f"upgrade pytest-commonware"
        )
    if version < VERSION:
        raise _Problem(f"unknown trace format version {version} (this pytest-commonware reads version {VERSION})")
    decisions = doc.get("decisions")
    if isinstance(decisions, dict) and "ordering" not in decisions:
        # The first development builds recorded picks as indexes into a swap-remove ready
        # list the runtime no longer has; their `decisions` name no ordering.
        seed = doc.get("seed")
        rerun = (f"--cw-seed={seed}" if isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0
                 else "--cw-seed=<its seed>")
        raise _Problem(
            f"this trace was recorded by an early pytest-commonware whose schedules (picks without an "
            f"ordering) this version cannot replay; rerun the seed with {rerun}"
        )
    _keys(doc, "", _REQUIRED, _OPTIONAL, " (put additional data under 'extra')")

    test = _str(doc, "test", "'test'")
    seed = _int(doc, "seed", "'seed'")
    runtime = doc["runtime"]
    if runtime != "deterministic":
        raise _Problem(f"runtime is {_short(runtime)}, only 'deterministic' runs are traced")
    config = doc["config"]
    if not isinstance(config, dict):
        raise _Problem(f"'config' must be a mapping, got {_type_name(config)}")
    _plain(config, "config")
    if "seed" in config and config["seed"] != seed:
        raise _Problem(f"config.seed is {_short(config['seed'])} but 'seed' is {seed}")
    outcome = doc["outcome"]
    if outcome not in ("passed", "failed"):
        raise _Problem(f"outcome must be 'passed' or 'failed', got {_short(outcome)}")
    error = doc.get("error")
    if outcome == "failed":
        if not isinstance(error, dict):
            raise _Problem(f"outcome is 'failed' but 'error' is {'missing' if 'error' not in doc else _type_name(error)}"
                           f" (expected a mapping with 'type' and 'message')")
        for key in error:
            if key not in ("type", "message"):
                raise _Problem(f"error has an unknown key {_short(key)}")
        for key in ("type", "message"):
            if key not in error:
                raise _Problem(f"error is missing {key!r}")
        error = {
            "type": _str(error, "type", "error.type"),
            "message": _str(error, "message", "error.message", empty=True),
        }
    elif error is not None:
        raise _Problem("outcome is 'passed' but an 'error' is given")
    auditor = doc["auditor"]
    if not isinstance(auditor, str) or not _HEX64.match(auditor):
        raise _Problem(f"auditor must be 64 lowercase hex digits, got {_short(auditor)}")
    steps = _int(doc, "steps", "'steps'", hi=MAX_STEPS)
    python = _str(doc, "python", "'python'", limit=200)
    runtime_ver = _str(doc, "commonware_runtime", "'commonware_runtime'", limit=200)
    extra = doc.get("extra", {})
    if not isinstance(extra, dict):
        raise _Problem(f"'extra' must be a mapping, got {_type_name(extra)}")
    _plain(extra, "extra")

    labels = _parse_tasks(doc["tasks"])
    schedule = _parse_decisions(doc["decisions"], steps, len(labels) - 1)
    if "ordering" in config and config["ordering"] != schedule.ordering:
        raise _Problem(f"config.ordering is {_short(config['ordering'])} but decisions.ordering is "
                       f"{schedule.ordering!r}: the trace is inconsistent")
    schedule.seed = seed
    schedule.labels = labels
    schedule.auditor = auditor
    schedule.outcome = outcome
    schedule.error = error
    checkpoints = _parse_checkpoints(doc["checkpoints"], schedule)
    schedule.checkpoints = [(c["step"], c["time"], c["auditor"]) for c in checkpoints]
    if "events" in doc:
        _parse_events(doc["events"], schedule)
    return Trace(
        test=test, seed=seed, runtime=runtime, config=config, outcome=outcome, error=error, auditor=auditor,
        steps=steps, tasks={tid: labels[tid] for tid in range(1, len(labels))}, checkpoints=checkpoints,
        schedule=schedule, python=python, commonware_runtime=runtime_ver, extra=extra,
    )


def _parse_events(value: Any, schedule: Schedule) -> None:
    if not isinstance(value, dict):
        raise _Problem(f"'events' must be a mapping, got {_type_name(value)}")
    _keys(value, "events: ", _EVENT_KEYS)
    count = _int(value, "count", "events.count", hi=MAX_STEPS)
    tags = value["tags"]
    if not isinstance(tags, list) or len(tags) > MAX_EVENT_TAGS or not all(isinstance(t, str) and t for t in tags):
        raise _Problem(f"events.tags must be a list of at most {MAX_EVENT_TAGS} non-empty strings")
    kinds = _decode_array(value["kinds"], "events.kinds", count, delta=False, typecode="I")
    if count and max(kinds) >= len(tags):
        raise _Problem(f"events.kinds names tag {max(kinds)}, but events.tags has {len(tags)}")
    digests = _decode_array(value["digests"], "events.digests", count, delta=False, typecode="Q")
    rounds = _decode_array(value["rounds"], "events.rounds", len(schedule.round_steps), delta=True, typecode="Q")
    if any(map(operator.gt, rounds, itertools.islice(rounds, 1, None))) or (rounds and rounds[-1] > count):
        raise _Problem("events.rounds must count up, to at most events.count")
    schedule.events = [(tags[k], f"{d:016x}") for k, d in zip(kinds, digests, strict=True)]
    schedule.event_rounds = rounds


def _keys(value: dict[Any, Any], where: str, required: tuple[str, ...], optional: tuple[str, ...] = (),
          hint: str = "") -> None:
    """Every ``required`` key is in the mapping and no other but the ``optional`` ones; the
    first missing one, else the first unknown one, is named (``where`` says which mapping)."""
    for key in required:
        if key not in value:
            raise _Problem(f"{where}missing key {key!r}")
    for key in value:
        if key not in required and key not in optional:
            raise _Problem(f"{where}unknown key {_short(key)}{hint}")


def _compact(value: Any, compact: type, plain: type, expected: str) -> bool:
    """Whether a part that may be stored compactly (as a ``compact``) is so stored; a part
    that is neither that nor ``plain`` is refused, saying what was ``expected``."""
    if isinstance(value, compact):
        return True
    if not isinstance(value, plain):
        raise _Problem(f"{expected}, got {_type_name(value)}")
    return False


def _parse_tasks(tasks: Any) -> list[str]:
    if _compact(tasks, str, dict, "'tasks' must be a mapping of task id to label"):
        return _decode_labels(tasks)
    if len(tasks) > MAX_TASKS:
        raise _Problem(f"'tasks' lists {len(tasks)} tasks, more than {MAX_TASKS}")
    labels = [""]
    for expected, (tid, label) in enumerate(sorted(tasks.items(), key=_task_key), start=1):
        if isinstance(tid, bool) or not isinstance(tid, int):
            raise _Problem(f"tasks: ids must be integers, got {_type_name(tid)} {_short(tid)}")
        if tid != expected:
            raise _Problem(f"tasks: ids must run 1..{len(tasks)} without gaps, {expected} is missing")
        if not isinstance(label, str):
            raise _Problem(f"tasks: the label of task {tid} must be a string, got {_type_name(label)}")
        if len(label) > MAX_LABEL_CHARS:
            raise _Problem(f"tasks: the label of task {tid} is longer than {MAX_LABEL_CHARS} characters")
        labels.append(label)
    return labels


def _decode_labels(value: str) -> list[str]:
    """A compact ``tasks`` block: ``json:`` then base64 of zlib of a JSON array of the labels of tasks 1..N."""
    prefix = LABELS_ENCODING + ":"
    if not value.startswith(prefix):
        raise _Problem(f"'tasks' must be a mapping of task id to label or a block starting with {prefix!r}")
    raw = _inflate(value[len(prefix):], "tasks", MAX_LABELS_BYTES)
    if len(raw) > MAX_LABELS_BYTES:
        raise _Problem(f"'tasks' decodes to more than {MAX_LABELS_BYTES} bytes of labels")
    # Every label after the first follows a comma: count before building anything.
    if raw.count(b",") >= MAX_TASKS:
        raise _Problem(f"'tasks' lists more than {MAX_TASKS} tasks")
    try:
        labels = json.loads(raw)
    except (ValueError, RecursionError):
        raise _Problem("'tasks' is not a valid JSON array of labels (truncated or edited?)") from None
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise _Problem("'tasks' must decode to a JSON array of strings, the labels of tasks 1, 2, ...")
    if labels and max(map(len, labels)) > MAX_LABEL_CHARS:
        tid = next(i for i, label in enumerate(labels, start=1) if len(label) > MAX_LABEL_CHARS)
        raise _Problem(f"tasks: the label of task {tid} is longer than {MAX_LABEL_CHARS} characters")
    labels.insert(0, "")
    return labels


def _task_key(item: tuple[Any, Any]) -> tuple[int, Any]:
    # Non-int ids sort first so the type error names them rather than a gap.
    tid = item[0]
    return (1, tid) if isinstance(tid, int) and not isinstance(tid, bool) else (0, 0)


_COMPACT_CHECKPOINTS = ("count", "steps", "auditors")
_DERIVED = object()  # the time of a compact checkpoint: its round's


def _parse_checkpoints(value: Any, schedule: Schedule) -> list[dict[str, Any]]:
    rounds = len(schedule.round_steps)
    entries: Iterable[dict[str, Any]]
    if _compact(value, dict, list, "'checkpoints' must be a list"):
        checked, entries = _decode_checkpoints(value, schedule)
        if checked:
            return list(entries)
    elif len(value) > rounds:
        raise _Problem(f"'checkpoints' has {len(value)} entries for {rounds} rounds (at most one per round)")
    else:
        entries = value
    round_steps = schedule.round_steps
    out: list[dict[str, Any]] = []
    previous = -1
    for i, cp in enumerate(entries):
        where = f"checkpoints[{i}]"
        if not isinstance(cp, dict) or set(cp) != {"step", "time", "auditor"}:
            raise _Problem(f"{where} must be a mapping with exactly 'step', 'time' and 'auditor'")
        step = _int(cp, "step", f"{where}.step")
        auditor = cp["auditor"]
        if not isinstance(auditor, str) or not _HEX64.match(auditor):
            raise _Problem(f"{where}.auditor must be 64 lowercase hex digits, got {_short(auditor)}")
        if step <= previous:
            raise _Problem(f"{where}.step {step} does not come after the previous checkpoint's step {previous}")
        r = bisect.bisect_left(round_steps, step)
        if r == rounds or round_steps[r] != step:
            raise _Problem(f"{where}.step {step} is not the first step of a round: the trace is inconsistent")
        time_ns = cp["time"]
        if time_ns is _DERIVED:  # compact: the round's time
            time_ns = schedule.round_times[r]
        else:
            time_ns = _int(cp, "time", f"{where}.time", lo=-(1 << 63), hi=(1 << 63) - 1)
        if schedule.round_times[r] != time_ns:
            raise _Problem(
                f"{where}.time {time_ns} ns differs from the time of the round at step {step} "
                f"({schedule.round_times[r]} ns): the trace is inconsistent"
            )
        previous = step
        out.append({"step": step, "time": time_ns, "auditor": auditor})
    return out


def _decode_checkpoints(value: dict[str, Any], schedule: Schedule) -> tuple[bool, Iterable[dict[str, Any]]]:
    """Compact checkpoints: ``count``, delta-encoded ``steps``, ``auditors`` as 32-byte digests.

    ``(True, checkpoints)`` when they are consistent with the rounds (checked at C speed: a
    long run recorded with checkpoints every 16 steps has hundreds of thousands), else
    ``(False, entries)`` for the caller's checks to name the first inconsistent one.
    """
    _keys(value, "checkpoints: ", _COMPACT_CHECKPOINTS)
    round_steps, round_times = schedule.round_steps, schedule.round_times
    count = _int(value, "count", "checkpoints.count", hi=len(round_steps))
    steps = _decode_array(value["steps"], "checkpoints.steps", count, delta=True, typecode="Q")
    hexes = _decode_array(value["auditors"], "checkpoints.auditors", 32 * count, delta=False, typecode="B").tobytes().hex()
    if not steps:
        return True, []
    if steps[-1] <= round_steps[-1] and all(map(operator.lt, steps, itertools.islice(steps, 1, None))):
        at = list(map(bisect.bisect_left, itertools.repeat(round_steps), steps))  # each checkpoint's round
        if all(map(operator.eq, map(round_steps.__getitem__, at), steps)):
            return True, [{"step": step, "time": round_times[r], "auditor": hexes[64 * i : 64 * i + 64]}
                          for i, (step, r) in enumerate(zip(steps, at, strict=True))]
    return False, ({"step": step, "time": _DERIVED, "auditor": hexes[64 * i : 64 * i + 64]}
                   for i, step in enumerate(steps))


def _parse_decisions(value: Any, steps: int, ntasks: int) -> Schedule:
    if not isinstance(value, dict):
        raise _Problem(f"'decisions' must be a mapping, got {_type_name(value)}")
    _keys(value, "decisions: ", _DECISION_KEYS)
    if value["encoding"] != ENCODING:
        raise _Problem(f"decisions.encoding is {_short(value['encoding'])}, this version reads only {ENCODING!r}")
    every = _int(value, "checkpoint_every", "decisions.checkpoint_every", lo=1)
    ordering = value["ordering"]
    if ordering not in ORDERINGS:
        raise _Problem(f"decisions.ordering must be one of {', '.join(map(repr, ORDERINGS))}, got {_short(ordering)}")
    strategy = _str(value, "strategy", "decisions.strategy", limit=MAX_STRATEGY_CHARS)
    chosen = _str(value, "chosen", "decisions.chosen", limit=MAX_STRATEGY_CHARS, empty=True)
    holds_back = value["holds_back"]
    if not isinstance(holds_back, bool):
        raise _Problem(f"decisions.holds_back must be true or false, got {_type_name(holds_back)} {_short(holds_back)}")
    if holds_back and ordering != "any":
        raise _Problem(f"decisions.holds_back is true under ordering {ordering!r}: only ordering 'any' holds "
                       f"ready callbacks back")
    rounds = _int(value, "rounds", "decisions.rounds", hi=steps)
    if (rounds == 0) != (steps == 0):
        raise _Problem(f"decisions: {rounds} rounds for {steps} steps: every round makes at least one decision")
    ntiming = _int(value, "timing_choices", "decisions.timing_choices", hi=MAX_TIMING)
    picks = _decode_array(value["picks"], "decisions.picks", steps, delta=True, typecode="I")
    ids = _decode_array(value["ids"], "decisions.ids", steps, delta=False, typecode="I")
    round_steps = _decode_array(value["round_steps"], "decisions.round_steps", rounds, delta=True, typecode="Q")
    round_times = _decode_array(value["round_times"], "decisions.round_times", rounds, delta=True, typecode="q")
    timing = _decode_array(value["timing"], "decisions.timing", ntiming, delta=False, typecode="q")

    if rounds:
        if round_steps[0] != 0:
            raise _Problem(f"decisions.round_steps: the first round starts at step {round_steps[0]}, not 0")
        # Pairwise at C speed (a long run has millions of rounds); the loop only finds the culprit.
        if not (all(map(operator.lt, round_steps, itertools.islice(round_steps, 1, None)))
                and all(map(operator.le, round_times, itertools.islice(round_times, 1, None)))):
            for r in range(1, rounds):
                if round_steps[r] <= round_steps[r - 1]:
                    raise _Problem(f"decisions.round_steps: round {r} starts at step {round_steps[r]}, "
                                   f"not after round {r - 1} (step {round_steps[r - 1]})")
                if round_times[r] < round_times[r - 1]:
                    raise _Problem(f"decisions.round_times: round {r} is at {round_times[r]} ns, "
                                   f"before round {r - 1} ({round_times[r - 1]} ns)")
        if round_steps[-1] >= steps:
            raise _Problem(f"decisions.round_steps: the last round starts at step {round_steps[-1]}, "
                           f"past the end of the run ({steps} steps)")
    if ids and max(ids) > ntasks:
        step = next(s for s, tid in enumerate(ids) if tid > ntasks)
        raise _Problem(f"decisions.ids: step {step} runs task {ids[step]}, which 'tasks' does not list")
    if timing and min(timing) < 0:
        i = next(i for i, v in enumerate(timing) if v < 0)
        raise _Problem(f"decisions.timing: choice {i} is {timing[i]}, a timing choice is never negative")
    _check_picks(picks, round_steps, steps, ordering=ordering, holds_back=holds_back)
    return Schedule(
        seed=0, picks=picks, ids=ids, round_steps=round_steps, round_times=round_times,
        steps=steps, checkpoint_every=every, timing=timing, ordering=ordering, strategy=strategy,
        chosen=chosen, holds_back=holds_back,
    )


def _check_picks(picks: array[int], round_steps: array[int], steps: int, *, ordering: str, holds_back: bool) -> None:
    """Picks name callbacks by seq (1, 2, ... in the order they became ready); each runs once.

    Without holding back, every callback ready when a round begins runs in that round and
    nothing else does: the round from step a to step b runs callbacks #a+1 .. #b, in some
    order (under ordering "fifo" in exactly that order).  Holding back, a decision may take
    any callback ready by then: the picks are only distinct.

    Checked at C speed in memory of a byte per callback (a long run has millions of picks);
    only a failure walks the picks in Python, to name the first offending step.
    """
    if not picks:
        return
    if holds_back:
        if _distinct_positive(picks):
            return
    elif ordering == "fifo":
        if picks == array(picks.typecode, range(1, steps + 1)):
            return
    elif len(round_steps) * 8 > steps and picks == array(picks.typecode, range(1, steps + 1)):
        return  # short rounds (a round a step when each task yields alone) run in order: nothing more to check
    else:
        # A permutation of 1..steps: every callback 1..steps seen (a pick past steps is an IndexError).
        seen = bytearray(steps + 1)
        try:
            collections.deque(map(seen.__setitem__, picks, itertools.repeat(1)), maxlen=0)
        except IndexError:
            pass  # the walk below names it
        else:
            # It respects the rounds iff at every round boundary b the first b picks are
            # exactly 1..b: for distinct positive picks, iff they sum to b(b+1)/2.
            if seen[0] == 0 and seen.count(0) == 1 and _prefixes_complete(picks, round_steps, steps):
                return
    if min(picks) < 1:
        step = next(s for s, p in enumerate(picks) if p < 1)
        raise _Problem(f"decisions.picks: step {step} runs callback #{picks[step]}: callbacks are numbered from 1")
    if holds_back:
        top = max(picks)
        ran: bytearray | set[int] = bytearray(top + 1) if top <= 4 * len(picks) + 65_536 else set()
        for step, p in enumerate(picks):
            if p in ran if isinstance(ran, set) else ran[p]:
                raise _Problem(f"decisions.picks: step {step} runs callback #{p} again (step {picks.index(p)} ran "
                               f"it): the trace is inconsistent")
            if isinstance(ran, set):
                ran.add(p)
            else:
                ran[p] = 1
        raise _Problem("decisions.picks are inconsistent")  # unreachable: distinct and positive is all it takes
    # Something is off: find the first offending step and say what it is.
    bounds = itertools.chain(itertools.islice(round_steps, 1, None), (steps,))
    done = bytearray(steps + 1)
    for r, (start, end) in enumerate(zip(round_steps, bounds, strict=False)):
        for step in range(start, end):
            p = picks[step]
            if ordering == "fifo" and p != step + 1:
                raise _Problem(f"decisions.picks: step {step} runs callback #{p}, but under ordering 'fifo' "
                               f"callbacks run in the order they became ready (#{step + 1}): the trace is inconsistent")
            if not start < p <= end:
                raise _Problem(f"decisions.picks: step {step} runs callback #{p}, which is not among the callbacks "
                               f"ready in round {r} (#{start + 1}..#{end}): the trace is inconsistent")
            if done[p]:
                raise _Problem(f"decisions.picks: step {step} runs callback #{p} a second time: the trace is inconsistent")
            done[p] = 1
    raise _Problem("decisions.picks are inconsistent with the rounds")  # unreachable: the checks above are exhaustive


def _prefixes_complete(picks: array[int], round_steps: array[int], steps: int) -> bool:
    """For distinct positive ``picks``: whether the first b are 1..b at every round's end b."""
    def ends() -> Iterator[int]:
        return itertools.chain(itertools.islice(round_steps, 1, None), (steps,))

    if len(round_steps) * 8 <= steps:  # long rounds: the highest pick of each, a slice at a time
        return all(max(picks[a:b]) <= b for a, b in zip(round_steps, ends(), strict=False))
    # Short rounds: the running sum at each round's last step (all at C speed), 2 * sum == b * (b + 1).
    last = bytearray(steps)
    collections.deque(map(last.__setitem__, map(operator.sub, ends(), itertools.repeat(1)), itertools.repeat(1)),
                      maxlen=0)
    sums = itertools.compress(itertools.accumulate(picks), last)
    return all(map(operator.eq, map(operator.lshift, sums, itertools.repeat(1)),
                   map(operator.mul, ends(), map(operator.add, ends(), itertools.repeat(1)))))


def _distinct_positive(values: array[int]) -> bool:
    """Every value at least 1, none twice: a byte per possible value when they are dense, as seqs are."""
    top = max(values)
    if top > 4 * len(values) + 65_536:  # sparse (never written so, but a file may say so): a set
        return min(values) >= 1 and len(set(values)) == len(values)
    seen = bytearray(top + 1)
    collections.deque(map(seen.__setitem__, values, itertools.repeat(1)), maxlen=0)
    return seen[0] == 0 and top + 1 - seen.count(0) == len(values)


def _decode_array(value: Any, what: str, count: int, *, delta: bool, typecode: str) -> array[int]:
    if not isinstance(value, str):
        raise _Problem(f"{what} must be an encoded string, got {_type_name(value)}")
    m = _ARRAY_SPEC.match(value)
    if m is None:
        raise _Problem(f"{what} must start with a width such as 'u8:', 'u32:' or 'i64:'")
    signed = m.group(1) == "i"
    width = int(m.group(2)) // 8
    expected = count * width
    raw = _inflate(value[m.end():], what, expected)
    if len(raw) > expected:
        raise _Problem(f"{what} decodes to more than the {count} values announced: the trace is inconsistent")
    if len(raw) != expected:
        raise _Problem(f"{what} decodes to {len(raw) // width} values, expected {count}: the trace is truncated or inconsistent")
    if not delta:
        wide = _widen(raw, signed, width, typecode)
        if wide is not None:
            return wide
    arr = array(_TYPECODES[(signed, width)])
    arr.frombytes(raw)
    del raw
    if _BIG_ENDIAN:
        arr.byteswap()
    if not delta and arr.typecode == typecode:
        return arr
    try:
        # Straight from the stored array (no list of the values: a long run has millions).
        return array(typecode, itertools.accumulate(arr) if delta else iter(arr))
    except OverflowError:
        raise _Problem(f"{what} holds a value out of range") from None


_SIGN_BYTES = bytes(0 if b < 0x80 else 0xFF for b in range(256))  # the high byte -> its sign extension


def _widen(raw: bytes, signed: bool, width: int, typecode: str) -> array[int] | None:
    """Little-endian values of ``width`` bytes as an array of ``typecode``, by byte slices (C speed).

    None when that cannot be done so (a narrower target, a sign to check, a big-endian host):
    the caller converts value by value.
    """
    size = array(typecode).itemsize
    if _BIG_ENDIAN or (signed and typecode.isupper()) or width > size or (width == size and signed != typecode.islower()):
        return None
    out = bytearray(len(raw) // width * size)
    for j in range(width):
        out[j::size] = raw[j::width]
    if signed and width < size:
        fill = raw[width - 1 :: width].translate(_SIGN_BYTES)
        for j in range(width, size):
            out[j::size] = fill
    arr = array(typecode)
    arr.frombytes(out)
    return arr


def _inflate(text: str, what: str, bound: int) -> bytes:
    """The bytes of ``<base64 of a zlib stream>`` (whitespace ignored), at most ``bound + 1`` of them.

    Bounded: a small hostile blob cannot inflate past what the trace announces (the caller
    refuses ``bound + 1`` bytes).
    """
    try:
        compressed = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise _Problem(f"{what} is not valid base64 (truncated or edited?)") from None
    decompressor = zlib.decompressobj()
    try:
        raw = decompressor.decompress(compressed, bound + 1)
    except zlib.error as exc:
        raise _Problem(f"{what} is not valid zlib data ({exc})") from None
    if len(raw) > bound or decompressor.unconsumed_tail:
        return raw  # over the bound: the caller says what was announced
    if not decompressor.eof:
        raise _Problem(f"{what} is truncated (the compressed stream ends early)")
    if decompressor.unused_data:
        raise _Problem(f"{what} has trailing data after the compressed stream")
    return raw


# ------------------------------------------------------------------------------------------
# replaying and comparing runs


def config_from_dict(values: Mapping[str, Any], where: str) -> Config:
    """The ``deterministic.Config`` a trace's ``config`` mapping describes (``where`` names the
    trace in a ``TraceError`` when it describes none: an unknown key, a value ``Config`` refuses).

    ``ordering`` and ``strategy`` are plain strings there (``Config.to_dict()``).  A replay
    or a bisect never asks the recorded strategy anything (the trace names every choice), so
    a strategy this process does not know (a user object's name, one a conftest elsewhere
    registered) is replaced by the canonical one rather than refused.
    """
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(Config)})
    if unknown:
        raise TraceError(where, f"the trace's config has keys this version does not know: {', '.join(unknown)}")
    for key in ("ordering", "strategy"):
        if key in values and not isinstance(values[key], str):
            raise TraceError(where, f"the trace's config is invalid: {key} must be a string, got {values[key]!r}")
    values = dict(values)
    strategy = values.get("strategy")
    if isinstance(strategy, str) and strategy.split(":")[0] not in strategies.strategy_names():
        values["strategy"] = "canonical"
    try:
        return Config(**values)
    except (TypeError, ValueError) as exc:
        raise TraceError(where, f"the trace's config is invalid: {exc}") from None


def first_divergence(expected: Trace, actual: Trace) -> Divergence | None:
    """The first difference between two traced runs, or None when they agree: their schedules'
    ``Schedule.first_divergence`` (a trace's auditor, outcome and error are its schedule's)."""
    return expected.schedule.first_divergence(actual.schedule)


# ------------------------------------------------------------------------------------------
# file names

_SAFE = re.compile(r"[^A-Za-z0-9._=-]")
# One pattern for every seed (a pattern per seed would be compiled anew for each item of a sweep).
_SEED_PARAM = re.compile(r"(?:^|-)(?:deterministic-)?seed=(\d+)(?=-|$)")
_MAX_NAME = 150


def trace_path(directory: str | os.PathLike[str], nodeid: str, seed: int) -> Path:
    """Where the trace of (``nodeid``, ``seed``) goes: ``directory/<sanitized id>__seed-<seed>.yaml``.

    ``tests/test_mod.py::test_protocol[seed=17]`` gives
    ``tests.test_mod.py__test_protocol__seed-17.yaml``: directories become ``.``, ``::``
    becomes ``__``, the seed's own parameter id is dropped (the suffix names it), other
    parameters stay. Whenever characters had to be replaced, or the name is too long, an
    8-digit hash of the node id is appended so distinct ids never share a file.
    """
    if not isinstance(nodeid, str) or not nodeid:
        raise ValueError(f"nodeid must be a non-empty str, got {nodeid!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    base, params = nodeid, ""
    colons = nodeid.find("::")
    cut = nodeid.find("[", colons) if colons >= 0 else -1
    if cut >= 0 and nodeid.endswith("]"):
        base, params = nodeid[:cut], nodeid[cut + 1 : -1]
    # Drop the seed's parameter id ("seed=17", "deterministic-seed=17") from the ids.
    params = _SEED_PARAM.sub(lambda m: "" if m.group(1) == str(seed) else m.group(0), params).strip("-")
    name = "__".join(part.replace("\\", "/").replace("/", ".") for part in base.split("::"))
    if params:
        name += "__" + params
    safe = _SAFE.sub("_", name).lstrip(".-") or "test"
    lossy = safe != name
    if lossy or len(safe) > _MAX_NAME:
        digest = hashlib.sha256(nodeid.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        safe = f"{safe[:_MAX_NAME]}-{digest}"
    return Path(os.fspath(directory)) / f"{safe}__seed-{seed}.yaml"


_FAILED = re.compile(rb"^outcome: failed\s*$", re.MULTILINE)


def remove_failure_trace(path: Path) -> bool:
    """Remove the trace file at ``path`` when it records a failed run (its ``outcome:`` line,
    near the top); a trace of a passing run (``--cw-record=all``) stays.  True if removed."""
    try:
        with open(path, "rb") as f:
            head = f.read(8192)
    except OSError:  # none there (the usual case), or unreadable
        return False
    if _FAILED.search(head) is None:
        return False
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True
