"""The inference-default options shared by predict / oof / serve (overrides) and export-bundle (recorded)."""

from __future__ import annotations

import argparse

import pytest

from pancreas.cli.inference_options import add_inference_options, inference_overrides


def parser(**kwargs) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="t", exit_on_error=False)
    add_inference_options(p, **kwargs)
    return p


def test_overrides_parse_and_default_to_the_bundle() -> None:
    args = parser().parse_args(["--no-tta", "--scales", "1,1.25", "--mirror-axes", "2", "--class-weights", "1,1,4"])
    assert inference_overrides(args) == {"tta": False, "class_weights": (1.0, 1.0, 4.0), "scales": (1.0, 1.25),
                                         "mirror_axes": (2,)}
    assert set(inference_overrides(parser().parse_args([])).values()) == {None}  # as the bundle records
    assert "metadata.inference.mirror_axes; all when unset" in " ".join(parser().format_help().split())


def test_record_mode_and_subsets() -> None:
    recorded = parser(record=True)
    assert recorded.parse_args(["--tta"]).tta is True and recorded.parse_args([]).tta is False
    assert "record as the bundle's default (metadata.inference.scales)" in " ".join(recorded.format_help().split())
    served = parser(names=("tta", "scales"))
    assert not hasattr(served.parse_args([]), "class_weights")
    with pytest.raises(argparse.ArgumentError, match="'3': mirror axes are"):
        parser().parse_args(["--mirror-axes", "3"])
