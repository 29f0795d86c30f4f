"""Running a Markdown document's Python blocks, in order, as one script.

Blocks with top-level ``await`` run on the test's event loop (as in ``python -m asyncio``); the
others in a thread, as a synchronous app runs. The namespace is a real module (the ORM resolves
names in one), returned for the test's own checks.
"""

from __future__ import annotations

import ast
import asyncio
import re
import sys
import types
from inspect import CO_COROUTINE
from pathlib import Path

PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def python_blocks(path: Path) -> list[str]:
    """The Python blocks of ``path``; every ```` ```python ```` fence must be one of them."""
    text = path.read_text(encoding="utf-8")
    blocks = PYTHON_BLOCK.findall(text)
    assert len(blocks) == text.count("```python"), f"a malformed python block in {path.name}"
    return blocks


async def run_blocks(path: Path, blocks: list[str], module: types.ModuleType) -> None:
    """Run ``blocks`` (of ``path``) in order in ``module`` (registered in ``sys.modules``
    meanwhile). What they defined stays in it, also when a block fails."""
    module_name = module.__name__
    sys.modules[module_name] = module
    try:
        for index, block in enumerate(blocks):
            code = compile(block, f"{path.name}, block {index}", "exec",
                           flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)  # fmt: skip
            if code.co_flags & CO_COROUTINE:
                await eval(code, module.__dict__)
            else:
                await asyncio.to_thread(exec, code, module.__dict__)
    finally:
        del sys.modules[module_name]
