"""Front end: `.arch` text -> AST (parser.py, ast.py) and AST -> canonical text (fmt.py)."""
