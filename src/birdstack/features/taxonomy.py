"""Mapping a user's class names to BirdNET's species labels, by scientific name.

BirdNET V2.4 labels read ``"Genus species_Common Name"``. A class is matched by its
scientific name (the metadata's ``scientific_name`` column when there is one, else
the label itself: ``regulus_ignicapilla`` -> ``Regulus ignicapilla``), compared
case-insensitively, then through :data:`SYNONYMS` for taxonomic changes between
the user's checklist and BirdNET's (eBird/Clements 2021). A class that matches
nothing is reported as unmapped, never guessed::

    >>> labels = ["Regulus ignicapilla_Firecrest", "Curruca iberiae_Western Subalpine Warbler"]
    >>> m = map_classes(["regulus_ignicapillus", "sylvia_cantillans", "agelaius_xanthomus"], labels)
    >>> m.indices, m.unmapped
    ((0, 1, -1), ('agelaius_xanthomus',))
    >>> m.notes["sylvia_cantillans"]
    'Sylvia cantillans -> Curruca iberiae (synonym)'
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

# Older or alternative scientific name -> BirdNET V2.4's name. Recent lumps, splits and
# genus moves that Xeno-canto / BirdCLEF metadata still spell the old way. For a split
# (Subalpine Warbler), the old name maps to the population of the region that the
# old name's type locality belongs to; check the note when your recordings are elsewhere.
SYNONYMS: dict[str, str] = {
    # Sylvia -> Curruca (2019-2020); Subalpine Warbler split into three species (2020)
    "sylvia cantillans": "Curruca iberiae",
    "sylvia inornata": "Curruca iberiae",
    "sylvia subalpina": "Curruca subalpina",
    "sylvia communis": "Curruca communis",
    "sylvia curruca": "Curruca curruca",
    "sylvia melanocephala": "Curruca melanocephala",
    "sylvia undata": "Curruca undata",
    "sylvia conspicillata": "Curruca conspicillata",
    "sylvia hortensis": "Curruca hortensis",
    "sylvia crassirostris": "Curruca crassirostris",
    "sylvia nisoria": "Curruca nisoria",
    "sylvia sarda": "Curruca sarda",
    "sylvia balearica": "Curruca balearica",
    "sylvia ruppeli": "Curruca ruppeli",
    "sylvia melanothorax": "Curruca melanothorax",
    # spelling corrections of the species epithet (gender agreement)
    "regulus ignicapillus": "Regulus ignicapilla",
    # genus moves (and back)
    "coloeus monedula": "Corvus monedula",
    "parus ater": "Periparus ater",
    "parus caeruleus": "Cyanistes caeruleus",
    "parus cristatus": "Lophophanes cristatus",
    "parus palustris": "Poecile palustris",
    "parus montanus": "Poecile montanus",
    "carduelis chloris": "Chloris chloris",
    "carduelis cannabina": "Linaria cannabina",
    "carduelis flammea": "Acanthis flammea",
    "carduelis spinus": "Spinus spinus",
    "miliaria calandra": "Emberiza calandra",
    "delichon urbica": "Delichon urbicum",
    "hippolais pallida": "Iduna pallida",
    "hippolais caligata": "Iduna caligata",
    "hippolais opaca": "Iduna opaca",
    "dendrocopos minor": "Dryobates minor",
    "dendrocopos medius": "Dendrocoptes medius",
    "tetrao tetrix": "Lyrurus tetrix",
    "bonasa bonasia": "Tetrastes bonasia",
    "larus ridibundus": "Chroicocephalus ridibundus",
    "porzana parva": "Zapornia parva",
    "porzana pusilla": "Zapornia pusilla",
    "anas querquedula": "Spatula querquedula",
    "anas clypeata": "Spatula clypeata",
    "anas strepera": "Mareca strepera",
    "anas penelope": "Mareca penelope",
    "vermivora pinus": "Vermivora cyanoptera",
    "dendroica petechia": "Setophaga petechia",
    "dendroica adelaidae": "Setophaga adelaidae",
    "dendroica angelae": "Setophaga angelae",
    "dendroica discolor": "Setophaga discolor",
    "dendroica caerulescens": "Setophaga caerulescens",
    "dendroica coronata": "Setophaga coronata",
    "seiurus noveboracensis": "Parkesia noveboracensis",
    "seiurus motacilla": "Parkesia motacilla",
    "wilsonia citrina": "Setophaga citrina",
    "parula americana": "Setophaga americana",
    "loxigilla portoricensis": "Melopyrrha portoricensis",
    "tiaris bicolor": "Melanospiza bicolor",
    "saurothera vieilloti": "Coccyzus vieilloti",
    "otus nudipes": "Megascops nudipes",
}


def scientific_from_label(label: str) -> str:
    """``"regulus_ignicapilla"`` -> ``"Regulus ignicapilla"`` (the BirdCLEF label convention)."""
    words = re.split(r"[_\s]+", label.strip())
    text = " ".join(w for w in words if w)
    return text[:1].upper() + text[1:].lower()


def _norm(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


@dataclass(frozen=True)
class ClassMapping:
    """Each class's BirdNET label index (``-1``: unmapped) and how it was found."""

    classes: tuple[str, ...]
    indices: tuple[int, ...]
    unmapped: tuple[str, ...]
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def mapped(self) -> tuple[str, ...]:
        """Classes BirdNET knows."""
        return tuple(c for c, i in zip(self.classes, self.indices) if i >= 0)

    def message(self) -> str:
        """One line naming the unmapped classes (empty when all are mapped)."""
        if not self.unmapped:
            return ""
        return (
            f"{len(self.unmapped)} of {len(self.classes)} classes are not among BirdNET's "
            f"species and get no BirdNET score: {', '.join(self.unmapped)} (add a "
            "scientific_name column or a synonym to map them)"
        )


def map_classes(
    classes: Sequence[str],
    labels: Sequence[str],
    scientific_names: Mapping[str, str] | None = None,
    synonyms: Mapping[str, str] | None = None,
) -> ClassMapping:
    """Map ``classes`` to indices of BirdNET ``labels`` by scientific name (see module doc).

    ``scientific_names``: class -> scientific name (e.g. the metadata's column);
    missing ones come from the class label itself.
    """
    syn = {_norm(k): v for k, v in (SYNONYMS if synonyms is None else synonyms).items()}
    index: dict[str, int] = {}
    for i, lab in enumerate(labels):
        index.setdefault(_norm(lab.split("_", 1)[0]), i)
    names = dict(scientific_names or {})
    indices: list[int] = []
    unmapped: list[str] = []
    notes: dict[str, str] = {}
    for c in classes:
        sci = str(names.get(c) or scientific_from_label(c))
        candidates = [sci, scientific_from_label(c)]
        found = -1
        for cand in candidates:
            key = _norm(cand)
            if key in index:
                found = index[key]
                break
            if key in syn and _norm(syn[key]) in index:
                found = index[_norm(syn[key])]
                notes[c] = f"{scientific_from_label(cand)} -> {syn[key]} (synonym)"
                break
        indices.append(found)
        if found < 0:
            unmapped.append(c)
            notes[c] = f"{sci}: not a BirdNET V2.4 species"
    return ClassMapping(tuple(classes), tuple(indices), tuple(unmapped), notes)
