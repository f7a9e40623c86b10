"""Mutation fuzzing: a spec with random damage compiles or fails with an ArchError, quickly.

Every spec under `specs/` (std, models, examples; new files are picked up) is mutated at the token
level: tokens deleted, duplicated or swapped; numbers changed to 0, -1, 1 or huge values;
identifiers swapped with other identifiers, op names, builtins and keywords; string literals
replaced; lines deleted, duplicated or swapped; random characters inserted; the text truncated.
Each mutant is elaborated (a mutated library file through a model that imports it, or through
one of its own blocks as the entry point) and must either give a graph that passes the IR
verifier or raise `ArchError` whose `render()` works. Any other exception, or a case that runs
past `PER_CASE_SECONDS`, is a bug in archc.

An accepted mutant must also run: it is built as a torch module and called on random inputs of
its declared types, its symbolic axes set to small sizes its run-time guards allow
(`guard_sizes`); its outputs must have the declared shapes and dtypes. A spec that checks and
then fails when built and run is a bug too (an `ArchError` from the build, such as a model too
large for memory, is an answer). Models whose parameters pass `FULL_RUN_PARAMS` (by default
`DEFAULT_RUN_PARAMS`) or whose activations pass `RUN_ELEMENTS` are not run (counted as such). All accepted mutants run in the full mode; by default the first
`DEFAULT_RUNS` of each file.

How much runs:
- default: a fixed-seed sample of `DEFAULT_CASES` = 2000 mutants, spread evenly over the spec
  files (about 25 s of CPU in all; on a loaded machine the wall time grows with the load);
- `ARCHC_FUZZ_FULL=1`: 50000 mutants (`ARCHC_FUZZ_CASES=N` sets any number);
- `ARCHC_FUZZ_SEED=S` changes the seed (the default is fixed so runs are reproducible).
A failure prints the file, the case number, the mutations and where the mutant was written; each
file prints its counts (located errors, accepted, run, too large to run, failures).
"""

from __future__ import annotations

import itertools
import math
import os
import random
import re
import shutil
import signal
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from archc import guards
from archc.api import build
from archc.backends.torch.inits import DTYPES
from archc.backends.torch.inputs import example_inputs
from archc.elaborate import elaborate_text
from archc.elaborate.elaborator import BUILTINS, Limits
from archc.errors import ArchError
from archc.frontend import ast as A
from archc.frontend.parser import parse
from archc.ir.graph import Graph
from archc.ir.types import TensorType
from archc.ir.verify import verify
from archc.sizes import Size, SizeError, parse_size
from archc.ops import registry

SPECS = Path(__file__).resolve().parents[1] / "specs"
DEFAULT_CASES = 2000
FULL_CASES = 50000
# A mutant that takes longer hangs the compiler in practice; a typical case takes 50 ms, the
# slowest ones (a stack made 778 deep) ~1 s alone, ~5 s with the machine loaded by other jobs.
PER_CASE_SECONDS = 30.0
# smaller than the defaults, so that a mutant that turns depth 3 into depth 3454 (a legal, big
# model) stays quick; the limits themselves are what the fuzzer checks, not their size
LIMITS = Limits(max_nodes=3_000, max_steps=40_000)
DEFAULT_RUNS = 1  # accepted mutants built and run per file in the default mode (all in the full mode)
FULL_RUN_PARAMS = 30_000_000  # parameter elements past which a mutant is not run (ResNet-50, ConvNeXt-T run)
RUN_SECONDS = 180.0  # building and running one mutant (a 30M-parameter model on a loaded machine: ~20 s)
DEFAULT_RUN_PARAMS = 2_000_000  # the same in the default mode: the small specs (examples, library blocks)
RUN_ELEMENTS = 20_000_000  # elements of one activation, likewise
SEED = os.environ.get("ARCHC_FUZZ_SEED", "archc-fuzz-1")


def _total_cases() -> int:
    if os.environ.get("ARCHC_FUZZ_CASES"):
        return int(os.environ["ARCHC_FUZZ_CASES"])
    return FULL_CASES if os.environ.get("ARCHC_FUZZ_FULL") == "1" else DEFAULT_CASES


def _spec_files() -> list[Path]:
    return sorted(SPECS.rglob("*.arch"))


FILES = _spec_files()

# ---- mutations ------------------------------------------------------------------------------------

_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|#[^\n]*|\d[\d_]*(?:\.\d*)?(?:[eE][-+]?\d+)?|[A-Za-z_]\w*'
                    r'|>>|=>|->|\*\*|//|==|!=|<=|>=|\s+|.', re.DOTALL)
_KEYWORDS = ["block", "model", "interface", "axis", "let", "import", "from", "as", "return", "if", "elif",
             "else", "for", "in", "and", "or", "not", "true", "false", "stack", "choice"]
_NUMBERS = ["0", "-1", "1", "2", "3", "7", "0.5", "1e308", "1000000", "99999999999999999999", "4611686018427387904",
            "2 ** 62", "(0 - 5)", "1_0"]
_STRINGS = ['""', '"b t (h d) -> b h t d"', '"b (h d) -> b h d"', '"... -> ..."', '"b t d, b s d -> b t s"',
            '"x"', '"(((("', '"a a -> a"', '"b t d -> d t b"', '"same"', '"\\n"', '"é∀"', '"../../etc/passwd.arch"',
            '"std/nn.arch"']
_CHARS = "()[]{}<>,.;:=+-*/%@#\"'\\\t\n $?!~`^&|0123456789abcdefxyzBTD_é∀\x00\u200b"


def _is_code(tok: str) -> bool:
    return not tok.isspace() and not tok.startswith("#")


def _vocabulary(tokens: list[str]) -> list[str]:
    names = {t for t in tokens if re.fullmatch(r"[A-Za-z_]\w*", t)}
    return sorted(names | set(registry.names()) | set(BUILTINS) | set(_KEYWORDS))


Mutation = Callable[[list[str], random.Random, list[str]], tuple[list[str], str]]


def _pick(tokens: list[str], rng: random.Random, want: Callable[[str], bool] = _is_code) -> int | None:
    places = [i for i, t in enumerate(tokens) if want(t)]
    return rng.choice(places) if places else None


def _delete(tokens: list[str], rng: random.Random, vocab: list[str]) -> tuple[list[str], str]:
    i = _pick(tokens, rng)
    if i is None:
        return tokens, "delete: nothing"
    return tokens[:i] + tokens[i + 1:], f"delete {tokens[i]!r}"


def _duplicate(tokens: list[str], rng: random.Random, vocab: list[str]) -> tuple[list[str], str]:
    i = _pick(tokens, rng)
    if i is None:
        return tokens, "duplicate: nothing"
    return tokens[:i + 1] + [" ", tokens[i]] + tokens[i + 1:], f"duplicate {tokens[i]!r}"


def _swap(tokens: list[str], rng: random.Random, vocab: list[str]) -> tuple[list[str], str]:
    i, j = _pick(tokens, rng), _pick(tokens, rng)
    if i is None or j is None:
        return tokens, "swap: nothing"
    out = list(tokens)
    out[i], out[j] = out[j], out[i]
    return out, f"swap {tokens[i]!r} and {tokens[j]!r}"


def _number(tokens: list[str], rng: random.Random, vocab: list[str]) -> tuple[list[str], str]:
    i = _pick(tokens, rng, lambda t: t[:1].isdigit())
    if i is None:
        return _identifier(tokens, rng, vocab)
    new = rng.choice(_NUMBERS + [str(rng.randint(0, 5000))])
    return tokens[:i] + [new] + tokens[i + 1:], f"number {tokens[i]!r} -> {new!r}"


def _identifier(tokens: list[str], rng: random.Random, vocab: list[str]) -> tuple[list[str], str]:
    i = _pick(tokens, rng, lambda t: re.fullmatch(r"[A-Za-z_]\w*", t) is not None)
    if i is None:
        return _insert(tokens, rng, vocab)
    new = rng.choice(vocab)
    return tokens[:i] + [new] + tokens[i + 1:], f"name {tokens[i]!r} -> {new!r}"


def _string(tokens: list[str], rng: random.Random, vocab: list[str]) -> tuple[list[str], str]:
    i = _pick(tokens, rng, lambda t: t.startswith('"'))
    if i is None:
        return _number(tokens, rng, vocab)
    new = rng.choice(_STRINGS)
    return tokens[:i] + [new] + tokens[i + 1:], f"string {tokens[i]!r} -> {new!r}"


def _insert(tokens: list[str], rng: random.Random, vocab: list[str]) -> tuple[list[str], str]:
    i = rng.randrange(len(tokens) + 1)
    new = "".join(rng.choice(_CHARS) for _ in range(rng.randint(1, 3)))
    return tokens[:i] + [new] + tokens[i:], f"insert {new!r}"


def _truncate(tokens: list[str], rng: random.Random, vocab: list[str]) -> tuple[list[str], str]:
    i = rng.randrange(len(tokens) + 1)
    return tokens[:i], f"truncate at token {i}"


def _lines(tokens: list[str], rng: random.Random, vocab: list[str]) -> tuple[list[str], str]:
    lines = "".join(tokens).split("\n")
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    how = rng.choice(["delete", "duplicate", "swap"])
    if how == "delete":
        lines = lines[:i] + lines[i + 1:]
    elif how == "duplicate":
        lines = lines[:i + 1] + [lines[i]] + lines[i + 1:]
    else:
        lines[i], lines[j] = lines[j], lines[i]
    return _TOKEN.findall("\n".join(lines)), f"{how} line {i + 1}"


MUTATIONS: list[tuple[Mutation, int]] = [(_delete, 3), (_duplicate, 2), (_swap, 2), (_number, 4), (_identifier, 4),
                                         (_string, 1), (_insert, 2), (_truncate, 1), (_lines, 2)]


# mutations that keep the text parseable more often than not, so that the elaborator sees them
SEMANTIC: list[tuple[Mutation, int]] = [(_number, 3), (_identifier, 3), (_string, 1)]


def mutate(text: str, rng: random.Random) -> tuple[str, list[str]]:
    tokens = _TOKEN.findall(text)
    vocab = _vocabulary(tokens)
    done = []
    table = SEMANTIC if rng.random() < 0.5 else MUTATIONS
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3])):
        fn = rng.choices([m for m, _ in table], [w for _, w in table])[0]
        tokens, what = fn(tokens, rng, vocab)
        done.append(what)
    return "".join(tokens), done


# ---- running one mutant ---------------------------------------------------------------------------

class _Timeout(BaseException):
    """Raised by the alarm; a BaseException so that no `except Exception` in archc swallows it."""


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    def ring(signum: int, frame: object) -> None:
        raise _Timeout()

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass(frozen=True)
class Target:
    """How a spec file is compiled: directly, or as a library through a model that imports it."""

    path: Path
    hosts: tuple[Path, ...]  # models that import it (for files under std/)
    blocks: tuple[tuple[str, dict[str, object]], ...]  # entry points (model=NAME) and values for their
    # required parameters, so that a library block is elaborated past its signature


def _target(path: Path) -> Target:
    rel = path.relative_to(SPECS).as_posix()
    hosts = tuple(p for p in FILES if p != path and f'"{rel}"' in p.read_text(encoding="utf-8"))
    try:
        blocks = tuple(entry for it in parse(path.read_text(encoding="utf-8"), str(path)).items
                       if isinstance(it, A.BlockDef) and (entry := _entry(it)) is not None)
    except ArchError:
        blocks = ()
    return Target(path, hosts, blocks)


_SAMPLE_VALUES: dict[str, object] = {"int": 16, "float": 0.5, "bool": True, "axis": 16}


def _entry(b: A.BlockDef) -> tuple[str, dict[str, object]] | None:
    """A block as an entry point, with a value for each required parameter (None: one cannot be made)."""
    values: dict[str, object] = {}
    for f in b.params:
        if f.default is None:
            kind = f.type.name if isinstance(f.type, A.TypeName) else ""
            if kind not in _SAMPLE_VALUES:
                return None
            values[f.name] = _SAMPLE_VALUES[kind]
    return b.name, values


def _compile(target: Target, text: str, rng: random.Random, sandbox: Path) -> Graph:
    """Elaborate a mutant of target.path; raises what archc raises."""
    is_library = target.path.parent.name == "std"
    if is_library and target.hosts and rng.random() < 0.6:
        # the mutant replaces the library file in a copy of specs/, so the host's import finds it
        rel = target.path.relative_to(SPECS)
        (sandbox / rel).write_text(text, encoding="utf-8")
        try:
            host = rng.choice(target.hosts)
            graph = elaborate_text(host.read_text(encoding="utf-8"), str(sandbox / host.name), folder=sandbox,
                                   limits=LIMITS)
        finally:
            shutil.copyfile(target.path, sandbox / rel)
    elif is_library and target.blocks:
        name, overrides = rng.choice(target.blocks)
        graph = elaborate_text(text, str(target.path), model=name, overrides=overrides, folder=target.path.parent,
                               limits=LIMITS)
    else:
        graph = elaborate_text(text, str(target.path), folder=target.path.parent, limits=LIMITS)
    return verify(graph)


def guard_sizes(graph: Graph) -> dict[str, int] | None:
    """Small sizes for the symbolic axes that every run-time guard allows and that make every value's
    size a whole, non-negative number (None: none found among the small candidates)."""
    axes = sorted({a for p in graph.inputs for s in p.type.sizes for a in s.atoms()})
    conditions = [(parse_size(g.size), g.kind, g.bound) for g in graph.guards]
    sizes = {s for t in graph.values.values() for s in t.sizes if not s.is_const and s.atoms() <= set(axes)}
    for values in itertools.islice(itertools.product(*[(2, 4, 8, 6, 16, 3, 12, 24, 1, 5)] * len(axes)), 2000):
        env = {a: Size.of(v) for a, v in zip(axes, values)}
        try:
            if all(guards.holds(kind, size.subs(env).value, bound) for size, kind, bound in conditions) and \
                    all(s.subs(env).value >= 0 for s in sizes):
                return dict(zip(axes, values))
        except SizeError:  # a fractional size: T/2 with T odd
            continue
    return None


def _numel(t: TensorType, env: dict[str, Size]) -> int:
    return math.prod(s.subs(env).value for s in t.sizes)


def run_accepted(graph: Graph, max_params: int) -> str:
    """Build and run an accepted mutant: 'ran', 'too large', or 'refused' (a located error at build).
    Raises on anything else, and when an output differs from its declared type."""
    sizes = guard_sizes(graph)
    if sizes is None:
        raise AssertionError(f"no small sizes satisfy the guards {[g.condition for g in graph.guards]}")
    env = {a: Size.of(v) for a, v in sizes.items()}
    inner = {a for t in graph.values.values() for s in t.sizes for a in s.atoms()} - env.keys()
    env.update({a: Size.of(math.prod(sizes.values())) for a in inner})  # a mixture's routed tokens: at most all
    if graph.param_count(trainable_only=False) > max_params or \
            any(_numel(t, env) > RUN_ELEMENTS for t in graph.values.values()):
        return "too large"
    try:
        module = build(graph).eval()
    except ArchError:
        return "refused"
    inputs = example_inputs(graph, sizes=sizes, seed=0)
    with torch.no_grad():
        out = module(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    assert len(outs) == len(graph.outputs), f"{len(outs)} outputs, declared {len(graph.outputs)}"
    for port, got in zip(graph.outputs, outs):
        want = tuple(s.subs(env).value for s in port.type.sizes)
        dtype = getattr(torch, DTYPES[port.type.dtype].split(".")[1])
        assert tuple(got.shape) == want and got.dtype == dtype, \
            f"output {port.name}: {got.dtype}{list(got.shape)}, declared {port.type} = {dtype}{list(want)} at {sizes}"
    return "ran"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(SPECS / "std", root / "std")
    return root


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs SIGALRM for the per-case deadline")
@pytest.mark.parametrize("path", FILES, ids=[p.relative_to(SPECS).as_posix() for p in FILES])
def test_mutated_spec_fails_only_with_arch_errors(path: Path, sandbox: Path, tmp_path: Path) -> None:
    target = _target(path)
    original = path.read_text(encoding="utf-8")
    cases = max(1, _total_cases() // max(1, len(FILES)))
    full = _total_cases() > DEFAULT_CASES
    runs = cases if full else DEFAULT_RUNS
    failures: list[str] = []
    slowest = (0.0, -1)
    counts = {"located errors": 0, "accepted": 0, "ran": 0, "too large": 0, "refused": 0, "failed": 0}
    for case in range(cases):
        rng = random.Random(f"{SEED}:{target.path.name}:{case}")
        text, done = mutate(original, rng)
        start = time.perf_counter()
        problem = None
        try:
            with _deadline(PER_CASE_SECONDS):
                graph = _compile(target, text, rng, sandbox)
            counts["accepted"] += 1
            if counts["ran"] + counts["refused"] < runs:
                try:
                    with _deadline(RUN_SECONDS):
                        counts[run_accepted(graph, FULL_RUN_PARAMS if full else DEFAULT_RUN_PARAMS)] += 1
                except Exception:  # noqa: BLE001 - it checked, so it must run
                    counts["failed"] += 1
                    problem = "checks, then fails when built and run:\n" + traceback.format_exc(limit=-8)
        except ArchError as err:
            counts["located errors"] += 1
            try:
                err.render()
            except Exception:  # noqa: BLE001 - rendering an error must never fail
                problem = "render() failed:\n" + traceback.format_exc()
        except _Timeout:
            problem = f"took more than {PER_CASE_SECONDS} s to check, or {RUN_SECONDS} s to build and run"
        except Exception:  # noqa: BLE001 - anything but ArchError is a bug in archc
            problem = traceback.format_exc(limit=-8)
        elapsed = time.perf_counter() - start
        slowest = max(slowest, (elapsed, case))
        if problem is not None:
            saved = tmp_path / f"case{case}_{path.name}"
            saved.write_text(text, encoding="utf-8")
            failures.append(f"case {case} ({'; '.join(done)}), mutant saved as {saved}:\n{problem}")
            if len(failures) >= 5:
                break
    print(f"{path.name}: {cases} cases, slowest {slowest[0]:.2f} s (case {slowest[1]}); "
          + ", ".join(f"{k} {v}" for k, v in counts.items()))
    assert not failures, "\n\n".join(failures)
