"""Reference solutions to the notebooks' exercises, one module per notebook.

Each exercise's check cell runs on the learner's answer, or on the reference solution while the
exercise is not attempted yet, so the checks (and the solutions) are exercised by every run of
the notebooks and cannot rot. Read a module here when you are stuck.
"""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


def yours_or_reference(yours: T | None, reference: T) -> T:
    """Return the learner's answer, or the reference solution while the exercise is still `None`."""
    if yours is not None:
        return yours
    print("Not attempted yet: checking the reference solution instead (replace `None` above with yours).")
    return reference
