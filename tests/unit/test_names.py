"""Project names: checked once where they enter, so none becomes a path outside the state
directory, an option to another program, or an invalid container name."""

from __future__ import annotations

import pytest

from devmesh.core.names import InvalidProjectName, check_project, is_project


@pytest.mark.parametrize(
    "name",
    ["shop", "shop-1a2b3c", "t0123abcd", "a", "9lives", "my_mesh", "a-b_c-0", "x" * 63],
    ids=lambda n: n[:12],
)
def test_compose_style_names_are_projects(name: str) -> None:
    assert check_project(name) == name
    assert is_project(name)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "empty"),
        (".", "not a project name"),
        ("..", "not a project name"),
        ("../victim", "not a project name"),
        ("x/y", "not a project name"),
        ("/tmp", "not a project name"),
        ("-dash", "not a project name"),
        ("_under", "not a project name"),
        ("Bad Name", "not a project name"),
        ("Shop", "not a project name"),
        ("a.b", "not a project name"),
        ("a b", "not a project name"),
        ("tab\there", "not a project name"),
        ("new\nline", "not a project name"),
        ("nul\x00", "not a project name"),
        ("ü", "not a project name"),
        ("²", "not a project name"),
        ("x" * 64, "64 characters long"),
    ],
    ids=[
        "empty", "dot", "dotdot", "parent-path", "slash", "absolute", "leading-dash",
        "leading-underscore", "space-upper", "upper", "dot-inside", "space", "tab", "newline",
        "nul", "non-ascii", "superscript", "too-long",
    ],
)  # fmt: skip
def test_path_like_and_odd_names_are_refused_with_a_reason(name: str, why: str) -> None:
    with pytest.raises(InvalidProjectName, match=why):
        check_project(name)
    assert not is_project(name)
