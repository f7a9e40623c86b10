"""Conditional computation in plain PyTorch: fast feedforward trees and mixtures of experts
(archc/ops/conditional.py says what each op means). This file needs only torch; the torch backend copies what follows the
imports into a generated module that uses these ops, and the fx backend calls the same functions.

A tree of depth D has 2^D - 1 decision nodes in breadth-first order (node k's children are
2k + 1 and 2k + 2) and, for `fff`, 2^D leaves. One tie rule everywhere: a node whose logit is
>= 0 sends its input right (child 2k + 2), in the hard forms and when soft decisions are rounded.
"""

import torch
import torch.nn.functional as F

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "tanh": torch.tanh,
               "gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}


def _mixture(logits: torch.Tensor, depth: int, hard: bool) -> torch.Tensor:
    """[n, 2^D]: the weight of each leaf, the product of the decisions along its path (right with
    probability sigmoid(logit), or 0/1 by the tie rule when `hard`)."""
    right = (logits >= 0).to(logits.dtype) if hard else torch.sigmoid(logits)
    mix = logits.new_ones(logits.shape[0], 1)
    for d in range(depth):
        p = right[:, 2 ** d - 1:2 ** (d + 1) - 1]
        mix = torch.stack((mix * (1 - p), mix * p), dim=-1).flatten(1)
    return mix


def node_entropy(logits: torch.Tensor) -> torch.Tensor:
    """[nodes]: the mean over inputs of each decision's Bernoulli entropy (the hardening loss of
    Belcak & Wattenhofer 2023 adds h times their sum); p is clamped to [1e-6, 1 - 1e-6]."""
    p = torch.sigmoid(logits).clamp(1e-6, 1 - 1e-6)
    return (-p * torch.log(p) - (1 - p) * torch.log(1 - p)).mean(dim=0)


def fff(x: torch.Tensor, node_weights: torch.Tensor, node_biases: torch.Tensor, w1s: torch.Tensor,
        b1s: torch.Tensor, w2s: torch.Tensor, b2s: torch.Tensor, depth: int, act: str, form: str,
        training: bool, entropy: bool = False):
    """Fast feedforward (Belcak & Wattenhofer 2023): `form` "soft" mixes every leaf by its path
    probability; "hardened" mixes them by 0/1 decisions; "hard" descends the tree and computes one
    leaf per input; "auto" is soft in training and hard in eval."""
    shape = x.shape
    x = x.reshape(-1, shape[-1])
    if form == "auto":
        form = "soft" if training else "hard"
    logits = None
    if form != "hard" or entropy:
        logits = x @ node_weights.t() + node_biases.t()  # [n, nodes]
    if form == "hard":
        y = _fff_descend(x, node_weights, node_biases, w1s, b1s, w2s, b2s, depth, act)
    else:
        mix = _mixture(logits, depth, hard=form == "hardened")  # [n, leaves]
        h = ACTIVATIONS[act](torch.einsum("ni,lih->nlh", x, w1s) + b1s)
        y = torch.einsum("nlh,lho->nlo", h, w2s) + b2s  # [n, leaves, out]
        y = torch.einsum("nlo,nl->no", y, mix)
    y = y.reshape(*shape[:-1], y.shape[-1])
    return (y, node_entropy(logits)) if entropy else y


FULL_LOGITS = 1024  # a tree with up to this many nodes decides with one matmul over all of them
try:  # torch 2.8 and later: one matmul over groups of rows, each group with its own weight
    from torch import _grouped_mm
except ImportError:
    _grouped_mm = None


def _descend(x: torch.Tensor, weights: torch.Tensor, biases: torch.Tensor, levels: int,
             logits: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """([n, levels + 1], [n, levels]): the nodes each input visits from the root, and the logits
    of the first `levels` of them; read off `logits` (all nodes'), or one dot product per level."""
    node = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    path, scores = [node], []
    for _ in range(levels):
        if logits is not None:
            score = logits.gather(1, node.unsqueeze(1)).squeeze(1)
        else:
            score = torch.bmm(x.unsqueeze(1), weights[node].unsqueeze(-1)).flatten() + biases[node].flatten()
        node = 2 * node + 1 + (score >= 0).long()
        path.append(node)
        scores.append(score)
    return torch.stack(path, dim=1), torch.stack(scores, dim=1) if scores else x.new_zeros(x.shape[0], 0)


def _fff_descend(x: torch.Tensor, node_weights: torch.Tensor, node_biases: torch.Tensor, w1s: torch.Tensor,
                 b1s: torch.Tensor, w2s: torch.Tensor, b2s: torch.Tensor, depth: int, act: str) -> torch.Tensor:
    """The hard form: D decisions per input, then its one leaf."""
    logits = x @ node_weights.t() + node_biases.t() if 0 < node_weights.shape[0] <= FULL_LOGITS else None
    leaf = _descend(x, node_weights, node_biases, depth, logits)[0][:, -1] - (2 ** depth - 1)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, w1s, b1s, w2s, b2s))
    aligned = all(n * x.element_size() % 16 == 0 for n in (x.shape[1], w1s.shape[2], w2s.shape[2]))
    many = x.shape[0] >= w1s.shape[0] // 4  # else most groups are empty: gathering the few leaves is cheaper
    if _grouped_mm is not None and x.device.type == "cpu" and aligned and many and not needs_grad:
        order = torch.argsort(leaf)
        ends = torch.cumsum(torch.bincount(leaf, minlength=w1s.shape[0]), 0).to(torch.int32)
        xs, ls = x[order], leaf[order]
        h = ACTIVATIONS[act](_grouped_mm(xs, w1s, ends) + b1s[ls])
        y = _grouped_mm(h, w2s, ends) + b2s[ls]
        return torch.empty_like(y).index_copy_(0, order, y)
    h = ACTIVATIONS[act](torch.bmm(x.unsqueeze(1), w1s[leaf]).squeeze(1) + b1s[leaf])  # each input's leaf, gathered
    return torch.bmm(h.unsqueeze(1), w2s[leaf]).squeeze(1) + b2s[leaf]


def fff_neurons(x: torch.Tensor, w_in: torch.Tensor, b_in: torch.Tensor, w_out: torch.Tensor, depth: int,
                trees: int, act: str, form: str, training: bool, entropy: bool = False):
    """UltraFastBERT's fast feedforward (Belcak & Wattenhofer 2023, "Exponentially Faster Language
    Modelling"): `trees` trees of single neurons, depth + 1 levels each; an input's output is the sum
    over the nodes it visits of act(w_in[k] . x + b_in[k]) * w_out[k]. "soft" weights every node
    by the probability of reaching it; "hardened" by 0/1 (UltraFastBERT's training form, all nodes
    computed and masked); "hard" computes only the visited nodes; "auto": soft in training, hard in eval."""
    shape = x.shape
    x = x.reshape(-1, shape[-1])
    nodes = 2 ** (depth + 1) - 1
    if form == "auto":
        form = "soft" if training else "hard"
    logits = None
    if form != "hard" or entropy:
        logits = (x @ w_in.t() + b_in).view(x.shape[0], trees, nodes)
    if form == "hard":
        y = x.new_zeros(x.shape[0], w_out.shape[1])
        for t in range(trees):
            # the path's logits are the descent's scores: one more level past the last decision
            path, scores = _descend(x, w_in[t * nodes:(t + 1) * nodes], b_in[t * nodes:(t + 1) * nodes], depth + 1)
            rows = path[:, :-1] + t * nodes  # [n, depth + 1]
            a = ACTIVATIONS[act](scores)
            y = y + torch.bmm(a.unsqueeze(1), w_out[rows]).squeeze(1)
    else:
        reach = torch.stack([_reach(logits[:, t], depth, form == "hardened") for t in range(trees)], dim=1)
        a = ACTIVATIONS[act](logits) * reach  # [n, trees, nodes]
        y = a.flatten(1) @ w_out
    y = y.reshape(*shape[:-1], y.shape[-1])
    return (y, node_entropy(logits.flatten(1))) if entropy else y


def _reach(logits: torch.Tensor, depth: int, hard: bool) -> torch.Tensor:
    """[n, nodes]: the probability of reaching each node of one tree (0/1 when `hard`)."""
    right = (logits >= 0).to(logits.dtype) if hard else torch.sigmoid(logits)
    levels = [logits.new_ones(logits.shape[0], 1)]
    for d in range(depth):
        p = right[:, 2 ** d - 1:2 ** (d + 1) - 1]
        levels.append(torch.stack((levels[-1] * (1 - p), levels[-1] * p), dim=-1).flatten(1))
    return torch.cat(levels, dim=1)


# ---- mixture of experts --------------------------------------------------------------------------
def moe_route(logits: torch.Tensor, k: int, scoring: str, normalize: bool, bias: torch.Tensor | None = None,
              rate: float = 0.0, training: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-k experts of each input and their weights (float32), from router logits [*, E]; with
    a balancing `bias`, chosen by scores + bias (weights: the scores), the bias moved in training."""
    scores = torch.softmax(logits.float(), dim=-1) if scoring == "softmax" else torch.sigmoid(logits.float())
    if bias is None:
        weights, indices = torch.topk(scores, k, dim=-1)
    else:
        indices = torch.topk(scores + bias, k, dim=-1).indices
        weights = scores.gather(-1, indices)
        if training and rate:
            with torch.no_grad():
                ones = torch.ones(indices.numel(), device=bias.device, dtype=bias.dtype)
                load = torch.zeros_like(bias).index_add_(0, indices.reshape(-1), ones)
                bias.add_(rate * torch.sign(load.mean() - load))
    if normalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, indices


def moe_load(logits: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """[2, E]: the fraction of the inputs' choices per expert, and the mean router probability."""
    e = logits.shape[-1]
    flat = logits.reshape(-1, e)
    # a one-hot sum, not an index_add of ones: ONNX's index_add keeps one of repeated indices
    counts = torch.nn.functional.one_hot(indices.reshape(-1), e).sum(dim=0).float()
    probs = torch.softmax(flat.float(), dim=-1).mean(dim=0)
    return torch.stack((counts / flat.shape[0], probs))


def _hidden(h: torch.Tensor, kind: str, act: str) -> torch.Tensor:
    """An expert's hidden activation: act(gate) * up of the two halves (swiglu), or act(h)."""
    if kind == "swiglu":
        gate, up = h.chunk(2, dim=-1)
        return ACTIVATIONS[act](gate) * up
    return ACTIVATIONS[act](h)


def _expert_ffn(x: torch.Tensor, first: torch.Tensor, second: torch.Tensor, kind: str, act: str) -> torch.Tensor:
    """One expert on its inputs [n, D]: first [h or 2h, D], second [D, h]."""
    return _hidden(x @ first.t(), kind, act) @ second.t()


def _positions(flat: torch.Tensor, experts: int, take: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(each choice's position among its expert's choices, in order; the choices per expert), counting
    only the choices in `take` when given."""
    onehot = torch.nn.functional.one_hot(flat, experts)
    if take is not None:
        onehot = onehot * take.unsqueeze(1)
    return (torch.cumsum(onehot, dim=0) - 1).gather(1, flat.unsqueeze(1)).squeeze(1), onehot.sum(dim=0)


def _kept(indices: torch.Tensor, experts: int, capacity: float | None) -> torch.Tensor | None:
    """[N, k] bool: the choices each expert takes under a capacity factor (the first ones in input
    order, then slot order); None when dropless."""
    if capacity is None:
        return None
    n, k = indices.shape
    limit = int(-(-capacity * n * k // experts))  # ceil
    position, _ = _positions(indices.reshape(-1), experts)  # input-major: input 0's choices first
    return (position < limit).view(n, k)


def _local(weight: torch.Tensor) -> torch.Tensor:
    """This rank's part of a weight that archc.parallelize split (a DTensor: stacked experts split by
    their hidden features or, with expert parallelism, by experts; docs/parallel.md); any other
    weight as it is."""
    if type(weight) in (torch.Tensor, torch.nn.Parameter):  # the common case
        return weight
    # a DTensor, known by its class's name: the generated file imports nothing but torch (and a
    # model that was never split has not loaded torch.distributed.tensor)
    return weight.to_local() if type(weight).__name__ == "DTensor" else weight


def moe_experts(x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, first: torch.Tensor,
                second: torch.Tensor, kind: str, act: str, impl: str, capacity: float | None) -> torch.Tensor:
    """sum_j weights[:, j] * expert_{indices[:, j]}(x) for each input; see archc/ops/conditional.py."""
    shape = x.shape
    x = x.reshape(-1, shape[-1])
    first, second = _local(first), _local(second)
    k = indices.shape[-1]
    idx = indices.reshape(-1, k)
    w = weights.reshape(-1, k).to(x.dtype)
    kept = _kept(idx, first.shape[0], capacity)
    if kept is not None:
        w = w * kept
    if impl == "loop":
        y = _moe_loop(x, w, idx, first, second, kind, act)
    elif impl == "grouped":
        y = _moe_grouped(x, w, idx, first, second, kind, act)
    else:
        y = _moe_batched(x, w, idx, first, second, kind, act, kept)
    return y.reshape(shape)


def _moe_loop(x: torch.Tensor, w: torch.Tensor, idx: torch.Tensor, first: torch.Tensor, second: torch.Tensor,
              kind: str, act: str) -> torch.Tensor:
    """Each expert that has inputs, on them (Hugging Face's loop, with index_add)."""
    y = torch.zeros_like(x)
    for e in torch.unique(idx).tolist():
        token, slot = torch.where(idx == e)
        out = _expert_ffn(x[token], first[e], second[e], kind, act) * w[token, slot].unsqueeze(1)
        y = y.index_add(0, token, out)
    return y


def _moe_grouped(x: torch.Tensor, w: torch.Tensor, idx: torch.Tensor, first: torch.Tensor, second: torch.Tensor,
                 kind: str, act: str) -> torch.Tensor:
    """The N * k choices sorted by expert; each layer one grouped matmul over the E groups."""
    flat = idx.reshape(-1)
    order = torch.argsort(flat, stable=True)
    token = order // idx.shape[1]
    ends = torch.cumsum(torch.bincount(flat, minlength=first.shape[0]), 0).to(torch.int32)
    h = _hidden(_grouped_mm(x[token], first.transpose(1, 2), ends), kind, act)
    out = _grouped_mm(h.contiguous(), second.transpose(1, 2), ends) * w.reshape(-1)[order].unsqueeze(1)
    return torch.zeros_like(x).index_add(0, token, out)


def _moe_batched(x: torch.Tensor, w: torch.Tensor, idx: torch.Tensor, first: torch.Tensor, second: torch.Tensor,
                 kind: str, act: str, kept: torch.Tensor | None) -> torch.Tensor:
    """Each expert's inputs in a row of an [E, C, D] buffer (C: the busiest expert's count, or the
    capacity), batched matmuls over the experts, then back to the inputs."""
    experts, k = first.shape[0], idx.shape[1]
    flat = idx.reshape(-1)
    take = torch.ones_like(flat, dtype=torch.bool) if kept is None else kept.reshape(-1)
    position, counts = _positions(flat, experts, take)
    rows = int(counts.max()) if flat.numel() else 0
    choice = torch.nonzero(take).squeeze(1)
    buffer = x.new_zeros(experts, max(rows, 1), x.shape[1])
    buffer[flat[choice], position[choice]] = x[choice // k]
    h = _hidden(torch.bmm(buffer, first.transpose(1, 2)), kind, act)
    out = torch.bmm(h, second.transpose(1, 2))[flat[choice], position[choice]] * w.reshape(-1)[choice].unsqueeze(1)
    return torch.zeros_like(x).index_add(0, choice // k, out)


def moe_select(x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, expert: int, experts: int,
               capacity: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The inputs routed to `expert` (in input order), their positions among the inputs and the
    weights of those choices; under a capacity factor only the first ceil(capacity * N * k / E)."""
    k = indices.shape[-1]
    idx = indices.reshape(-1, k)
    token, slot = torch.where(idx == expert)  # row-major: input order, then slot order
    if capacity is not None:  # ceil(capacity * N * k / E), as _kept; counted by tensor ops, so that a trace keeps N
        limit = torch.ceil(torch.ones_like(idx, dtype=torch.float64).sum() * capacity / experts)
        keep = torch.arange(token.shape[0], device=token.device) < limit
        token, slot = token[keep], slot[keep]
    return x.reshape(-1, x.shape[-1])[token], token, weights.reshape(-1, k)[token, slot]


def moe_combine(x: torch.Tensor, *parts: torch.Tensor) -> torch.Tensor:
    """sum over the experts of weight * output, added at the positions moe_select gave (parts: an
    output, positions and weights per expert), in the shape of x's inputs."""
    first = parts[0]
    y = first.new_zeros(x.reshape(-1, x.shape[-1]).shape[0], first.shape[-1])  # sizes as read, for tracing
    for out, token, w in zip(parts[0::3], parts[1::3], parts[2::3]):
        y = y.index_add(0, token, out * w.to(out.dtype).unsqueeze(-1))
    return y.reshape(x.shape[:-1] + y.shape[-1:])
