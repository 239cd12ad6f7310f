"""The benchmark harness produces complete, consistent records (numbers are not asserted)."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench

pytestmark = pytest.mark.slow


def test_bench_writes_json_table_and_plot(tmp_path):
    results = bench.run(
        ["nano"],
        ["fp32", "int4"],
        [1, 2],
        [16],
        new_tokens=8,
        threads=2,
        repeats=1,
        peers=["edgezoo"],  # our own runtime in a fresh process: a peer with no extra install
        work=tmp_path / "work",
        peer_prompts=(16, 40),
    )
    assert results["copy_bandwidth_gbs"] > 0 and results["machine"]["cores"] >= 1
    assert len(results["runs"]) == 4
    for r in results["runs"]:
        assert r["decode_ms_p50"] > 0 and r["floor_ms"] > 0 and r["tokens_per_s"] > 0
        assert r["ratio_to_floor"] == pytest.approx(r["decode_ms_p50"] / r["floor_ms"])
    int4 = next(r for r in results["runs"] if r["precision"] == "int4")
    fp32 = next(r for r in results["runs"] if r["precision"] == "fp32")
    assert int4["weight_bytes"] < fp32["weight_bytes"] / 2
    # int4 rows compare with GenAI's int4, whose builder makes the LM head 4-bit too
    variants = json.loads((tmp_path / "work/lm-nano/onnx/manifest.json").read_text())["variants"]
    assert variants["gqa-int4"]["quantization"]["lm_head_bits"] == 4
    assert variants["gqa-int8"]["quantization"].get("lm_head_bits", 8) == 8
    assert [p["prompt"] for p in results["peers"]] == [16, 40]
    for p in results["peers"]:  # the same runtime and graph: the same tokens
        assert p["available"] and p["greedy_agreement"] == 8, p["note"]
        assert p["ttft_ms"] > 0 and p["edgezoo_ttft_ms"] > 0 and p["peak_rss_mb"] > 0
        assert p["ttft_speedup_vs_peer"] == pytest.approx(p["ttft_ms"] / p["edgezoo_ttft_ms"])
        fresh = p["edgezoo_fresh_decode_ms_p50"]
        assert p["speedup_vs_peer_fresh"] == pytest.approx(p["decode_ms_per_token_p50"] / fresh)
    table = bench.markdown(results)
    assert "| nano | edgezoo | fp32 | 40 |" in table
    assert "| nano | 1.1M | int4 | 2 | 16 |" in table and "random-init" in table
    bench.plot(results, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 10_000
    assert "new ÷ old" in bench.compare(results, json.loads(json.dumps(results)))


def test_power_law_fit_recovers_known_exponent():
    import numpy as np

    from benchmarks.sweep import fit_power_law, predict

    n = np.array([1e5, 4e5, 1.6e6, 6.4e6, 2.5e7])
    loss = 40 * n**-0.3 + 1.5
    fit = fit_power_law(n, loss)
    assert abs(fit["alpha"] - 0.3) < 0.02 and abs(fit["c"] - 1.5) < 0.05 and fit["r2"] > 0.999
    assert abs(predict(fit, 1e8) - (40 * 1e8**-0.3 + 1.5)) < 0.02


def test_pareto_front_drops_dominated_points():
    from benchmarks.sweep import pareto

    bench = {
        "runs": [
            {"size": s, "precision": p, "batch": 1, "decode_ms_p50": ms}
            for s, p, ms in [
                ("a", "fp32", 1.0),
                ("a", "int4", 0.8),
                ("b", "fp32", 3.0),
                ("b", "int4", 2.0),
            ]
        ]
    }
    front = pareto(bench, {"a": 3.0, "b": 2.5})
    assert {(p["size"], p["precision"]) for p in front} == {("a", "int4"), ("b", "int4")}
