"""Reading torch files safely: the object back, or a clear error naming the file."""
from __future__ import annotations

import pytest
import torch

from liverseg.errors import LiversegError
from liverseg.io.torch_files import load_torch_file


def test_a_saved_state_dict_comes_back(tmp_path):
    torch.save({"w": torch.arange(3)}, tmp_path / "w.pt")
    assert torch.equal(load_torch_file(tmp_path / "w.pt", "missing", "bad; fix it")["w"], torch.arange(3))


def test_missing_and_damaged_files_name_the_file_and_the_remedy(tmp_path):
    with pytest.raises(LiversegError, match=r"nope\.pt: no such weights"):
        load_torch_file(tmp_path / "nope.pt", "no such weights", "bad; fix it")
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(LiversegError, match=r"bad\.pt: cannot be read \(.+\); give another file$"):
        load_torch_file(tmp_path / "bad.pt", "missing", "cannot be read; give another file")
    (tmp_path / "notes.txt").write_text("hello weights\n")  # torch.load fails on this one with a KeyError
    with pytest.raises(LiversegError, match=r"notes\.txt: cannot be read"):
        load_torch_file(tmp_path / "notes.txt", "missing", "cannot be read; give another file")
