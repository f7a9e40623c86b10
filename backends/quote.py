"""The one quoting layer of each target language. Spec text reaches generated code only through here.

A spec, an IR file or a file name is data from a stranger: an instance name, a `str` parameter,
an `@scope` path, a file name. Every backend that writes source text (the torch `.py` file, the
fx graph, the Triton and CUDA packages, the DOT diagram) passes each such text through the
function of its language below, and never through an f-string of its own:

    Python   py_str(text)        a string literal                 'a\\n"b'
             py_comment(text)    the text of a `#` comment         one line, no control characters
             py_docstring(text)  a docstring statement             built with ast.unparse
             py_attr(obj, name)  read attribute `name` of `obj`    obj.name, or getattr(obj, 'name')
             py_float(x)         a float constant                 0.5, float('inf')
             verify_python(src)  parse the file and check it: names it reads are its own or allowed
    C/CUDA   c_comment(text)     the text of a `//` comment        printable ASCII, no backslash
             c_str(text)         a string literal                  octal escapes
    DOT      dot_str(text)       a double-quoted DOT id             "a\\"b"
             dot_html(text)      text inside an HTML-like label     a &lt;b&gt;

`is_identifier` is the one test of whether a name may stand as a Python identifier in generated
code: ASCII only, since Python folds identifiers by NFKC (`ﬁ` and `fi` are one name to it), and
never a keyword.
"""

from __future__ import annotations

import ast
import functools
import html
import keyword
import math
import re

from archc.ir import names

# --- Python ----------------------------------------------------------------------------------



def is_identifier(name: str) -> bool:
    """May `name` be written as a Python identifier? ASCII only (no NFKC folding), never a keyword."""
    return names.is_identifier(name) and not keyword.iskeyword(name) and not keyword.issoftkeyword(name)


def _code_safe(text: str) -> bool:
    """A dotted path of identifiers and integers (`h.0.attn`) may be written as code."""
    return all(is_identifier(p) or re.fullmatch(r"[0-9]+", p) for p in text.split("."))


def py_str(text: str) -> str:
    """A Python string literal for `text`: one line, every control and non-printable character
    escaped (repr's rules), so it can stand anywhere an expression can."""
    return repr(str(text))


def py_comment(text: str) -> str:
    """`text` made fit for a `#` comment: one line, control characters and line separators escaped."""
    return repr(str(text))[1:-1]


def py_docstring(text: str, indent: str = "") -> str:
    """A docstring statement holding `text`, written by `ast.unparse` (which escapes what it must)."""
    code = ast.unparse(ast.Module(body=[ast.Expr(ast.Constant(str(text)))], type_ignores=[]))
    return "\n".join(indent + line if line else line for line in code.split("\n"))


def py_float(value: float) -> str:
    """A Python expression for the float `value`: its repr, or `float('inf')`, `float('-inf')`,
    `float('nan')` (whose reprs are names, not literals)."""
    value = float(value)
    return repr(value) if math.isfinite(value) else f"float({repr(value)!r})"


def py_attr(obj: str, name: str) -> str:
    """Generated code that reads attribute `name` of the expression `obj`."""
    return f"{obj}.{name}" if is_identifier(name) and not name.startswith("__") else f"getattr({obj}, {py_str(name)})"


# What generated Python may read without defining it: torch's names and harmless builtins.
PY_GLOBALS = frozenset({
    "torch", "nn", "F", "math", "triton", "tl", "ctypes", "os", "sys", "Path", "annotations",
    "Any", "Optional", "Callable", "Sequence", "functools", "hashlib", "json", "tempfile", "time", "subprocess",
    "shutil", "dataclass", "field", "itertools",
    "int", "float", "bool", "str", "tuple", "list", "dict", "set", "frozenset", "len", "range", "enumerate", "zip",
    "min", "max", "sum", "abs", "any", "all", "isinstance", "super", "object", "type", "print", "sorted", "id",
    "reversed", "map", "iter", "next", "round", "divmod", "slice", "property", "staticmethod", "classmethod",
    "Exception", "RuntimeError", "ValueError", "TypeError", "KeyError", "ImportError", "OSError",
    "NotImplementedError", "AssertionError", "IndexError", "FileNotFoundError", "__name__", "__file__",
    "__doc__", "None", "True", "False", "Ellipsis", "NotImplemented",
})
# Reading these runs or reaches arbitrary code; no generated file needs them.
_FORBIDDEN = frozenset({"eval", "exec", "compile", "__import__", "globals", "locals", "vars", "open",
                        "breakpoint", "input", "getattr_static", "__builtins__", "setattr", "delattr"})
_DUNDER_OK = frozenset({"__init__", "__name__", "__file__", "__doc__", "__class__", "__future__", "__main__",
                        "__all__", "__call__"})


class GeneratedCodeError(AssertionError):
    """Generated code failed its check: a bug in archc, never a mistake in a spec."""


def _bound_names(tree: ast.AST) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            out.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, ast.arg):
            out.add(node.arg)
        elif isinstance(node, ast.alias):
            out.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            out.add(node.name)
    return out


@functools.lru_cache(maxsize=256)  # a pure check: the same text passes again (a model compiled twice)
def verify_python(source: str, filename: str = "<generated>", allowed: frozenset[str] = PY_GLOBALS,
                  strings: tuple[str, ...] = ()) -> None:
    """Check generated Python before anything runs it: it parses; every name it reads is one it
    binds itself or one of `allowed` (never eval, exec, __import__, open, ...); no dunder attribute
    beyond the few a class needs; imports name only torch, triton and the standard modules the
    packages use. Each of `strings` (spec text the file may hold) that the file holds occurs in a
    string constant, as itself or quoted (`tag='...'` in a repr of arguments). Raises GeneratedCodeError: that is a bug in archc."""
    try:
        tree = ast.parse(source, filename)
    except SyntaxError as err:
        raise GeneratedCodeError(f"{filename}: generated code does not parse: {err}") from None
    bound = _bound_names(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            if node.id in _FORBIDDEN or (node.id not in bound and node.id not in allowed):
                raise GeneratedCodeError(f"{filename}:{node.lineno}: generated code reads '{node.id}'")
        elif isinstance(node, ast.Attribute) and node.attr.startswith("__") and node.attr not in _DUNDER_OK:
            raise GeneratedCodeError(f"{filename}:{node.lineno}: generated code reads attribute '{node.attr}'")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            mod = node.module if isinstance(node, ast.ImportFrom) else None
            names = [mod] if mod else [a.name for a in node.names]
            for name in names:
                if name and name.split(".")[0] not in _IMPORTABLE:
                    raise GeneratedCodeError(f"{filename}:{node.lineno}: generated code imports '{name}'")
    if strings:
        constants = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]

        def held(text: str) -> bool:
            return _code_safe(text) or any(text in c or repr(text) in c for c in constants)

        for text in strings:
            # a scope path is held whole (`Scope(..., "h.0")`) or one segment at a time
            # (`self._modules['a"b']._modules['fc']`), each segment a constant; text the file does
            # not hold at all (an argument of a stack made an nn.Sequential) is not in its code either
            if text not in source and not held(text):
                continue
            if not held(text) and not all(held(part) for part in text.split(".")):
                raise GeneratedCodeError(f"{filename}: spec text {text!r} is not a string constant of the file")
    return tree


_IMPORTABLE = frozenset({"torch", "triton", "__future__", "typing", "math", "ctypes", "os", "sys", "pathlib",
                         "functools", "hashlib", "json", "tempfile", "time", "subprocess", "shutil", "dataclasses",
                         "itertools", "collections", "stat", "build", "archc_runtime", "importlib", "weakref",
                         # the sibling modules of a Triton / CUDA package (relative imports)
                         "model", "kernels", "runtime", "torch_model"})

# --- C and CUDA ------------------------------------------------------------------------------

_C_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _.,:;+-=()[]<>{}/@#%&|^~!'")


def c_comment(text: str) -> str:
    """`text` made fit for a `//` comment: printable ASCII without backslash, quote or `?` (no line
    splice, no trigraph, no `*/`); anything else is written as `<U+XXXX>`."""
    out = "".join(c if c in _C_SAFE else f"<U+{ord(c):04X}>" for c in str(text))
    return out.replace("*/", "*<U+002F>")


def c_str(text: str) -> str:
    """A C string literal for `text` (UTF-8 bytes), every byte outside the safe set as a 3-digit octal escape."""
    safe = _C_SAFE - {"?"}
    data = str(text).encode("utf-8", "surrogatepass")  # a lone surrogate (from JSON) is still bytes
    return '"' + "".join(chr(b) if chr(b) in safe else f"\\{b:03o}" for b in data) + '"'


# --- DOT (graphviz) --------------------------------------------------------------------------


def dot_str(text: str) -> str:
    """A double-quoted DOT id showing `text` as written: quotes and backslashes escaped (a DOT
    label gives `\\l`, `\\N`, ... a meaning), line breaks as the escape DOT draws as a new line."""
    body = str(text).replace("\\", "\\\\").replace('"', '\\"')
    body = body.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\\n")
    return '"' + "".join(c if c.isprintable() or c == " " else f"\\\\x{ord(c):02x}" for c in body) + '"'


def dot_html(text: str) -> str:
    """`text` for the inside of an HTML-like DOT label (`label=<...>`): `&`, `<`, `>` and quotes as
    entities, and every character that is not printable (control characters, which graphviz's XML
    parser refuses even as `&#1;`, line separators, lone surrogates) written out as `\\xNN`."""
    shown = "".join(c if c.isprintable() or c == " " else f"\\x{ord(c):02x}" for c in str(text))
    return html.escape(shown, quote=True)
