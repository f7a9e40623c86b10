"""Canonical formatting of `.arch` source: AST -> text, comments kept.

`archc fmt` prints every file the same way: four-space indents, one statement a line, spaces
around binary operators, none inside brackets. Comments are re-attached to the item or statement
they preceded (or ended the line of).
"""

from __future__ import annotations

from typing import Any

from archc.frontend import ast as A

_PREC = {"pipe": 1, "or": 2, "and": 3, "not": 4, "cmp": 5, "+": 6, "-": 6, "*": 7, "/": 7, "//": 7,
         "%": 7, "neg": 8, "**": 9}
_CMP = ("==", "!=", "<", "<=", ">", ">=")


def _prec(e: Any) -> int:
    if isinstance(e, A.Cond):
        return 0
    if isinstance(e, A.Pipeline):
        return 1
    if isinstance(e, A.BinOp):
        return _PREC["cmp"] if e.op in _CMP else _PREC[e.op]
    if isinstance(e, A.UnaryOp):
        return _PREC["not"] if e.op == "not" else _PREC["neg"]
    if isinstance(e, A.Const) and isinstance(e.value, (int, float)) and not isinstance(e.value, bool) and e.value < 0:
        return _PREC["neg"]
    return 10


def _wrap(e: Any, min_prec: int) -> str:
    text = expr_text(e)
    return f"({text})" if _prec(e) < min_prec else text


def expr_text(e: Any) -> str:
    if isinstance(e, A.Name):
        return e.id
    if isinstance(e, A.Const):
        if isinstance(e.value, bool):
            return "true" if e.value else "false"
        if isinstance(e.value, str):
            return '"' + e.value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'
        return e.text or repr(e.value)
    if isinstance(e, A.Cond):
        return f"if {expr_text(e.test)} then {expr_text(e.then)} else {expr_text(e.orelse)}"
    if isinstance(e, A.Pipeline):
        return " >> ".join(_wrap(s, 2) for s in e.stages)
    if isinstance(e, A.BinOp):
        p = _prec(e)
        if e.op == "**":  # right associative
            return f"{_wrap(e.left, p + 1)} ** {_wrap(e.right, p)}"
        if e.op in _CMP:
            return f"{_wrap(e.left, p + 1)} {e.op} {_wrap(e.right, p + 1)}"
        left = _wrap(e.left, p)
        if isinstance(e.left, A.BinOp) and e.left.op != e.op and _prec(e.left) == p and p == _PREC["*"]:
            left = f"({left})"  # `(H / 2) * W`: mixed * and / read better with their parentheses
        return f"{left} {e.op} {_wrap(e.right, p + 1)}"
    if isinstance(e, A.UnaryOp):
        if e.op == "not":
            return f"not {_wrap(e.operand, _PREC['not'])}"
        return f"-{_wrap(e.operand, _PREC['neg'])}"
    if isinstance(e, A.Call):
        return f"{_wrap(e.func, 10)}({_args(e.args, e.kwargs)})"
    if isinstance(e, A.GetAttr):
        obj = _wrap(e.obj, 10)
        if isinstance(e.obj, A.Const) and not isinstance(e.obj.value, str) and not obj.startswith("("):
            obj = f"({obj})"  # `(3).x`: `3.x` would read as a number
        return f"{obj}.{e.name}"
    if isinstance(e, A.Index):
        return f"{_wrap(e.obj, 10)}[{', '.join(expr_text(s) for s in e.subs)}]"
    if isinstance(e, A.SliceExpr):
        return f"{expr_text(e.lo) if e.lo else ''}:{expr_text(e.hi) if e.hi else ''}"
    if isinstance(e, A.EllipsisExpr):
        return "..."
    if isinstance(e, A.TupleExpr):
        inner = ", ".join(expr_text(i) for i in e.items)
        return f"({inner},)" if len(e.items) == 1 else f"({inner})"
    if isinstance(e, A.ListExpr):
        return f"[{', '.join(expr_text(i) for i in e.items)}]"
    if isinstance(e, A.Stack):
        var = f"{e.var} => " if e.var else ""
        return f"stack({_args(e.args, e.kwargs)}) {{ {var}{expr_text(e.body)} }}"
    if isinstance(e, A.Choice):
        lo, hi, step = e.range or (0, 0, 1)
        bounds = f"{hi}" if (lo, step) == (0, 1) else f"{lo}, {hi}" if step == 1 else f"{lo}, {hi}, {step}"
        items = [f"range({bounds})"] if e.range else \
            [expr_text(o) for o in e.options]
        return f"choice({', '.join(items + (['per_layer=true'] if e.per_layer else []))})"
    raise TypeError(f"cannot format {type(e).__name__}")


def _args(args: tuple[Any, ...], kwargs: tuple[A.Keyword, ...]) -> str:
    return ", ".join([expr_text(a) for a in args] + [f"{k.name}={expr_text(k.value)}" for k in kwargs])


def type_text(t: Any) -> str:
    if isinstance(t, A.TypeName):
        return t.name
    dims = ", ".join("*" if isinstance(d, A.Star) else expr_text(d) for d in t.dims)
    return f"{t.dtype or ''}[{dims}]"


WIDTH = 100  # lines longer than this are wrapped where the language allows


def _formal(f: A.Formal) -> str:
    return f"{f.name}: {type_text(f.type)}" + (f" = {expr_text(f.default)}" if f.default else "")


def _formals(fs: tuple[A.Formal, ...]) -> str:
    return "(" + ", ".join(_formal(f) for f in fs) + ")"


def _wrapped_formals(prefix: str, fs: tuple[A.Formal, ...]) -> list[str]:
    """`prefix(a: int, b: int,` with the rest aligned under the first formal, within WIDTH."""
    lines, current = [], prefix + "("
    indent = " " * len(current)
    for i, f in enumerate(fs):
        piece = _formal(f) + ("," if i + 1 < len(fs) else ")")
        if current.strip() and not current.endswith("(") and len(current) + 1 + len(piece) > WIDTH:
            lines.append(current)
            current = indent + piece
        else:
            current += ("" if current.endswith("(") else " ") + piece
    lines.append(current if fs else current + ")")
    return lines


def _outs(outs: tuple[A.TensorTypeExpr, ...]) -> str:
    return type_text(outs[0]) if len(outs) == 1 else "(" + ", ".join(type_text(o) for o in outs) + ")"


def _annotation(a: A.Annotation) -> str:
    if not a.args and not a.kwargs:
        return f"@{a.name}"
    return f"@{a.name}({_args(a.args, a.kwargs)})"


def _annotation_lines(a: A.Annotation, indent: str) -> list[str]:
    """An annotation, wrapped after its commas (aligned under the first argument) past WIDTH."""
    one = _annotation(a)
    if len(indent + one) <= WIDTH or not (a.args or a.kwargs):
        return [one]
    pieces = [expr_text(x) for x in a.args] + [f"{k.name}={expr_text(k.value)}" for k in a.kwargs]
    lines, current = [], f"@{a.name}("
    pad = " " * len(current)
    for i, piece in enumerate(pieces):
        piece += "," if i + 1 < len(pieces) else ")"
        if not current.endswith("(") and len(indent + current) + 1 + len(piece) > WIDTH:
            lines.append(current)
            current = pad + piece
        else:
            current += ("" if current.endswith("(") else " ") + piece
    return lines + [current]


class _Printer:
    def __init__(self, comments: list[A.Comment]) -> None:
        self.comments = sorted(comments, key=lambda c: (c.line, c.col))
        self.lines: list[str] = []

    def _leading(self, line: int, indent: str) -> None:
        while self.comments and self.comments[0].line < line:
            c = self.comments.pop(0)
            self.lines.append(indent + c.text.rstrip())
            nxt = self.comments[0].line if self.comments and self.comments[0].line < line else line
            if nxt > c.line + 1:
                self.lines.append("")  # the source had a blank line after this comment

    def _trailing(self, line: int) -> None:
        while self.comments and self.comments[0].line == line:
            self.lines[-1] += "  " + self.comments.pop(0).text.rstrip()

    def emit(self, span_line: int, text: str, indent: str, end_line: int | None = None) -> None:
        self._leading(span_line, indent)
        self.lines.append(indent + text)
        self._trailing(span_line)

    def item(self, it: Any) -> None:
        if isinstance(it, A.Import):
            if it.names is not None:
                text = f'from "{it.path}" import {", ".join(it.names)}'
            else:
                text = f'import "{it.path}"' + (f" as {it.alias}" if it.alias else "")
            self.emit(it.span.line, text, "")
        elif isinstance(it, A.AxisDecl):
            self.emit(it.span.line, f"axis {', '.join(it.names)}", "")
        elif isinstance(it, A.Let):
            self.emit(it.span.line, f"let {it.name} = {expr_text(it.value)}", "")
        elif isinstance(it, A.InterfaceDef):
            self.emit(it.span.line, f"interface {it.name} {_formals(it.ports)} -> {_outs(it.outs)}", "")
        elif isinstance(it, A.BlockDef):
            self.block(it)

    def block(self, b: A.BlockDef) -> None:
        for a in b.annotations:
            first, *rest = _annotation_lines(a, "")
            self.emit(a.span.line, first, "")
            self.lines.extend(rest)
        head = f"{b.kind} {b.name}"
        params = [head + _formals(b.params)] if b.params or b.ports is None else [head]
        if len(params[0]) > WIDTH:
            params = _wrapped_formals(head, b.params)
        tail = ""
        if b.ports is not None:
            tail = _formals(b.ports) + f" -> {_outs(b.outs or ())}"
        if b.implements:
            tail += f" : {b.implements}"
        tail = (tail + " {").strip()
        if len(params[-1]) + 1 + len(tail) <= WIDTH and len(params) == 1:
            lines = [params[0] + " " + tail]
        elif len(params[-1]) + 1 + len(tail) <= WIDTH and not b.ports:
            lines = params[:-1] + [params[-1] + " " + tail]
        else:
            lines = params + ["    " + tail]
        self.emit((b.name_span or b.span).line, lines[0], "")
        self.lines.extend(lines[1:])
        self.body(b.body, "    ")
        self._leading(b.span.end_line or b.span.line, "    ")
        self.lines.append("}")

    def body(self, stmts: tuple[Any, ...], indent: str) -> None:
        prev_end = None
        for s in stmts:
            first = min([s.span.line] + [a.span.line for a in s.annotations] +
                        [c.line for c in self.comments if prev_end is not None and prev_end < c.line < s.span.line])
            if prev_end is not None and first > prev_end + 1:
                self.lines.append("")  # one blank line where the source had any
            self.stmt(s, indent)
            prev_end = s.span.end_line or s.span.line

    def stmt(self, s: Any, indent: str) -> None:
        for a in s.annotations:
            first, *rest = _annotation_lines(a, indent)
            self.emit(a.span.line, first, indent)
            self.lines.extend(indent + line for line in rest)
        if isinstance(s, A.Assign):
            text = f"{', '.join(s.targets)} = {expr_text(s.value)}"
            if isinstance(s.value, A.Stack) and len(indent + text) > WIDTH:
                st = s.value
                var = f"{st.var} => " if st.var else ""
                self.emit(s.span.line, f"{', '.join(s.targets)} = stack({_args(st.args, st.kwargs)}) {{", indent)
                self.lines.append(indent + "    " + var + expr_text(st.body))
                self.lines.append(indent + "}")
            elif isinstance(s.value, A.Call) and len(indent + text) > WIDTH and (s.value.args or s.value.kwargs):
                call = s.value
                head = f"{', '.join(s.targets)} = {_wrap(call.func, 10)}("
                pieces = [expr_text(a) for a in call.args] + [f"{k.name}={expr_text(k.value)}" for k in call.kwargs]
                lines, current = [], indent + head
                for i, piece in enumerate(pieces):
                    piece += "," if i + 1 < len(pieces) else ")"
                    if not current.endswith("(") and len(current) + 1 + len(piece) > WIDTH:
                        lines.append(current)
                        current = " " * len(indent + head) + piece
                    else:
                        current += ("" if current.endswith("(") else " ") + piece
                lines.append(current)
                self.emit(s.span.line, lines[0].strip(), indent)
                self.lines.extend(lines[1:])
            else:
                self.emit(s.span.line, text, indent)
        elif isinstance(s, A.Return):
            self.emit(s.span.line, "return " + ", ".join(expr_text(v) for v in s.values), indent)
        elif isinstance(s, A.For):
            self.emit(s.span.line, f"for {s.var} in {expr_text(s.iter)} {{", indent)
            self.body(s.body, indent + "    ")
            self.lines.append(indent + "}")
        elif isinstance(s, A.If):
            for i, (cond, body) in enumerate(s.branches):
                kw = "if" if i == 0 else "} elif"
                line = cond.span.line
                if i == 0:
                    self.emit(line, f"if {expr_text(cond)} {{", indent)
                else:
                    self.lines.append(indent + f"{kw} {expr_text(cond)} {{")
                self.body(body, indent + "    ")
            if s.orelse is not None:
                self.lines.append(indent + "} else {")
                self.body(s.orelse, indent + "    ")
            self.lines.append(indent + "}")


def format_module(module: A.Module) -> str:
    p = _Printer(module.comments)
    prev_kind = None
    for it in module.items:
        kind = type(it).__name__
        if p.lines and (kind in ("BlockDef", "InterfaceDef") or kind != prev_kind):
            p.lines.append("")
        p.item(it)
        prev_kind = kind
    for c in p.comments:
        p.lines.append(c.text.rstrip())
    return "\n".join(p.lines).strip("\n") + "\n"
