"""Parse `.arch` text with the lark grammar in `grammar/arch.lark` into the AST of `ast.py`.

Parse errors become `ArchError`s at the offending token, with what was expected in words.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable

import lark
from lark import Token, Transformer, v_args
from lark.grammar import Rule
from lark.lexer import TerminalDef
from lark.tree import Meta

from archc import cachefs, resources
from archc.errors import ArchError, Span, register_source
from archc.recursion import headroom
from archc.frontend import ast as A
from archc.frontend.fmt import expr_text

MAX_SOURCE_BYTES = 4 << 20  # a spec larger than 4 MiB is refused before parsing
MAX_INT_LITERAL = 2**62  # as archc.sizes.MAX_INT: no size or count is larger
MAX_TREE_DEPTH = 500  # levels of syntax (a sum of n terms is n deep); the spec library needs under 20
MAX_STRING = 10_000  # characters in a string, written or built by '+' (as the elaborator's limit)


_comments: list[list[A.Comment]] = [[]]  # where the lexer puts the comments of the current parse


def _keep_comment(tok: Token) -> Token:
    _comments[-1].append(A.Comment(str(tok), tok.line or 0, tok.column or 0))
    return tok


@functools.lru_cache(maxsize=1)
def _lark() -> lark.Lark:
    text = resources.grammar_path().read_text()
    # lark hands ignored tokens to lexer callbacks only; that is how comments reach the formatter
    options: dict[str, Any] = dict(parser="lalr", propagate_positions=True, maybe_placeholders=True,
                                   start=["start", "expr"], lexer_callbacks={"COMMENT": _keep_comment})
    key = _cache_key(text, options)
    path = _cache_file(key)
    if path is not None:
        cached = _load_cached(path, key, options)
        if cached is not None:
            return cached
    parser = lark.Lark(text, **options)
    if path is not None:
        _save_cached(parser, path, key)
    return parser


# The grammar cache: lark's LALR tables as plain JSON data, never a pickle (lark's own `cache=`
# option pickles them, and loading a pickle runs whatever code it names). Building the tables takes
# about 140 ms; reading them back about 20 ms. The file lives in the user's own cache folder
# (archc.cachefs: folder 0700 and owned by the user, file 0600, written atomically, checked for
# owner and mode on the open descriptor), and is named and headed by the sha256 of the grammar,
# the options and the lark and Python versions. The header also holds the sha256 of the data, so a
# truncated or damaged file is rebuilt rather than half-read. A file that fails a check is never
# read: it is rebuilt (with a warning on stderr when someone else could have written it).
_CACHE_FORMAT = "archc-lark-tables-1"
_LOAD_OPTIONS = ("propagate_positions", "lexer_callbacks")  # passed again on load (not data)


def _cache_key(grammar: str, options: dict[str, Any]) -> str:
    fixed = sorted((k, repr(v)) for k, v in options.items() if k not in _LOAD_OPTIONS)
    text = "\0".join([_CACHE_FORMAT, grammar, repr(fixed), lark.__version__, repr(sys.version_info[:2])])
    return hashlib.sha256(text.encode()).hexdigest()


def _cache_file(key: str) -> Path | None:
    """Where the grammar tables are kept: `<cache home>/archc/grammar-<key>.json`, in a folder of
    the user's own (None when there is none: then nothing is cached)."""
    if not cachefs.supported():
        return None
    root = cachefs.cache_home() / "archc"
    try:
        cachefs.private_dir(root)
    except cachefs.UnsafeCache as err:
        _warn(f"archc: not caching the grammar tables in {root}: {err}")
        return None
    except OSError:  # a read-only home: build the tables every time
        return None
    return root / f"grammar-{key[:16]}.json"


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


def _load_cached(path: Path, key: str, options: dict[str, Any]) -> lark.Lark | None:
    try:
        raw = cachefs.read_private(path)
    except cachefs.UnsafeCache as err:
        _warn(f"archc: ignoring the grammar cache {path}: {err}; rebuilding it")
        return None
    except OSError:
        return None
    if raw is None:
        return None
    head, _, body = raw.partition(b"\n")
    try:
        if json.loads(head) != {"format": _CACHE_FORMAT, "key": key, "sha256": hashlib.sha256(body).hexdigest()}:
            return None  # another grammar, lark or Python, or a damaged file
        doc = json.loads(body, object_hook=_from_json)
        load = {k: options[k] for k in _LOAD_OPTIONS if k in options}
        return lark.Lark._load_from_dict(doc["data"], doc["memo"], **load)  # type: ignore[no-any-return]
    except Exception:  # data this lark cannot read back: rebuild
        return None


def _save_cached(parser: lark.Lark, path: Path, key: str) -> None:
    try:
        data, memo = parser.memo_serialize([TerminalDef, Rule])
        allowed = getattr(lark.lark, "_LOAD_ALLOWED_OPTIONS", set(_LOAD_OPTIONS))  # as Lark.save
        data["options"] = {k: v for k, v in data["options"].items() if k not in allowed}
        body = json.dumps({"data": _to_json(data), "memo": _to_json(memo)}, separators=(",", ":")).encode()
        head = json.dumps({"format": _CACHE_FORMAT, "key": key, "sha256": hashlib.sha256(body).hexdigest()})
        cachefs.write_private(path, head.encode() + b"\n" + body)
        for old in path.parent.glob("grammar-*.lark-cache"):  # the pickles of older archc versions
            old.unlink()
    except (OSError, TypeError, ValueError):  # not writable, or data JSON cannot hold: no cache
        pass


def _to_json(x: Any) -> Any:
    """lark's serialized tables as JSON: tuples become {"<t>": [...]}, and dicts with keys other
    than strings (the parse table's state numbers) {"<d>": [[key, value], ...]}; anything that is
    not plain data raises TypeError."""
    if x is None or type(x) in (str, bool, int, float):  # exactly: a subclass would not come back
        return x
    if isinstance(x, list):
        return [_to_json(v) for v in x]
    if isinstance(x, tuple):
        return {"<t>": [_to_json(v) for v in x]}
    if isinstance(x, dict):
        if all(type(k) is str for k in x) and "<t>" not in x and "<d>" not in x:
            return {k: _to_json(v) for k, v in x.items()}
        return {"<d>": [[_to_json(k), _to_json(v)] for k, v in x.items()]}
    raise TypeError(f"cannot cache a {type(x).__name__}")


def _from_json(d: dict[str, Any]) -> Any:
    if len(d) == 1:
        if "<t>" in d:
            return tuple(d["<t>"])
        if "<d>" in d:
            return {k: v for k, v in d["<d>"]}
    return d


def parse(text: str, file: str = "<string>") -> A.Module:
    """Parse one file. Raises ArchError with the location of the first syntax error."""
    register_source(file, text)
    if len(text.encode("utf-8", "replace")) > MAX_SOURCE_BYTES:
        raise ArchError(f"spec is larger than {MAX_SOURCE_BYTES >> 20} MiB", Span(file, 1, 1))
    comments: list[A.Comment] = []
    module: A.Module = _to_ast(lambda: _parse_tree(text, comments), text, file)
    module.comments = comments
    return module


def parse_expr(text: str, file: str = "<command line>") -> A.Expr:
    """Parse one expression, as given to `--set NAME=VALUE`."""
    register_source(file, text)
    return _to_ast(lambda: _lark().parse(text, start="expr"), text, file)  # type: ignore[no-any-return]


def _to_ast(parse_tree: Callable[[], lark.Tree], text: str, file: str) -> Any:
    """Parse and transform to the AST; every failure becomes an ArchError at its location."""
    try:
        tree = parse_tree()
        _check_depth(tree, file)
        with headroom(_FRAMES_PER_LEVEL * MAX_TREE_DEPTH + 200):
            return _ToAst(file).transform(tree)
    except lark.exceptions.UnexpectedInput as err:
        raise _syntax_error(err, text, file) from None
    except lark.exceptions.VisitError as err:
        if isinstance(err.orig_exc, ArchError):
            raise err.orig_exc from None
        if isinstance(err.orig_exc, RecursionError):  # a last resort: the depth check above comes first
            raise ArchError("the spec nests too deeply", Span(file, 1, 1)) from None
        raise
    except RecursionError:
        raise ArchError("the spec nests too deeply", Span(file, 1, 1)) from None


_FRAMES_PER_LEVEL = 6  # Python frames the transformer (and the recursive passes over the AST) use per level


def _check_depth(tree: lark.Tree, file: str) -> None:
    """Refuse a tree deeper than MAX_TREE_DEPTH, at its deepest point (without recursing)."""
    stack: list[tuple[Any, int]] = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, lark.Tree):
            continue
        if depth > MAX_TREE_DEPTH:
            meta = node.meta
            line, col = (meta.line, meta.column) if not meta.empty else (1, 1)
            raise ArchError(f"the spec nests too deeply (more than {MAX_TREE_DEPTH} levels of expressions)",
                            Span(file, line, col), "split deep expressions into statements")
        stack.extend((child, depth + 1) for child in node.children)


def _parse_tree(text: str, comments: list[A.Comment]) -> lark.Tree:
    _comments.append(comments)
    try:
        return _lark().parse(text, start="start")
    finally:
        _comments.pop()


_TOKEN_WORDS = {
    "NAME": "a name", "INT": "an integer", "FLOAT": "a number", "STRING": "a string",
    "LPAR": "'('", "RPAR": "')'", "LSQB": "'['", "RSQB": "']'", "LBRACE": "'{'", "RBRACE": "'}'",
    "COMMA": "','", "COLON": "':'", "SEMICOLON": "';'", "EQUAL": "'='", "MINUS": "'-'",
    "PIPE": "'>>'", "ARROW": "'=>'", "POW": "'**'", "DOT": "'.'", "AT": "'@'", "STAR": "'*'",
    "__ANON_0": "'->'", "RARROW": "'->'", "COMP_OP": "a comparison", "ADD_OP": "'+' or '-'",
    "MUL_OP": "'*' or '/'", "$END": "end of file",
}


def _describe(terminals: set[str]) -> str:
    words = sorted({_TOKEN_WORDS.get(t, f"'{t.lower()}'") for t in terminals})
    if len(words) > 8:
        words = words[:8] + ["..."]
    return ", ".join(words)


def _syntax_error(err: lark.exceptions.UnexpectedInput, text: str, file: str) -> ArchError:
    line, col = err.line or 1, err.column or 1
    if isinstance(err, lark.exceptions.UnexpectedToken):
        tok = err.token
        found = "end of file" if tok.type == "$END" else f"'{tok}'"
        if tok.type == "$END":
            lines = text.splitlines() or [""]
            line, col = len(lines), len(lines[-1]) + 1
        unclosed = _unclosed_bracket(err, text, file, found, line)
        if unclosed is not None:
            return unclosed
        dangling = _dangling_name(err, text, file)
        if dangling is not None:
            return dangling
        width = len(str(tok)) if tok.type != "$END" else 1
        span = Span(file, line, col, line, col + width)
        hint = _hint_for(tok, err.expected)
        expected = f"; expected {_describe(err.expected)}" if err.expected else ""
        return ArchError(f"unexpected {found}{expected}", span, hint)
    if isinstance(err, lark.exceptions.UnexpectedCharacters):
        pos = err.pos_in_stream or 0
        char = text[pos] if pos < len(text) else "?"
        hint = ("strings use double quotes" if char == "'" else
                "a string must end on the line where it starts" if char == '"' else None)
        return ArchError(f"unexpected character {char!r}", Span(file, line, col, line, col + 1), hint)
    return ArchError("unexpected end of file", Span(file, line, col))


_CLOSERS = {"(": (")", "RPAR"), "[": ("]", "RSQB"), "{": ("}", "RBRACE")}
# tokens that start a new statement or item: finding one where a ')' is due means a '(' was left open
_FRESH_START = {"RETURN", "IF", "FOR", "ELIF", "ELSE", "RBRACE", "$END", "BLOCK", "MODEL", "AXIS", "IMPORT",
                "INTERFACE", "LET", "FROM", "AT"}


def _open_brackets(text: str, end: int) -> list[int]:
    """Offsets of the brackets still open at offset `end`, innermost last (strings and comments skipped)."""
    stack: list[int] = []
    i = 0
    while i < end:
        ch = text[i]
        if ch == "#":
            nl = text.find("\n", i)
            i = end if nl < 0 else nl
        elif ch == '"':
            i += 1
            while i < end and text[i] not in '"\n':
                i += 2 if text[i] == "\\" else 1
        elif ch in _CLOSERS:
            stack.append(i)
        elif ch in ")]}" and stack and _CLOSERS[text[stack[-1]]][0] == ch:
            stack.pop()
        i += 1
    return stack


def _unclosed_bracket(err: lark.exceptions.UnexpectedToken, text: str, file: str, found: str,
                      line: int) -> ArchError | None:
    """`f(x` followed by `return y` on the next line: point at the '(' that is not closed."""
    tok = err.token
    if tok.type not in _FRESH_START:
        return None
    pos = len(text) if tok.type == "$END" else (tok.start_pos or 0)
    opened = _open_brackets(text, pos)
    if not opened:
        return None
    at = opened[-1]
    closer, terminal = _CLOSERS[text[at]]
    oline = text.count("\n", 0, at) + 1
    if terminal not in err.expected or (oline >= line and tok.type != "$END"):
        return None
    ocol = at - (text.rfind("\n", 0, at) + 1) + 1
    where = "the file ends" if tok.type == "$END" else f"{found} on line {line} comes"
    return ArchError(f"'{text[at]}' is not closed", Span(file, oline, ocol, oline, ocol + 1),
                     f"{where} before its '{closer}'")


def _dangling_name(err: lark.exceptions.UnexpectedToken, text: str, file: str) -> ArchError | None:
    """`y = f(x) relu`: the name after a complete statement starts a new one, which needs '='."""
    history = getattr(err, "token_history", None) or []
    name = history[-1] if history else None  # lark puts None there at the start of the file
    if name is None or name.type != "NAME" or not set(err.expected) <= {"EQUAL", "COMMA", "LBRACE"}:
        return None
    start = name.start_pos or 0
    line_start = text.rfind("\n", 0, start) + 1
    if start > line_start and (text[start - 1].isdigit() or text[start - 1] == "."):  # `0x10`, `1.5f`
        begin = start
        while begin > line_start and (text[begin - 1].isalnum() or text[begin - 1] in "._"):
            begin -= 1
        word, col = text[begin:name.end_pos], begin - line_start + 1
        return ArchError(f"'{word}' is not a number", Span(file, name.line or 1, col, name.line, col + len(word)),
                         "numbers are written in decimal, as 16, 0.5 or 1e-6")
    hint = (f"to apply '{name}' to the value before it, write '>> {name}'"
            if text[line_start:start].strip() else
            f"an expression alone is not a statement; name its result: "
            f"'y = {name}{err.token}...{dict(zip('([', ')]')).get(str(err.token), '')}'"
            if str(err.token) in ("(", ".", "[") else None)
    return ArchError(f"expected '=' after '{name}': a statement is 'name = value' or 'return value'",
                     _tok_span(file, name), hint)


def _hint_for(tok: Token, expected: set[str]) -> str | None:
    if str(tok) == "=" and "COLON" in expected:
        return "parameters are written 'name: type = default'"
    if tok.type == "$END" and "RBRACE" in expected:
        return "a '{' is not closed"
    if str(tok) in ("def", "class", "lambda"):
        return "archc specs are not Python: blocks are written 'block Name(params) (inputs) -> outputs { ... }'"
    return None


def _span(file: str, meta: Meta) -> Span:
    if getattr(meta, "empty", True):
        return Span(file, 1, 1)
    return Span(file, meta.line, meta.column, meta.end_line, meta.end_column)


def _tok_span(file: str, tok: Token) -> Span:
    return Span(file, tok.line or 1, tok.column or 1, tok.end_line, tok.end_column)


MAX_RANGE = 100_000  # options of one choice(range(...))


def _choice_range(pos: tuple[A.Expr, ...]) -> tuple[int, int, int] | None:
    """`choice(range(lo, hi, step))` with int literals: (lo, hi, step); None for other options.
    A range that is not of literal ints is a located error."""
    if len(pos) != 1 or not (isinstance(pos[0], A.Call) and isinstance(pos[0].func, A.Name)
                             and pos[0].func.id == "range"):
        return None
    call = pos[0]
    nums = [_literal_int(a) for a in call.args]
    if call.kwargs or not 1 <= len(nums) <= 3 or any(n is None for n in nums):
        raise ArchError("choice(range(...)) takes one to three int literals: range(hi), range(lo, hi) or "
                        "range(lo, hi, step)", call.span)
    lo, hi, step = (0, nums[0], 1) if len(nums) == 1 else (nums[0], nums[1], nums[2] if len(nums) == 3 else 1)
    if step == 0:
        raise ArchError("range() step must not be zero", call.span)
    return lo, hi, step


def _literal_int(e: A.Expr) -> int | None:
    if isinstance(e, A.UnaryOp) and e.op == "-":
        inner = _literal_int(e.operand)
        return None if inner is None else -inner
    if isinstance(e, A.Const) and isinstance(e.value, int) and not isinstance(e.value, bool):
        return e.value
    return None


def _kw_split(file: str, items: list[Any]) -> tuple[tuple[A.Expr, ...], tuple[A.Keyword, ...]]:
    args: list[A.Expr] = []
    kwargs: list[A.Keyword] = []
    for it in items:
        if isinstance(it, A.Keyword):
            if any(k.name == it.name for k in kwargs):
                raise ArchError(f"keyword argument '{it.name}' is given twice", it.span)
            kwargs.append(it)
        elif kwargs:
            raise ArchError("a positional argument follows a keyword argument", it.span)
        else:
            args.append(it)
    return tuple(args), tuple(kwargs)


@v_args(meta=True, inline=True)
class _ToAst(Transformer):  # type: ignore[type-arg]
    """lark tree -> AST. One method per grammar rule alias."""

    def __init__(self, file: str) -> None:
        super().__init__()
        self.file = file

    def _s(self, meta: Meta) -> Span:
        return _span(self.file, meta)

    # -- top level --
    @v_args(meta=True, inline=False)
    def start(self, meta: Meta, items: list[A.Item]) -> A.Module:
        return A.Module(self.file, list(items))

    def import_all(self, meta: Meta, path: Token, alias: Token | None) -> A.Import:
        return A.Import(_unquote(path, self.file), str(alias) if alias else None, None, self._s(meta))

    def import_names(self, meta: Meta, path: Token, *names: Token) -> A.Import:
        return A.Import(_unquote(path, self.file), None, tuple(map(str, names)), self._s(meta))

    def axis_decl(self, meta: Meta, *names: Token) -> A.AxisDecl:
        return A.AxisDecl(tuple(map(str, names)), self._s(meta))

    def let_def(self, meta: Meta, name: Token, value: A.Expr) -> A.Let:
        return A.Let(str(name), value, self._s(meta))

    def interface_def(self, meta: Meta, name: Token, ports: tuple[A.Formal, ...],
                      outs: tuple[A.TensorTypeExpr, ...]) -> A.InterfaceDef:
        return A.InterfaceDef(str(name), ports, outs, self._s(meta))

    @v_args(meta=True, inline=False)
    def block_def(self, meta: Meta, children: list[Any]) -> A.BlockDef:
        annotations = tuple(c for c in children if isinstance(c, A.Annotation))
        rest = [c for c in children if not isinstance(c, A.Annotation)]
        kind, name, first, second, outs, implements, body = rest
        params, ports = (first, second) if second is not None else ((), first)
        if second is None and outs is None and implements is not None:
            params, ports = first, None  # `block X(params) : Iface { ... }`
        elif second is None and outs is None:
            raise ArchError(f"block '{name}' needs a signature: '(inputs) -> outputs' or ': Interface'",
                            _tok_span(self.file, name))
        return A.BlockDef(str(kind), str(name), params, ports, outs, implements, body, self._s(meta),
                          annotations, _tok_span(self.file, name))

    def implements(self, meta: Meta, name: Token) -> str:
        return str(name)

    @v_args(meta=True, inline=False)
    def formals(self, meta: Meta, items: list[A.Formal | None]) -> tuple[A.Formal, ...]:
        out = tuple(f for f in items if f is not None)
        seen: set[str] = set()
        for f in out:
            if f.name in seen:
                raise ArchError(f"'{f.name}' is declared twice", f.span)
            seen.add(f.name)
        return out

    def formal(self, meta: Meta, name: Token, type_: A.TypeExpr, default: A.Expr | None) -> A.Formal:
        return A.Formal(str(name), type_, default, self._s(meta))

    def type_name(self, meta: Meta, name: Token) -> A.TypeName:
        return A.TypeName(str(name), self._s(meta))

    def out_types(self, meta: Meta, t: A.TensorTypeExpr) -> tuple[A.TensorTypeExpr, ...]:
        return (t,)

    def out_tuple(self, meta: Meta, *ts: A.TensorTypeExpr) -> tuple[A.TensorTypeExpr, ...]:
        return tuple(ts)

    @v_args(meta=True, inline=False)
    def tensor_type(self, meta: Meta, children: list[Any]) -> A.TensorTypeExpr:
        dtype = None
        if children and isinstance(children[0], Token) and children[0].type == "NAME":
            dtype, children = str(children[0]), children[1:]
        dims = tuple(d for d in children if d is not None)
        return A.TensorTypeExpr(dtype, dims, self._s(meta))

    def dim_star(self, meta: Meta) -> A.Star:
        return A.Star(self._s(meta))

    # -- statements --
    @v_args(meta=True, inline=False)
    def body(self, meta: Meta, stmts: list[A.Stmt]) -> tuple[A.Stmt, ...]:
        for s, after in zip(stmts, stmts[1:]):
            if isinstance(s, A.Return):
                raise ArchError("statement after 'return' is never reached", after.span,
                                notes=[("the block returns here", s.span)])
        return tuple(stmts)

    @v_args(meta=True, inline=False)
    def stmt(self, meta: Meta, children: list[Any]) -> A.Stmt:
        *annotations, inner = children
        if annotations:
            from dataclasses import replace
            return replace(inner, annotations=tuple(annotations))
        return inner  # type: ignore[no-any-return]

    @v_args(meta=True, inline=False)
    def assign(self, meta: Meta, children: list[Any]) -> A.Assign:
        *targets, value = children
        formats = tuple(t if isinstance(t, A.NameFormat) else None for t in targets)
        return A.Assign(tuple(_format_text(t) if isinstance(t, A.NameFormat) else str(t) for t in targets),
                        value, self._s(meta), formats=formats if any(formats) else ())

    @v_args(meta=True, inline=False)
    def formatted_name(self, meta: Meta, children: list[Any]) -> A.NameFormat:
        head, *fills = children
        parts: list[Any] = [str(head)]
        for expr, tail in fills:
            parts.append(expr)
            if tail is not None:
                parts.append(str(tail))
        return A.NameFormat(tuple(parts), self._s(meta))

    @v_args(inline=False)
    def name_fill(self, children: list[Any]) -> tuple[Any, Any]:
        return children[0], children[1]

    def return_stmt(self, meta: Meta, *values: A.Expr) -> A.Return:
        return A.Return(tuple(values), self._s(meta))

    @v_args(meta=True, inline=False)
    def if_stmt(self, meta: Meta, children: list[Any]) -> A.If:
        cond, body, *rest = children
        branches = [(cond, body)]
        orelse = None
        for r in rest:
            if isinstance(r, tuple) and len(r) == 2 and r[0] == "elif":
                branches.append(r[1])
            elif r is not None:
                orelse = r
        return A.If(tuple(branches), orelse, self._s(meta))

    def elif_clause(self, meta: Meta, cond: A.Expr, body: tuple[A.Stmt, ...]) -> tuple[str, Any]:
        return ("elif", (cond, body))

    def else_clause(self, meta: Meta, body: tuple[A.Stmt, ...]) -> tuple[A.Stmt, ...]:
        return body

    def for_stmt(self, meta: Meta, var: Token, it: A.Expr, body: tuple[A.Stmt, ...]) -> A.For:
        return A.For(str(var), it, body, self._s(meta))

    @v_args(meta=True, inline=False)
    def annotation(self, meta: Meta, children: list[Any]) -> A.Annotation:
        name, args = children[0], children[1] if len(children) > 1 else None
        pos, kws = args if args is not None else ((), ())
        return A.Annotation(str(name), pos, kws, self._s(meta))

    # -- expressions --
    @v_args(meta=True, inline=False)
    def pipeline(self, meta: Meta, children: list[Any]) -> A.Pipeline:
        stages = tuple(c for c in children if not isinstance(c, Token))
        return A.Pipeline(stages, self._s(meta))

    def cond(self, meta: Meta, test: A.Expr, then: A.Expr, orelse: A.Expr) -> A.Cond:
        return A.Cond(test, then, orelse, self._s(meta))

    def or_op(self, meta: Meta, a: A.Expr, b: A.Expr) -> A.BinOp:
        return A.BinOp("or", a, b, self._s(meta))

    def and_op(self, meta: Meta, a: A.Expr, b: A.Expr) -> A.BinOp:
        return A.BinOp("and", a, b, self._s(meta))

    def not_op(self, meta: Meta, a: A.Expr) -> A.UnaryOp:
        return A.UnaryOp("not", a, self._s(meta))

    def compare(self, meta: Meta, a: A.Expr, op: Token, b: A.Expr) -> A.BinOp:
        return A.BinOp(str(op), a, b, self._s(meta))

    def binop(self, meta: Meta, a: A.Expr, op: Token, b: A.Expr) -> A.BinOp:
        return A.BinOp(str(op), a, b, self._s(meta))

    def neg(self, meta: Meta, a: A.Expr) -> A.Expr:
        if isinstance(a, A.Const) and isinstance(a.value, (int, float)) and not isinstance(a.value, bool):
            return A.Const(-a.value, self._s(meta), "-" + a.text)
        return A.UnaryOp("-", a, self._s(meta))

    def pow(self, meta: Meta, a: A.Expr, op: Token, b: A.Expr) -> A.BinOp:
        return A.BinOp("**", a, b, self._s(meta))

    def call(self, meta: Meta, func: A.Expr, args: Any) -> A.Call:
        pos, kws = args if args is not None else ((), ())
        return A.Call(func, pos, kws, self._s(meta))

    def getattr(self, meta: Meta, obj: A.Expr, name: Token) -> A.GetAttr:
        return A.GetAttr(obj, str(name), self._s(meta))

    def index(self, meta: Meta, obj: A.Expr, *subs: A.Expr) -> A.Index:
        return A.Index(obj, tuple(subs), self._s(meta))

    def slice(self, meta: Meta, lo: A.Expr | None, hi: A.Expr | None) -> A.SliceExpr:
        return A.SliceExpr(lo, hi, self._s(meta))

    def ellipsis(self, meta: Meta) -> A.EllipsisExpr:
        return A.EllipsisExpr(self._s(meta))

    @v_args(meta=True, inline=False)
    def args(self, meta: Meta, items: list[Any]) -> tuple[tuple[A.Expr, ...], tuple[A.Keyword, ...]]:
        return _kw_split(self.file, items)

    def kwarg(self, meta: Meta, name: Token, value: A.Expr) -> A.Keyword:
        return A.Keyword(str(name), value, self._s(meta))

    def stack(self, meta: Meta, args: Any, body: tuple[str | None, A.Expr]) -> A.Stack:
        pos, kws = args if args is not None else ((), ())
        return A.Stack(pos, kws, body[0], body[1], self._s(meta))

    def choice(self, meta: Meta, args: Any) -> A.Choice:
        pos, kws = args if args is not None else ((), ())
        per_layer = False
        for kw in kws:
            if kw.name != "per_layer":
                raise ArchError(f"choice(...) takes options, not '{kw.name}='", kw.span,
                                "the one keyword is per_layer=true")
            if not (isinstance(kw.value, A.Const) and isinstance(kw.value.value, bool)):
                raise ArchError("per_layer= takes true or false", kw.value.span)
            per_layer = kw.value.value
        if not pos:
            raise ArchError("choice() needs at least one option", self._s(meta))
        numbers = _choice_range(pos)
        if numbers is not None:
            lo, hi, step = numbers
            n = len(range(lo, hi, step))
            if not n:
                raise ArchError(f"range({lo}, {hi}, {step}) is empty: a choice needs at least one option",
                                pos[0].span)
            if n > MAX_RANGE:
                raise ArchError(f"range({lo}, {hi}, {step}) has {n:,} options; a choice takes at most "
                                f"{MAX_RANGE:,}", pos[0].span)
            options = tuple(A.Const(k, pos[0].span, str(k)) for k in range(lo, hi, step))
            return A.Choice(options, self._s(meta), per_layer, numbers)
        seen: dict[str, A.Expr] = {}
        for option in pos:
            if any(isinstance(n, A.Choice) for n in A.walk(option)):
                raise ArchError("a choice inside a choice is not supported: list its options in one choice",
                                option.span)
            text = expr_text(option)
            if text in seen:
                raise ArchError(f"choice option '{text}' is written twice", option.span)
            seen[text] = option
        return A.Choice(tuple(pos), self._s(meta), per_layer)

    @v_args(meta=True, inline=False)
    def stack_body(self, meta: Meta, children: list[Any]) -> tuple[str | None, A.Expr]:
        if len(children) == 3:
            return str(children[0]), children[2]
        return None, children[-1]

    def name(self, meta: Meta, tok: Token) -> A.Name:
        return A.Name(str(tok), self._s(meta))

    def int(self, meta: Meta, tok: Token) -> A.Const:
        digits = str(tok).replace("_", "").lstrip("0") or "0"
        if len(digits) > 19 or int(digits) > MAX_INT_LITERAL:  # also spares Python's 4300-digit limit
            raise ArchError("integer is too large (over 2**62)", self._s(meta))
        return A.Const(int(digits), self._s(meta), str(tok))

    def float(self, meta: Meta, tok: Token) -> A.Const:
        value = float(str(tok).replace("_", ""))
        if not math.isfinite(value):
            raise ArchError("number is too large for a float", self._s(meta))
        return A.Const(value, self._s(meta), str(tok))

    def string(self, meta: Meta, tok: Token) -> A.Const:
        return A.Const(_unquote(tok, self.file), self._s(meta), str(tok))

    def true(self, meta: Meta) -> A.Const:
        return A.Const(True, self._s(meta), "true")

    def false(self, meta: Meta) -> A.Const:
        return A.Const(False, self._s(meta), "false")

    @v_args(meta=True, inline=False)
    def tuple(self, meta: Meta, items: list[Any]) -> A.TupleExpr:
        return A.TupleExpr(tuple(i for i in items if i is not None), self._s(meta))

    @v_args(meta=True, inline=False)
    def list(self, meta: Meta, items: list[Any]) -> A.ListExpr:
        return A.ListExpr(tuple(i for i in items if i is not None), self._s(meta))


_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}


def _unquote(tok: Token, file: str) -> str:
    body = str(tok)[1:-1]
    if len(body) > MAX_STRING:
        raise ArchError(f"string is too long ({len(body)} characters; the limit is {MAX_STRING})",
                        Span(file, tok.line or 1, tok.column or 1, tok.line, (tok.column or 1) + 1))
    out, i = [], 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt == "u":  # \u{hex}: any character by its code point
                end = body.find("}", i + 3)
                code = body[i + 3:end] if body[i + 2:i + 3] == "{" and end > 0 else ""
                if not (1 <= len(code) <= 6 and all(c in "0123456789abcdefABCDEF" for c in code)) \
                        or int(code, 16) > 0x10FFFF:
                    raise ArchError("escape '\\u' takes a hex code point in braces, as in \\u{2028}",
                                    _tok_span(file, tok))
                out.append(chr(int(code, 16)))
                i = end + 1
                continue
            if nxt not in _ESCAPES:
                raise ArchError(f"unknown escape '\\{nxt}' in string", _tok_span(file, tok))
            out.append(_ESCAPES[nxt])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _format_text(f: A.NameFormat) -> str:
    """A formatted name as written, for the formatter: `denselayer{i + 1}`."""
    from archc.frontend.fmt import expr_text

    return "".join(p if isinstance(p, str) else "{" + expr_text(p) + "}" for p in f.parts)
