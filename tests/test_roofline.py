"""The roofline measurement: bytes per token from the config, the cost curve and its reader, the script end to end.

Behaviour only, never wall time: the machine running the tests may be busy.
"""

import json
import runpy
from pathlib import Path

import pytest
import torch
import transformers

import space
from space.bench import roofline
from space.bench.roofline import CostCurve, bytes_per_token, cost_curve, load_cost_curve, parse_rows
from space.io import write_json
from space.testing import tiny_llama, tiny_text_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def hand_sum(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, vocab=96, context=0, tied=False,
             element=4, head_element=4):
    """What one token reads, counted by hand from tiny_llama's config."""
    head_dim = hidden // heads
    attention = 2 * hidden * hidden + 2 * hidden * kv_heads * head_dim  # q, o; k, v
    mlp = 3 * hidden * intermediate  # gate, up, down
    body = layers * (attention + mlp + 2 * hidden) + hidden  # + two norms per layer, the final norm
    row = 0 if tied else hidden * element  # one embedding row; a tied one is the lm_head itself
    weights = body * element + vocab * hidden * head_element + row
    kv = 2 * layers * kv_heads * head_dim * context * element
    return weights, kv


@pytest.mark.parametrize("tied", [False, True])
def test_bytes_per_token_is_the_hand_sum_from_the_config(tied):
    model = tiny_llama(tie_word_embeddings=tied)
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
    read = bytes_per_token(model, context_tokens=10)
    weights, kv = hand_sum(context=10, tied=tied)
    assert read["tied"] == tied
    assert (read["weights_bytes"], read["kv_bytes"], read["total"]) == (weights, kv, weights + kv)


def test_bytes_per_token_counts_the_fp32_head_that_half_precision_logits_read():
    model = tiny_llama().to(torch.bfloat16)
    read = bytes_per_token(model, context_tokens=4)
    weights, kv = hand_sum(context=4, element=2, head_element=4)
    assert (read["weights_bytes"], read["kv_bytes"], read["head_bytes"]) == (weights, kv, 96 * 64 * 4)


def test_cost_curve_times_each_row_count_and_restores_the_cache(monkeypatch):
    caches = []

    class Recording(roofline.CompactCache):
        @classmethod
        def for_model(cls, model, capacity):
            caches.append(super().for_model(model, capacity))
            return caches[-1]

    monkeypatch.setattr(roofline, "CompactCache", Recording)
    model = tiny_llama(seed=1)
    curve = cost_curve(model, rows=[5, 1, 3], context_tokens=8, repeats=2)
    assert curve["rows"] == [1, 3, 5] and curve["context_tokens"] == 8
    assert len(curve["ms"]) == 3 and all(ms > 0 for ms in curve["ms"])
    [cache] = caches
    assert cache.length == 8  # every step cut the cache back to the prefilled context
    fresh, _ = roofline._prefilled(roofline.Model(model), 8, 5, seed=0)
    for used, clean in zip(cache.layers, fresh.layers):  # and the prefix it kept is untouched
        assert torch.equal(used.key_buffer[:, :, :8], clean.key_buffer[:, :, :8])


def test_step_times_and_profile_on_a_tiny_model():
    model = tiny_llama(seed=2, mask_num=2)
    prompt = torch.tensor([[5, 6, 7, 8]])
    steps = roofline.step_times(model, prompt, ("ar", "space"), max_new_tokens=6, repeats=1)
    assert steps["ar"]["steps"] == 6 and steps["ar"]["tokens_per_step"] == 1.0
    assert steps["space"]["steps"] <= 6 and all(s["ms_per_step"] > 0 for s in steps.values())
    ops = roofline.profile_step(model, context_tokens=8, steps=2, top=50)
    assert ops and all(op["ms_per_step"] >= 0 and 0 <= op["share"] <= 1 for op in ops)
    assert sum(op["share"] for op in ops) == pytest.approx(1.0, abs=1e-6)  # top=50 keeps every op here
    assert any("mm" in op["name"] or "linear" in op["name"] for op in ops)


def test_measure_bandwidth_is_positive():
    assert roofline.measure_bandwidth("cpu", megabytes=4, repeats=2) > 0


def test_cost_curve_interpolates_linearly_and_extrapolates_from_the_end_points():
    curve = CostCurve(rows=[2, 4, 8], measured_ms=[1.0, 2.0, 2.5], context_tokens=16)
    assert [curve.ms(n) for n in (2, 4, 8)] == [1.0, 2.0, 2.5]  # exact at measured points
    assert curve.ms(3) == pytest.approx(1.5) and curve.ms(6) == pytest.approx(2.25)
    assert curve.ms(16) == pytest.approx(2.5 + 0.125 * 8)  # above: the slope of the last two points
    assert curve.ms(1) == pytest.approx(0.5)  # below: the slope of the first two
    assert CostCurve([4], [3.0], 16).ms(9) == 3.0


def test_cost_curve_round_trips_through_the_report_and_names_the_command_when_missing(tmp_path):
    measured = cost_curve(tiny_llama(), rows=[1, 2, 4], context_tokens=4, repeats=1)
    path = tmp_path / "roofline.json"
    write_json(path, {"cost_curves": {roofline.curve_key("cpu", "fp32"): measured}})
    curve = load_cost_curve(path, torch.device("cpu"), torch.float32)
    assert curve.rows == [1, 2, 4] and curve.context_tokens == 4
    assert [curve.ms(n) for n in (1, 2, 4)] == measured["ms"]
    assert curve.ms(3) == pytest.approx((measured["ms"][1] + measured["ms"][2]) / 2)
    with pytest.raises(space.SpaceError, match=r"no cost curve for cuda/bfloat16 \(it has \['cpu/float32'\]\).*"
                                               r"bench_roofline.py --device cuda --dtypes bfloat16"):
        load_cost_curve(path, "cuda:0", "bf16")
    with pytest.raises(space.SpaceError, match="no roofline report at .*bench_roofline.py --device cpu"):
        load_cost_curve(tmp_path / "missing.json", "cpu", "float32")
    (tmp_path / "other.json").write_text("[]")
    with pytest.raises(space.SpaceError, match="is not a roofline report"):
        load_cost_curve(tmp_path / "other.json", "cpu", "float32")


def test_rows_flag():
    assert parse_rows("1-4") == [1, 2, 3, 4] and parse_rows("8,1,2-3") == [1, 2, 3, 8]
    for bad in ("0-3", "a", "", "4-2"):
        with pytest.raises(space.SpaceError, match="--rows"):
            parse_rows(bad)


@pytest.mark.parametrize("flags, message", [(["--rows", "x"], "--rows"), (["--dtypes", "int8"], "unknown dtype"),
                                            (["--context_tokens", "0"], "--context_tokens")])
def test_bad_flags_fail_before_the_model_is_loaded(no_model_loading, tmp_path, flags, message):
    args = roofline.parse_roofline_args([*flags, "--output", str(tmp_path / "r.json")])
    with pytest.raises(space.SpaceError, match=message):
        roofline.measure_roofline(args, command="test")


def test_bench_roofline_script_end_to_end(tmp_path, monkeypatch, capsys):
    model_dir = tmp_path / "model"
    tokenizer = tiny_text_tokenizer()
    tiny_llama(seed=3, vocab_size=len(tokenizer) + 1, mask_num=2).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    real = roofline.measure_bandwidth
    monkeypatch.setattr(roofline, "measure_bandwidth", lambda device, repeats: real(device, 4, 2))  # small tensor
    output = tmp_path / "roofline.json"
    main = runpy.run_path(str(ROOT / "scripts" / "bench_roofline.py"))["main"]
    written = main(["--model", str(model_dir), "--dtypes", "float32,bf16", "--rows", "1-3,6", "--context_tokens",
                    "8", "--repeats", "1", "--max_new_tokens", "4", "--output", str(output)])
    assert json.loads(output.read_text()) == written
    assert {"command", "provenance", "bandwidth_gb_s", "rows", "dtypes", "cost_curves"} <= set(written)
    assert set(written["provenance"]) == {"versions", "device", "threads", "date", "commit"}
    assert written["provenance"]["versions"]["transformers"] == transformers.__version__
    assert written["command"].startswith("python scripts/bench_roofline.py --model")
    assert [row["dtype"] for row in written["rows"]] == ["float32", "bfloat16"]
    for row in written["rows"]:
        assert row["ar_vs_limit"] == pytest.approx(row["ar_ms_per_step"] / row["limit_ms"])
        assert row["space_vs_ar"] == pytest.approx(row["space_ms_per_step"] / row["ar_ms_per_step"])
        plain = written["dtypes"][row["dtype"]]["plain_against_default_ar"]  # both loads timed in the same run
        assert row["plain_ar_ms_per_step"] == plain["plain"] > 0 and row["plain_vs_ar"] == pytest.approx(
            plain["plain"] / plain["default"])
    assert set(written["cost_curves"]) == {"cpu/float32", "cpu/bfloat16"}
    assert load_cost_curve(output, "cpu", "bfloat16").rows == [1, 2, 3, 6]
    assert written["dtypes"]["float32"]["profile"]
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 2  # header, rule, one row per dtype
    assert [line.split(" | ")[0] for line in table[2:]] == ["| float32", "| bfloat16"]


def test_stored_curves_price_the_tree_on_their_device_and_dtype(monkeypatch, tmp_path):
    """`--store_curves true` merges the measured curves into the package file, and `device_curve` prices rows with
    the stored curve of that device and dtype (others keep the defaults)."""
    from space.decoding import row_cost

    monkeypatch.setattr(row_cost, "shipped", lambda *parts: tmp_path.joinpath(*parts))
    monkeypatch.setattr(roofline, "shipped", lambda *parts: tmp_path.joinpath(*parts))
    default = row_cost.device_curve(torch.device("cpu"))
    curve = dict(rows=[1, 8, 64], ms=[2.0, 2.0, 8.0], context_tokens=16)
    path = roofline.store_cost_curves({"cpu/bfloat16": curve}, command="test")
    assert json.loads(path.read_text())["cpu/bfloat16"]["ms"] == [2.0, 2.0, 8.0]
    stored = row_cost.device_curve(torch.device("cpu"), torch.bfloat16)
    assert stored.price(8) == 1.0 and stored.price(64) == 4.0
    assert row_cost.device_curve(torch.device("cpu")).measured_ms == default.measured_ms  # fp32: the default
    roofline.store_cost_curves({"cpu/float32": curve}, command="test")  # merged: the bf16 curve stays
    assert set(json.loads(path.read_text())) == {"cpu/bfloat16", "cpu/float32"}
