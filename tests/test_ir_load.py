"""`archc ir FILE --load` on malformed IR files (#11 item 4): each is refused with exit 1 and one clear
line ("not a valid archc IR file: ..."), never an internal error (exit 70), never a hang.

The corpus mutates the IR of a small valid spec: cycles, undefined values, duplicate SSA outputs,
type and shape disagreements, bad parameters, NaN anywhere, non-strict field types, sizes whose
parsing alone would be unbounded work, and files that are not JSON or not regular files.
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from archc.cli import main
from archc.elaborate import elaborate_text
from archc.ir.graph import Graph
from archc.ir.types import check_size_text
from archc.ir.verify import InvalidIR, load_json

SPEC = """axis B, T, D

block Mlp (x: [B, T, D]) -> [B, T, D] {
    fc = linear(D)
    return x >> fc >> gelu
}

model M (x: f32[B, T, 8]) -> f32[B, T, 4] {
    ln = layernorm()
    m = Mlp()
    head = linear(4)
    return x >> ln >> m >> head
}
"""


@pytest.fixture(scope="module")
def base() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(elaborate_text(SPEC, "base.arch").to_json())
    assert [n["op"] for n in data["nodes"]] == ["layernorm", "linear", "gelu", "linear"]
    return data


Mutation = Callable[[dict[str, Any]], Any]


def put(path: list[Any], value: Any) -> Mutation:
    def mutate(d: dict[str, Any]) -> dict[str, Any]:
        cur = d
        for key in path[:-1]:
            cur = cur[key]
        cur[path[-1]] = value
        return d
    return mutate


def text(content: str) -> Mutation:
    return lambda d: content


def head_features(n: int) -> Mutation:
    """linear(4) -> linear(n), consistently: attributes, types, the output port, parameter shapes."""
    def mutate(d: dict[str, Any]) -> dict[str, Any]:
        d["nodes"][3]["attrs"]["features"] = n
        d["scopes"]["head"]["args"]["features"] = n
        d["values"]["%4"]["shape"][2]["size"] = n
        d["outputs"][0]["type"]["shape"][2]["size"] = n
        d["params"]["head.weight"]["shape"] = [n, 8]
        d["params"]["head.bias"]["shape"] = [n]
        return d
    return mutate


def first_axis(size: Any) -> Mutation:
    """Every type's first axis (B) becomes `size`, consistently."""
    def mutate(d: dict[str, Any]) -> dict[str, Any]:
        for t in [*d["values"].values(), *(p["type"] for p in d["inputs"] + d["outputs"])]:
            t["shape"][0]["size"] = size
        return d
    return mutate


def duplicate_output(d: dict[str, Any]) -> dict[str, Any]:
    d["nodes"][2]["outputs"] = ["%2"]  # gelu redefines its input, of the same type
    d["nodes"][3]["inputs"] = ["%2"]
    del d["values"]["%3"]
    return d


def cycle(d: dict[str, Any]) -> dict[str, Any]:
    d["nodes"][1]["inputs"] = ["%3"]  # m.fc reads gelu's output, gelu reads m.fc's
    return d


def unused_value(d: dict[str, Any]) -> dict[str, Any]:
    d["values"]["x y"] = d["values"]["%1"]
    return d


def drop(*path: Any) -> Mutation:
    def mutate(d: dict[str, Any]) -> dict[str, Any]:
        cur = d
        for key in path[:-1]:
            cur = cur[key]
        del cur[path[-1]]
        return d
    return mutate


CASES: dict[str, tuple[Mutation, str]] = {
    # not an IR document at all
    "empty": (text(""), "Expecting value"),
    "not JSON": (text("{"), "Expecting property name"),
    "a list": (text("[]"), "Input should be an object"),
    "NaN alone": (text("NaN"), "holds NaN"),
    "nested 100000 deep": (text("[" * 100_000 + "]" * 100_000), "nested too deeply"),
    "nested 150 deep": (put(["model_args", "x"], json.loads("[" * 150 + "]" * 150)), "deeper than 100"),
    # strict field types
    "schema_version \"2\"": (put(["schema_version"], "2"), "schema_version: Input should be a valid integer"),
    "schema_version true": (put(["schema_version"], True), "schema_version: Input should be a valid integer"),
    "schema_version 2.0": (put(["schema_version"], 2.0), "schema_version: Input should be a valid integer"),
    "schema_version 1": (put(["schema_version"], 1), "IR schema version 1 is not 2"),
    "no nodes": (drop("nodes"), "nodes: Field required"),
    "shape of strings": (put(["params", "head.bias", "shape"], ["4"]), "shape.0: Input should be a valid integer"),
    "trainable \"yes\"": (put(["params", "head.bias", "trainable"], "yes"), "trainable: Input should be a valid boolean"),
    "applied \"1\"": (put(["scopes", "m", "applied"], "1"), "applied: Input should be a valid integer"),
    "span line \"9\"": (put(["nodes", 0, "span", "line"], "9"), "line: Input should be a valid integer"),
    "attribute \"8\"": (put(["nodes", 1, "attrs", "features"], "8"), "attribute 'features' is \"8\""),
    "attribute 1 for true": (put(["nodes", 1, "attrs", "bias"], 1), "attribute 'bias' is 1"),
    # ops and attributes
    "unknown op": (put(["nodes", 2, "op"], "no_such_op"), "unknown op 'no_such_op'"),
    "bad attribute": (put(["nodes", 2, "attrs", "approximate"], "sideways"), "argument 'approximate'"),
    "unknown attribute": (put(["nodes", 2, "attrs", "bogus"], 1), "has no argument 'bogus'"),
    "NaN eps": (put(["nodes", 0, "attrs", "eps"], float("nan")), "holds NaN"),
    "infinite eps": (put(["nodes", 0, "attrs", "eps"], float("inf")), "holds Infinity"),
    "1e999 eps": (text(""), "not finite"),  # written below: json.dumps cannot spell it
    "NaN model argument": (put(["model_args", "x"], float("nan")), "holds NaN"),
    "NaN scope argument": (put(["scopes", "ln", "args", "eps"], float("nan")), "holds NaN"),
    "three inputs to gelu": (put(["nodes", 2, "inputs"], ["%2", "%2", "%2"]), "3 inputs, the op takes 1"),
    "no input to gelu": (put(["nodes", 2, "inputs"], []), "0 inputs, the op takes 1"),
    # SSA
    "cycle": (cycle, "input %3 is used before it is defined"),
    "undefined input": (put(["nodes", 1, "inputs"], ["%99"]), "value %99 has no type"),
    "duplicate output": (duplicate_output, "value %2 is defined twice"),
    "undefined output": (put(["outputs", 0, "value"], "%99"), "never defined"),
    "value not %N": (unused_value, "value 'x y' is not named %N"),
    "input defined twice": (lambda d: (d["inputs"].append(dict(d["inputs"][0], name="y")), d)[1], "defined twice"),
    # types and shapes
    "wrong dtype": (put(["values", "%2", "dtype"], "f16"), "output %2 is typed f16"),
    "unknown dtype": (put(["values", "%2", "dtype"], "f99"), "unknown dtype 'f99'"),
    "wrong shape": (put(["values", "%2", "shape", 2, "size"], 9), "output %2 is typed f32[B, T, 9]"),
    "input port disagrees": (put(["inputs", 0, "type", "dtype"], "f16"), "input 'x' has type f16"),
    "output port disagrees": (put(["outputs", 0, "type", "shape", 2, "size"], 5), "output 'out' has type"),
    "negative axis": (first_axis(-3), "the axis size -3 is negative"),
    "size past 2**62": (first_axis(2**70), "too large"),
    "size true": (first_axis(True), "a size cannot be a bool"),
    "size 2.5": (first_axis(2.5), "not a size"),
    "size garbage": (first_axis("B +"), "cannot parse size"),
    "rank 65": (lambda d: (d["values"]["%1"]["shape"].extend([{"size": 1}] * 62), d)[1], "rank 65 is above 64"),
    # parameters
    "negative features": (head_features(-4), "must be positive"),
    "features 10**20": (head_features(10**20), "too large"),
    "features 10**12": (head_features(10**12), "more than 100,000,000,000 elements"),
    "negative parameter shape": (put(["params", "head.bias", "shape"], [-4]), "has the shape [-4]"),
    "unused parameter": (put(["params", "extra"], {"name": "extra", "shape": [3]}), "parameters no node uses"),
    "missing parameter": (drop("params", "head.bias"), "parameter 'head.bias' is None"),
    "parameter under another name": (put(["params", "head.bias", "name"], "other"), "under the name 'other'"),
    "bad initializer": (put(["params", "head.bias", "init"], "evil()"), "unknown initializer"),
    "parameter dtype": (put(["params", "head.bias", "dtype"], "q7"), "unknown dtype 'q7'"),
    # the block structure
    "calls disagree": (put(["scopes", "m", "calls", 0, "stop"], 4), "block structure"),
    "key disagrees": (put(["scopes", "m", "key"], "0000"), "block structure"),
    "bad scope path": (put(["nodes", 0, "scope"], "a..b"), "scope path 'a..b'"),
    # sizes whose parsing alone is unbounded work (a hang, a RecursionError, a MemoryError)
    "B^99999999999": (first_axis("B^99999999999"), "power above 64"),
    "B^100000": (first_axis("B^100000"), "power above 64"),
    "(A+B+C+D+E+F+G+H)^8": (first_axis("(A+B+C+D+E+F+G+H)^8"), "more than 64 terms"),
    "A0+...+A99": (first_axis("+".join(f"A{i}" for i in range(100))), "more than 64 terms"),
    "A0+...+A4999": (first_axis("+".join(f"A{i}" for i in range(5000))), "longer than 1000 characters"),
    "5000 parentheses": (first_axis("(" * 5000 + "B" + ")" * 5000), "longer than 1000 characters"),
    "40 parentheses": (first_axis("(" * 40 + "B" + ")" * 40), "deeper than 32"),
    "40 floors": (first_axis("floor(" * 40 + "B" + ", 2)" * 40), "deeper than 32"),
    "400 minus signs": (first_axis("-" * 400 + "B"), "too many signs"),
    "5000 digits": (first_axis("9" * 5000), "longer than 1000 characters"),
    "30 digits": (first_axis("9" * 30 + "*B"), "more than 19 digits"),
    "a product of sums": (first_axis("(A+1)*(B+1)*(C+1)*(D+1)*(E+1)*(F+1)*(G+1)"), "more than 64 terms"),
    "types that multiply out": (lambda d: (d["values"]["%1"]["shape"].extend(
        [{"size": f"A{i} + B{i} + 1"} for i in range(6)]), d)[1], "multiply out to more than 256 terms"),
}


def _write(tmp_path: Path, base: dict[str, Any], name: str) -> Path:
    mutate, _ = CASES[name]
    data = mutate(copy.deepcopy(base))
    content = data if isinstance(data, str) else json.dumps(data)
    if name == "1e999 eps":
        content = json.dumps(base).replace('"eps": 1e-05', '"eps": 1e999', 1)
    path = tmp_path / "case.json"
    path.write_text(content)
    return path


def test_the_base_loads_and_prints(tmp_path: Path, base: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "base.json"
    path.write_text(json.dumps(base))
    assert main(["ir", "--load", str(path), "--arch"]) == 0
    assert "model M (x: f32[B, T, 8]) -> f32[B, T, 4]" in capsys.readouterr().out
    assert load_json(json.dumps(base)).structural_dict() == Graph.model_validate(base).structural_dict()


@pytest.mark.parametrize("name", list(CASES))
def test_a_malformed_ir_file_is_refused_clearly(name: str, tmp_path: Path, base: dict[str, Any],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, base, name)
    start = time.perf_counter()
    code = main(["ir", "--load", str(path), "--arch"])
    took = time.perf_counter() - start
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.startswith(f"archc: error: {path}: not a valid archc IR file: ") and "internal error" not in err
    assert len(err.strip().splitlines()) == 1
    assert CASES[name][1] in err
    assert took < 60, f"{name}: {took:.1f} s (a hang guard: a bomb file must be refused before the work it asks for)"


def test_load_json_raises_only_invalid_ir(base: dict[str, Any]) -> None:
    for content in ("", "{", json.dumps(dict(base, nodes="x")), json.dumps(dict(base, values=[]))):
        with pytest.raises(InvalidIR):
            load_json(content)
    with pytest.raises(InvalidIR, match="utf-8"):
        load_json(b"\xff\xfe{}")


def test_an_ir_file_that_is_not_a_regular_file_is_refused_unread(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "ir.json"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    assert main(["ir", "--load", str(fifo)]) == 1
    assert "it is a FIFO" in capsys.readouterr().err
    assert main(["ir", "--load", str(tmp_path)]) == 1
    assert "it is a folder" in capsys.readouterr().err
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(300 << 20)  # sparse: nothing is written, and nothing must be read
    assert main(["ir", "--load", str(big)]) == 1
    assert "larger than 256 MiB" in capsys.readouterr().err


def test_an_ir_file_over_max_nodes_is_refused(tmp_path: Path, base: dict[str, Any],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ir.json"
    path.write_text(json.dumps(base))
    assert main(["ir", "--load", str(path), "--max-nodes", "3"]) == 1
    assert "4 nodes, more than the limit 3 (--max-nodes)" in capsys.readouterr().err


@pytest.mark.parametrize("size", ["B", "4*D", "B*T + 4*D + 1", "floor(T + 1, 2)^2", "B/2 + 1/2", "-B + 1",
                                  "D^64", "(" * 32 + "B" + ")" * 32])
def test_sizes_archc_prints_pass_the_text_bounds(size: str) -> None:
    check_size_text(size)
