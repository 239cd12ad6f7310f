"""Export and quantize on one model dir take turns (``onnx/.lock``) instead of racing."""

from __future__ import annotations

import threading

import pytest

from edgezoo.dirlock import model_dir_lock
from edgezoo.errors import CheckpointError


def _hold(model_dir, holding: threading.Event, release: threading.Event, order: list) -> None:
    with model_dir_lock(model_dir, "export"):
        holding.set()
        release.wait(30)
        order.append("released")


def _wait_while_held(model_dir, work, capsys) -> list:
    """Run ``work`` while another thread holds the lock; it must wait, say so, then run."""
    holding, release, order, errors = threading.Event(), threading.Event(), [], []
    holder = threading.Thread(target=_hold, args=(model_dir, holding, release, order))
    holder.start()
    assert holding.wait(30)

    def attempt():
        try:
            work()
        except Exception as e:  # the work's own outcome, after the lock was free
            errors.append(e)
        order.append("ran")

    waiter = threading.Thread(target=attempt)
    waiter.start()
    waiter.join(1.0)
    assert waiter.is_alive()  # blocked on the lock, not running alongside
    assert "waiting for export (pid" in capsys.readouterr().err
    release.set()
    holder.join(30)
    waiter.join(60)
    assert order == ["released", "ran"]
    return errors


def test_a_second_holder_waits_for_the_first(tmp_path, capsys):
    def take():
        with model_dir_lock(tmp_path, "quantize"):
            pass

    assert _wait_while_held(tmp_path, take, capsys) == []
    with model_dir_lock(tmp_path, "quantize"), model_dir_lock(tmp_path, "export"):
        pass  # re-entrant in one thread: import_hf runs to_onnx under its own lock
    assert not (tmp_path / "onnx" / ".lock").exists()  # removed by its last holder


def test_quantize_and_export_wait_for_the_lock(tmp_path, capsys):
    from edgezoo.export.onnx_export import to_onnx
    from edgezoo.quantize.pipeline import quantize_model

    for work in (lambda: quantize_model(tmp_path, "int8"), lambda: to_onnx(tmp_path)):
        errors = _wait_while_held(tmp_path, work, capsys)
        assert len(errors) == 1 and isinstance(errors[0], CheckpointError)  # empty dir


def test_the_lock_is_released_when_the_work_fails(tmp_path):
    with pytest.raises(RuntimeError), model_dir_lock(tmp_path, "export"):
        raise RuntimeError("boom")
    done = threading.Event()

    def again():
        with model_dir_lock(tmp_path, "quantize"):
            done.set()

    t = threading.Thread(target=again)
    t.start()
    t.join(10)
    assert done.is_set()
