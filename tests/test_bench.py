"""The benchmark harness produces complete, consistent records (numbers are not asserted)."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench

pytestmark = pytest.mark.slow


def test_bench_writes_json_table_and_plot(tmp_path):
    results = bench.run(["nano"], ["fp32", "int4"], [1, 2], [16], new_tokens=8, threads=2, repeats=1, peers=[], work=tmp_path / "work")
    assert results["copy_bandwidth_gbs"] > 0 and results["machine"]["cores"] >= 1
    assert len(results["runs"]) == 4
    for r in results["runs"]:
        assert r["decode_ms_p50"] > 0 and r["floor_ms"] > 0 and r["tokens_per_s"] > 0
        assert r["ratio_to_floor"] == pytest.approx(r["decode_ms_p50"] / r["floor_ms"])
    int4 = next(r for r in results["runs"] if r["precision"] == "int4")
    fp32 = next(r for r in results["runs"] if r["precision"] == "fp32")
    assert int4["weight_bytes"] < fp32["weight_bytes"] / 2
    table = bench.markdown(results)
    assert "| nano | 1.1M | int4 | 2 | 16 |" in table and "random-init" in table
    bench.plot(results, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 10_000
    assert "new ÷ old" in bench.compare(results, json.loads(json.dumps(results)))
