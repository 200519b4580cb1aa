"""Training text for the built-in model, written for this project.

The text lives in Python modules rather than ``.txt`` files because the package data that
``pyproject.toml`` ships is only ``py.typed``, ``*.pyi``, ``*.binpb`` and ``*.proto``: a module is
installed with the code, with no packaging change.
"""
