"""The project's bar: no function in bcnn_triton/ longer than about 80 lines.

kernels/ is left out: a Triton kernel is one function by nature (its body cannot call helpers
that allocate or loop in Python).
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bcnn_triton"
MAX_LINES = 80


def test_no_function_is_longer_than_the_bar():
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_LINES:
                    relative = path.relative_to(PACKAGE.parent)
                    too_long.append(f"{relative}:{node.lineno} {node.name} ({length} lines)")
    assert not too_long, "split these functions:\n" + "\n".join(too_long)
