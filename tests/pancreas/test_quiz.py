"""The quiz layout's one home (pancreas.quiz): names, paths and the subtype CSV."""

from __future__ import annotations

import pytest

from pancreas.errors import DatasetError
from pancreas.quiz import (
    case_id_of,
    case_paths,
    image_name,
    is_image,
    mask_name,
    read_subtype_csv,
    subtype_dirs,
    write_subtype_csv,
)


@pytest.mark.parametrize("name", ["quiz_0_041.nii.gz", "quiz_0_041_0000.nii.gz", "quiz_0_041_0000.nii",
                                  "quiz_0_041.nii", "quiz_0_041"])
def test_case_id_of_strips_extension_and_channel(name):
    assert case_id_of(name) == "quiz_0_041"


def test_image_and_mask_names_round_trip():
    assert image_name("quiz_2_007") == "quiz_2_007_0000.nii.gz"
    assert mask_name("quiz_2_007") == "quiz_2_007.nii.gz"
    assert is_image(image_name("quiz_2_007")) and not is_image(mask_name("quiz_2_007"))
    assert case_id_of(image_name("quiz_2_007")) == case_id_of(mask_name("quiz_2_007")) == "quiz_2_007"


def test_case_paths_train_and_test(tmp_path):
    image, mask = case_paths(tmp_path, "validation", 1, 7)
    assert image == tmp_path / "validation" / "subtype1" / "quiz_1_007_0000.nii.gz"
    assert mask == tmp_path / "validation" / "subtype1" / "quiz_1_007.nii.gz"
    image, mask = case_paths(tmp_path, "test", 2, 12)
    assert image == tmp_path / "test" / "quiz_012_0000.nii.gz"
    assert mask == tmp_path / "test_labels" / "quiz_012.nii.gz"
    with pytest.raises(DatasetError, match="split 'holdout'"):
        case_paths(tmp_path, "holdout", 0, 1)


def test_subtype_csv_round_trip_and_errors(tmp_path):
    path = write_subtype_csv(tmp_path / "subtype_results.csv", {"quiz_b": 2, "quiz_a": 0})
    assert path.read_text().splitlines() == ["Names,Subtype", "quiz_a.nii.gz,0", "quiz_b.nii.gz,2"]
    assert read_subtype_csv(path) == {"quiz_a": 0, "quiz_b": 2}
    (tmp_path / "bad.csv").write_text("Names,Subtype\nquiz_a.nii.gz,3\n")
    with pytest.raises(DatasetError, match="line 2: subtype '3'"):
        read_subtype_csv(tmp_path / "bad.csv")
    (tmp_path / "cols.csv").write_text("file,label\nquiz_a.nii.gz,1\n")
    with pytest.raises(DatasetError, match="lack a case column"):
        read_subtype_csv(tmp_path / "cols.csv")


def test_subtype_dirs_sorted_numerically(tmp_path):
    for name in ("subtype10", "subtype2", "notes", "subtypeX"):
        (tmp_path / name).mkdir()
    assert [k for k, _ in subtype_dirs(tmp_path)] == [2, 10]
