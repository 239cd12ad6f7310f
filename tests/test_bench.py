"""The benchmark harness produces complete, consistent records (numbers are not asserted)."""

from __future__ import annotations

import json
import statistics

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
        peer_rounds=2,  # every peer row twice, round after round
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
    assert all(p["rounds"] == 2 and len(p["speedup_vs_peer_rounds"]) == 2 for p in results["peers"])
    for p in results["peers"]:  # the same runtime and graph: the same tokens
        assert p["available"] and p["greedy_agreement"] == 8, p["note"]
        assert p["ttft_ms"] > 0 and p["edgezoo_ttft_ms"] > 0 and p["peak_rss_mb"] > 0
        for ratio in ("ttft_speedup_vs_peer", "speedup_vs_peer_fresh", "speedup_vs_peer"):
            # paired per round: the median of the rounds' ratios, not a ratio of medians
            assert p[ratio] == pytest.approx(statistics.median(p[ratio + "_rounds"]))
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


def test_peer_rounds_report_medians_of_paired_ratios_and_their_spread():
    """Three rounds of one peer row: each time is the median of its rounds, each ratio the
    median of the per-round ratios (not the ratio of the medians), shown with its range."""
    rounds = [
        {"peer": "ort-genai", "precision": "int4", "size": "small", "prompt": 32,
         "available": True, "note": "", "decode_ms_per_token_p50": peer,
         "edgezoo_decode_ms_p50": ours, "edgezoo_fresh_decode_ms_p50": ours,
         "speedup_vs_peer": peer / ours, "speedup_vs_peer_fresh": peer / ours,
         "ttft_ms": 10.0, "edgezoo_ttft_ms": 8.0, "ttft_speedup_vs_peer": 1.25,
         "peak_rss_mb": 200.0, "edgezoo_peak_rss_mb": rss, "greedy_agreement": agree}
        for peer, ours, rss, agree in [(4.0, 2.0, 180.0, 128), (2.0, 1.0, 190.0, 127), (3.0, 5.0, 170.0, 128)]
    ]  # fmt: skip
    row = bench.median_of_rounds(rounds)
    assert row["decode_ms_per_token_p50"] == 3.0 and row["edgezoo_decode_ms_p50"] == 2.0
    assert row["speedup_vs_peer"] == 2.0  # median of 2.0, 2.0, 0.6, where 3.0 / 2.0 is 1.5
    assert row["speedup_vs_peer_rounds"] == [2.0, 2.0, 0.6]
    assert row["edgezoo_peak_rss_mb"] == 180.0 and row["greedy_agreement"] == 127
    assert row["rounds"] == 3 and bench.median_of_rounds(rounds[:1]) is rounds[0]
    assert bench._ratio(row, "speedup_vs_peer") == "2.00× (0.60–2.00)"
    results = {
        "machine": {"cpu": "x", "cores": 2, "memory_gb": 1, "onnxruntime": "1", "torch": "2",
                    "date": "today"},
        "threads": 2, "copy_bandwidth_gbs": 30.0, "weights": "random", "runs": [],
        "peers": [row], "peer_rounds": 3,
    }  # fmt: skip
    table = bench.markdown(results)
    assert "Medians of 3 interleaved rounds" in table
    assert "| small | ort-genai | int4 | 32 | 3.00 | 2.00 | 2.00× (0.60–2.00) |" in table
