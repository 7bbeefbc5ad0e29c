"""budgets/ tables and model shapes: every number sourced, parameter counts computed from shapes
match the published counts, prices per year, lazy loading."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from replicate.cost import catalog
from replicate.errors import UserError

NUMERIC = ("peak_bf16_tflops", "memory_gb", "hbm_gb_per_s", "link_gb_per_s", "inter_node_gb_per_s",
           "host_link_gb_per_s", "gpus_per_node")


def test_param_counts_from_shape_match_published():
    # Exact for every model except GPT-J, whose README count (mesh-transformer-jax) is 0.04 % above HF's.
    for name in catalog.model_names():
        s = catalog.model_shape(name)
        rel = abs(s.params / s.published_params - 1)
        assert rel < (5e-4 if name == "gpt-j-6b" else 1e-12), (name, s.params, s.published_params)
    assert catalog.model_shape("llama-7b").params == 6_738_415_616
    assert catalog.model_shape("qwen2.5-32b").params == 32_763_876_352


def test_packaged_models_match_their_gguf_counts():
    from replicate.weights import PACKAGED

    for name, pm in PACKAGED.items():
        assert catalog.model_shape(f"packaged:{name}").params == pm.params


HF_CONFIGS = {
    "llama-7b": {"model_type": "llama", "vocab_size": 32000, "hidden_size": 4096, "num_hidden_layers": 32,
                 "num_attention_heads": 32, "intermediate_size": 11008, "tie_word_embeddings": False},
    "qwen2.5-0.5b": {"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896, "num_hidden_layers": 24,
                     "num_attention_heads": 14, "num_key_value_heads": 2, "intermediate_size": 4864,
                     "tie_word_embeddings": True},
    "gpt-j-6b": {"model_type": "gptj", "vocab_size": 50400, "n_embd": 4096, "n_layer": 28, "n_head": 16,
                 "n_inner": None, "n_positions": 2048},
    "pythia-410m": {"model_type": "gpt_neox", "vocab_size": 50304, "hidden_size": 1024, "num_hidden_layers": 24,
                    "num_attention_heads": 16, "intermediate_size": 4096, "tie_word_embeddings": False},
    "gemma-3-270m": {"model_type": "gemma3_text", "vocab_size": 262144, "hidden_size": 640, "num_hidden_layers": 18,
                     "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256, "intermediate_size": 2048,
                     "tie_word_embeddings": True},
}


@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_shape_from_hf_config_folder(tmp_path, name):
    (tmp_path / "config.json").write_text(json.dumps(HF_CONFIGS[name]))
    catalog.model_shape.cache_clear()
    shape = catalog.model_shape(str(tmp_path))
    assert shape.params == catalog.model_shape(name).params


def test_unknown_model_and_bad_config(tmp_path):
    with pytest.raises(UserError, match=r"unknown model 'no-such-model' \(known: .*llama-7b"):
        catalog.model_shape("no-such-model")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    with pytest.raises(UserError, match="lacks 'num_attention_heads'"):
        catalog.model_shape(str(tmp_path))


def test_hardware_table_has_every_field_and_a_source():
    table = yaml.safe_load((catalog.budgets_dir() / "hardware.yaml").read_text())
    for key in ("a100-40gb", "a100-80gb", "h100-sxm", "h100-pcie", "h200", "l4", "a10g", "rtx-4090", "v100", "cpu"):
        entry = table[key]
        for f in NUMERIC:
            assert float(entry[f]) > 0, (key, f)
            assert entry["sources"][f].startswith("["), (key, f)  # a status tag and a source
        assert entry["date"]
    h100 = catalog.hardware("h100-sxm")
    assert h100.peak_flops == 989e12 and h100.hbm_bytes_per_s == 3350e9  # decimal SI
    with pytest.raises(UserError, match=r"unknown GPU 'a100' \(known: a10, a100-40gb"):
        catalog.hardware("a100")


def test_price_tables_are_sourced_and_consistent():
    years = catalog.price_years()
    assert {2023, 2026} <= set(years)
    hw = set(catalog.hardware_keys())
    for y in years:
        t = catalog.prices(y)
        assert t["year"] == y and t["date"]
        assert "cpu" in t["gpu"], f"{y}: the dev machine needs a price"
        for gpu, e in t["gpu"].items():
            assert gpu in hw
            assert 0 < e["spot"] <= e["on_demand"], (y, gpu)
            assert e["source"].startswith("[") and e["spot_source"].startswith("["), (y, gpu)
        for model, e in t["api"].items():
            assert e["input"] >= 0 and e["output"] >= 0 and e["source"].startswith("["), (y, model)
    assert catalog.usd_per_device_hour("a100-80gb", 2023) == 5.12
    assert catalog.usd_per_device_hour("a100-80gb", 2023, spot=True) == 1.56


def test_price_lookup_errors_and_retired_models():
    with pytest.raises(UserError, match=r"no price table for 1999 \(known: 2023"):
        catalog.prices(1999)
    with pytest.raises(UserError, match="no 2023 price for GPU 'h200'"):
        catalog.usd_per_device_hour("h200", 2023)
    p = catalog.api_price("text-davinci-003", 2023)
    assert (p.input_usd_per_m, p.output_usd_per_m) == (20.0, 20.0)
    assert p.usd(1e6, 1e6) == pytest.approx(40.0)
    later = catalog.api_price("text-davinci-003", 2026)  # retired 2024-01: priced as its replacement
    assert later.model == "gpt-3.5-turbo-instruct" and "retired" in later.note
    with pytest.raises(UserError, match="no 2023 API price for 'gpt-4o-mini'"):
        catalog.api_price("gpt-4o-mini", 2023)


def test_tables_load_lazily_and_without_torch():
    code = ("import sys; import replicate.cost.catalog as c, replicate.cost.estimate, replicate.cost.plan; "
            "assert c._table.cache_info().currsize == 0, 'tables read at import'; "
            "assert 'torch' not in sys.modules; c.hardware('cpu'); assert c._table.cache_info().currsize == 1")
    subprocess.run([sys.executable, "-c", code], check=True)
