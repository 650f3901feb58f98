"""The cost model's arithmetic and its profiles, against values worked by hand."""

from __future__ import annotations

import pytest

from lamps.model.cost import PROFILES, CostModel, get_profile, kv_capacity


def test_gptj_profile_numbers_come_from_the_model_shape_and_the_reference_fit() -> None:
    gptj = get_profile("gptj-6b-a100")
    assert gptj.kv_bytes_per_token == 458_752  # 2 (K, V) x 2 bytes x 28 layers x 4096
    assert gptj.ms_per_token == 0.0408
    assert gptj.ms_per_iteration == 16.92
    assert gptj.saturation_tokens == 384
    # One token's KV streamed from 2.039 TB/s of HBM.
    assert gptj.ms_per_context_token == pytest.approx(458_752 / 2.039e12 * 1e3)
    # 0.9 x 80 GB - 2 GB reserve - 12.1 GB weights, in tokens: the 130k of PAPER.md section 5.
    assert gptj.kv_capacity_tokens == (72e9 - 2e9 - 12.1e9) // 458_752
    assert 120_000 < gptj.kv_capacity_tokens < 150_000


def test_vicuna_profile_splits_kv_over_two_gpus() -> None:
    vicuna = get_profile("vicuna-13b-a100x2")
    assert vicuna.kv_bytes_per_token == 819_200  # 2 x 2 x 40 x 5120
    assert vicuna.ms_per_token == 0.0279
    assert vicuna.ms_per_iteration == 15.4
    assert vicuna.ms_per_context_token == pytest.approx(819_200 / 2 / 2.039e12 * 1e3)
    assert vicuna.kv_capacity_tokens == (2 * (72e9 - 2e9) - 26e9) // 819_200
    assert vicuna.swap_bytes_per_second == 50e9


def test_iteration_time_is_linear_in_tokens_and_context() -> None:
    gptj = get_profile("gptj-6b-a100")
    b = gptj.ms_per_context_token
    assert gptj.iteration_s(0) == pytest.approx(0.01692)
    assert gptj.iteration_s(100, 10_000) == pytest.approx((4.08 + 10_000 * b + 16.92) / 1e3)
    assert gptj.iteration_s(384) == pytest.approx((0.0408 * 384 + 16.92) / 1e3)


def test_swap_time_is_bytes_over_bandwidth() -> None:
    gptj = get_profile("gptj-6b-a100")
    assert gptj.swap_s(1000) == pytest.approx(458_752_000 / 25e9)
    assert gptj.cpu_swap_tokens == 32e9 // 458_752


def test_kv_capacity_and_blocks() -> None:
    assert kv_capacity(80e9, 12.1e9, 458_752) == int((72e9 - 2e9 - 12.1e9) // 458_752)
    small = get_profile("gptj-6b-a100").with_kv_tokens(1000)
    assert small.kv_capacity_tokens == 1000
    assert small.kv_capacity_blocks == 62
    assert small.blocks_for(17) == 2


def test_unknown_profile_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="gptj-6b-a100") as error:
        get_profile("a100-gpt5")
    assert "a100-gpt5" in str(error.value)


def test_invalid_cost_model_is_refused() -> None:
    base = PROFILES["gptj-6b-a100"]
    with pytest.raises(ValueError, match="less than one block"):
        base.with_kv_tokens(8)
    with pytest.raises(ValueError, match="kv_bytes_per_token must be positive"):
        CostModel(
            name="broken",
            description="",
            kv_bytes_per_token=0,
            kv_capacity_tokens=1000,
            block_size=16,
            ms_per_token=0.1,
            ms_per_context_token=0.0,
            ms_per_iteration=1.0,
            saturation_tokens=384,
            swap_bytes_per_second=1e9,
            cpu_swap_bytes=1,
        )
