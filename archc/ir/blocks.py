"""The block structure of a graph: which instances can be called, with what, and which are alike.

The graph is a flat list of nodes whose scope paths name the instance each belongs to. Over
that list, `annotate(graph)` records on each block instance (a scope whose kind is a block, a
stack or a connection policy, not an op) what a module tree needs:

    calls   each application of the instance: the values that enter (in order of first use) and
            leave (in order of definition; read after it, or returned by the model). An instance
            has calls only when its nodes are contiguous runs that read only tensors inside it,
            and all its runs compute the same thing (a shared instance applied twice).
    key     a structural key: equal for two instances exactly when they are the same block with
            the same arguments on the same input types, computing the same ops on the same
            parameter shapes, up to names (and up to initializers, which set starting values).

An instance without calls (a pass merged across its boundary, it reads another instance's
weights, its nodes interleave with others') has its nodes run by its parent. Passes need not
keep the structure: the pass manager annotates again after each pass, and `verify` checks that
what a graph carries is what `annotate` computes. A tied use (GPT-2's head reading the token
embedding's weight) runs where its inputs and users meet, not inside the owner (`homes`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from archc.ir.graph import BlockCall, Graph, Node
from archc.ops import registry


def within(path: str, scope: str) -> bool:
    """Whether `path` is `scope` or lies inside it."""
    return not scope or path == scope or path.startswith(scope + ".")


def common_scope(paths: list[str]) -> str:
    if not paths:
        return ""
    parts = [p.split(".") if p else [] for p in paths]
    common: list[str] = []
    for names in zip(*parts):
        if len(set(names)) != 1:
            break
        common.append(names[0])
    return ".".join(common)


def tied_uses(graph: Graph) -> set[int]:
    """Nodes that reuse another op's parameters: `tied=` (GPT-2's output projection), or an op in
    the scope of another (`@scope("wte") linear(...)`): every node after the op that owns it,
    except the same op instance applied again (the same op, attributes and parameters: a named
    `f` in `f(f(x))`, or the ops of a shared block applied twice), which is a second call of it."""
    owners: dict[str, Node] = {}
    out: set[int] = set()
    for i, node in enumerate(graph.nodes):
        if node.params and node.param_owners() != {node.scope}:  # `tied=`: another instance's weights
            out.add(i)
            continue
        info = graph.scopes.get(node.scope)
        if info is not None:  # a recorded instance: its op owns it
            if not registry.has(info.kind):
                continue
            owner = node.op == info.kind
        else:  # a scope forced by @scope, never recorded: the first op with parameters owns it
            if not node.params and node.scope not in owners:
                continue
            owner = True
        first = owners.get(node.scope)
        if owner and first is None:
            owners[node.scope] = node
        elif not (owner and first is not None and (node.op, node.attrs, node.params) == (first.op, first.attrs,
                                                                                           first.params)):
            out.add(i)
    return out


def homes(graph: Graph) -> list[str]:
    """Each node's scope, except that a tied use lives where its inputs and users meet (GPT-2's
    logits in the model, not inside the token embedding whose weight they share)."""
    out = [n.scope for n in graph.nodes]
    tied = tied_uses(graph)
    if not tied:
        return out
    producer = {v: i for i, n in enumerate(graph.nodes) for v in n.outputs}
    returned = {p.value for p in graph.outputs}
    users: dict[str, list[int]] = {}
    for j, n in enumerate(graph.nodes):
        for v in n.inputs:
            users.setdefault(v, []).append(j)
    for i in sorted(tied):
        node = graph.nodes[i]
        near = [out[producer[v]] if v in producer else "" for v in node.inputs]
        for v in node.outputs:
            near += [graph.nodes[j].scope for j in users.get(v, [])] + ([""] if v in returned else [])
        out[i] = common_scope(near)
    return out


def is_block(graph: Graph, path: str) -> bool:
    """A scope that is a block instance, a stack or a connection policy's, not an op's."""
    info = graph.scopes.get(path)
    return bool(path) and info is not None and not registry.has(info.kind)


def _runs(indices: list[int]) -> list[range]:
    out: list[range] = []
    for i in indices:
        if out and out[-1].stop == i:
            out[-1] = range(out[-1].start, i + 1)
        else:
            out.append(range(i, i + 1))
    return out


def _applications(runs: list[range], applied: int) -> list[range] | None:
    """The runs cut into one per application: a shared instance applied twice in a row (`m(m(x))`)
    makes one contiguous run of two equal halves. None when they cannot be cut evenly."""
    if len(runs) >= applied:
        return runs
    total = sum(len(r) for r in runs)
    if total % applied or any(len(r) % (total // applied) for r in runs):
        return None
    size = total // applied
    return [range(i, i + size) for r in runs for i in range(r.start, r.stop, size)]


def _type(graph: Graph, v: str, texts: dict[str, str]) -> str:
    """A value's dtype and sizes; axis names are display labels, not part of the type. `texts`
    keeps each value's text: a value is seen once per block around it."""
    text = texts.get(v)
    if text is None:
        t = graph.values[v]
        text = texts[v] = t.dtype + t.sizes_str()
    return text


def _computation(graph: Graph, run: range, call: BlockCall, path: str, types: bool,
                 texts: dict[str, str]) -> list[Any]:
    """The run up to names: ops, attributes, relative scopes and wiring (and types, shapes)."""
    local = {v: f"in{k}" for k, v in enumerate(call.inputs)}
    items: list[Any] = []
    for n, i in enumerate(run):
        node = graph.nodes[i]
        for k, v in enumerate(node.outputs):
            local[v] = f"n{n}.{k}"
        item = [node.op, {k: v for k, v in node.attrs.items() if k != "init"}, node.scope[len(path):],
                {r: p[len(path):] for r, p in node.params.items()}, [local.get(v) for v in node.inputs]]
        if types:
            item += [[_type(graph, v, texts) for v in node.outputs],
                     {r: graph.params[p].shape for r, p in node.params.items()}]
        items.append(item)
    items.append([local[v] for v in call.outputs])
    if types:
        items.append([_type(graph, v, texts) for v in call.inputs])
    return items


def block_calls(graph: Graph) -> dict[str, tuple[tuple[BlockCall, ...], str]]:
    """Per block instance that can be called: its calls and its structural key."""
    home = homes(graph)
    readers: dict[str, set[int]] = {}
    for i, node in enumerate(graph.nodes):
        for v in node.inputs:
            readers.setdefault(v, set()).add(i)
    returned = {p.value for p in graph.outputs}
    under: dict[str, list[int]] = {}
    for i, h in enumerate(home):
        path = h
        while path:
            under.setdefault(path, []).append(i)
            path = path.rpartition(".")[0]
    out: dict[str, tuple[tuple[BlockCall, ...], str]] = {}
    texts: dict[str, str] = {}
    for path in graph.scopes:
        nodes = under.get(path)
        if not nodes or not is_block(graph, path):
            continue
        if any(not p.startswith(path + ".") for i in nodes for p in graph.nodes[i].params.values()):
            continue  # it reads tensors it does not own
        calls, shapes = [], set()
        runs = _applications(_runs(nodes), graph.scopes[path].applied)
        if runs is None:
            continue
        for run in runs:
            made = {v for i in run for v in graph.nodes[i].outputs}
            ins = tuple(dict.fromkeys(v for i in run for v in graph.nodes[i].inputs if v not in made))
            outs = tuple(v for i in run for v in graph.nodes[i].outputs
                         if v in returned or any(j not in run for j in readers.get(v, ())))
            call = BlockCall(start=run.start, stop=run.stop, inputs=ins, outputs=outs)
            calls.append(call)
            shapes.add(json.dumps(_computation(graph, run, call, path, True, texts), sort_keys=True, default=str))
        if len(shapes) != 1 or any(not c.outputs for c in calls):
            continue
        info = graph.scopes[path]
        key = json.dumps([info.kind, {k: v for k, v in info.args.items() if k != "init"}, shapes.pop()],
                         sort_keys=True, default=str)
        out[path] = (tuple(calls), hashlib.sha256(key.encode()).hexdigest()[:16])
    return out


def annotate(graph: Graph) -> Graph:
    """`graph` with the calls and structural key of every block instance recorded in its scopes."""
    found = block_calls(graph)
    scopes = {}
    for path, info in graph.scopes.items():
        calls, key = found.get(path, ((), ""))
        scopes[path] = info if (info.calls, info.key) == (calls, key) else \
            info.model_copy(update={"calls": calls, "key": key})
    return graph.model_copy(update={"scopes": scopes})
