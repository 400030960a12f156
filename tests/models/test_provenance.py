"""Model cards keep naming the files that made them, after files move."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from models.common.provenance import MOVED_SOURCES, REPO_ROOT, code_version, current_source

CARDS = sorted((REPO_ROOT / "triton_repo").glob("*/model_card.json"))


def _source_lists(node: Any) -> Iterator[list[str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "source_files":
                yield value
            else:
                yield from _source_lists(value)
    elif isinstance(node, list):
        for value in node:
            yield from _source_lists(value)


def test_repo_root_is_the_checkout():
    assert (REPO_ROOT / "pyproject.toml").is_file()
    assert code_version(["models/common/provenance.py"])["source_files"] == [
        "models/common/provenance.py"
    ]


@pytest.mark.parametrize("card", CARDS, ids=[card.parent.name for card in CARDS])
def test_every_source_a_card_names_exists_today(card: Path):
    lists = list(_source_lists(json.loads(card.read_text())))
    assert lists, "a shipped card records its code version"
    for files in lists:
        for path in files:
            assert (REPO_ROOT / current_source(path)).is_file(), path


def test_moves_lead_to_files_and_never_chain():
    for old, new in MOVED_SOURCES.items():
        assert not (REPO_ROOT / old).exists()
        assert (REPO_ROOT / new).is_file()
        assert new not in MOVED_SOURCES
