"""Sphinx configuration of the fairsteer documentation.

Build (warnings are errors):

    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import sys
from pathlib import Path

# Document the source tree next to this file, not whichever fairsteer happens
# to be installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import importlib
import inspect
from collections.abc import Callable
from typing import ClassVar

from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

import fairsteer

project = "fairsteer"
author = "the fairsteer developers"
copyright = "the fairsteer developers"
release = fairsteer.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinxcontrib.bibtex",
]

# References of the theory chapter (docs/references.bib), cited with {cite:ps}`key`.
bibtex_bibfiles = ["references.bib"]
bibtex_default_style = "plain"
bibtex_reference_style = "author_year"

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build"]

# MyST: $...$ and $$...$$ maths, and (label)= targets on every theory section.
myst_enable_extensions = ["dollarmath", "amsmath", "deflist"]
myst_heading_anchors = 3

# Docstrings are numpydoc-style; napoleon reads them.
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_preprocess_types = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_default_options = {"show-inheritance": True}
autodoc_preserve_defaults = True

html_theme = "alabaster"
html_theme_options = {"page_width": "1100px", "sidebar_width": "230px"}
html_title = f"fairsteer {release}"
html_static_path: list[str] = []


# ----------------------------------------------------------------------- API
# ``.. api-module:: fairsteer.solve`` documents a module's docstring and every
# name of its ``__all__``, each object once per page: a name already
# documented by an earlier ``api-module`` on the page (a re-export) becomes a
# link to that entry, and a name that equals a documented module's name
# (``fairsteer.solve`` the function and the module) is left to that module.
# The page then follows ``__all__`` as the code changes, with no list to keep.


class ApiModule(SphinxDirective):
    required_arguments = 1
    option_spec: ClassVar[dict[str, Callable[[str], list[str]]]] = {
        "modules": lambda arg: arg.split()
    }

    def run(self):  # type: ignore[no-untyped-def]
        name = self.arguments[0]
        module = importlib.import_module(name)
        seen: dict[int, str] = self.env.temp_data.setdefault("api_seen", {})
        modules = set(self.options.get("modules", []))
        # Other names of the documented objects (their re-exports and their
        # defining module), so that :func:`affirmative_action` inside
        # fairsteer.solve finds fairsteer.affirmative_action.
        aliases: dict[str, str] = self.env.__dict__.setdefault("fairsteer_api_aliases", {})
        # reStructuredText inside MyST's eval-rst (the page docs/api.md is MyST).
        lines = ["```{eval-rst}", f".. automodule:: {name}", ""]
        links = []
        for member in getattr(module, "__all__", []):
            obj = getattr(module, member)
            full = f"{name}.{member}"
            if full in modules:
                continue
            if id(obj) in seen:
                links.append(f":py:obj:`{seen[id(obj)]}`")
                aliases[full] = seen[id(obj)]
                continue
            seen[id(obj)] = full
            aliases[full] = full
            defined = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"
            aliases.setdefault(defined, full)
            if inspect.isclass(obj):
                lines += [f".. autoclass:: {full}", "   :members:", ""]
            elif inspect.isfunction(obj):
                lines += [f".. autofunction:: {full}", ""]
            else:
                lines += [f".. autodata:: {full}", ""]
        if links:
            lines += ["Also in this module (documented above): " + ", ".join(links) + ".", ""]
        lines.append("```")
        return self.parse_text_to_nodes("\n".join(lines))


def resolve_alias(app: Sphinx, env, node, contnode):  # type: ignore[no-untyped-def]
    """Resolve a Python reference through the other names of a documented object."""
    if node.get("refdomain") != "py":
        return None
    aliases: dict[str, str] = env.__dict__.get("fairsteer_api_aliases", {})
    target = node["reftarget"]
    modname = node.get("py:module")
    candidates = [target] + ([f"{modname}.{target}"] if modname else [])
    for candidate in candidates:
        parts = candidate.split(".")
        for cut in range(len(parts), 0, -1):
            documented = aliases.get(".".join(parts[:cut]))
            if documented is None:
                continue
            new_target = ".".join([documented, *parts[cut:]])
            if new_target == target:
                break
            domain = env.domains["py"]
            return domain.resolve_xref(
                env, node["refdoc"], app.builder, node["reftype"], new_target, node, contnode
            )
    # Last resort, a bare name (``InputError`` inside fairsteer.options): the
    # one documented object of that name, if there is exactly one.
    if "." not in target:
        matches = {v for v in aliases.values() if v.rsplit(".", 1)[-1] == target}
        if len(matches) == 1:
            return env.domains["py"].resolve_xref(
                env, node["refdoc"], app.builder, node["reftype"], matches.pop(), node, contnode
            )
    return None


def setup(app: Sphinx) -> None:
    app.add_directive("api-module", ApiModule)
    app.connect("missing-reference", resolve_alias)
