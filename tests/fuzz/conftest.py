"""Hypothesis for the fuzz suite: the profiles of ``_profiles`` (``ci`` by default, ``thorough``
with ``HYPOTHESIS_PROFILE=thorough``), and a run that leaves no files in the repository.

Hypothesis caches what it learns of the code under test (``.hypothesis/constants``) even with no
example database, from collection on; that cache goes to a temporary directory, set as soon as
this file loads and removed when pytest ends.
"""

from __future__ import annotations

import shutil
import tempfile

import pytest
from hypothesis.configuration import set_hypothesis_home_dir

from tests.fuzz._profiles import register

_STORAGE = tempfile.mkdtemp(prefix="hypothesis-")
set_hypothesis_home_dir(_STORAGE)
register()


def pytest_unconfigure(config: pytest.Config) -> None:
    set_hypothesis_home_dir(None)
    shutil.rmtree(_STORAGE, ignore_errors=True)
