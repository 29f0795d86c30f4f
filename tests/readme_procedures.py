"""The README's procedures block, as a module a bus node imports
(``WRITEBUS_PROCEDURES=tests.readme_procedures:procedures``): the bus runs exactly the code the
README shows."""

from __future__ import annotations

from tests.support.docblocks import python_blocks
from tests.support.stack import REPO
from writebus import Procedures

_BLOCK = next(b for b in python_blocks(REPO / "README.md") if "procedures = Procedures()" in b)
_namespace: dict[str, object] = {}
exec(compile(_BLOCK, "README.md, procedures block", "exec"), _namespace)
procedures = _namespace["procedures"]
assert isinstance(procedures, Procedures)
