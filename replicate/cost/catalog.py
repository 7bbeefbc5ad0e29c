"""Hardware, dated prices and model shapes, read from budgets/ (and from an HF config.json).

The tables are data (budgets/*.yaml, every number with its source and date). They are read on
first use and cached, never at import time, so `import replicate.cost.catalog` costs nothing.

    hardware("a100-80gb").peak_flops            # 312e12
    usd_per_device_hour("a100-80gb", 2023)      # 5.12  (spot=True -> 1.56)
    api_price("text-davinci-003", 2023)         # ApiPrice(input_usd_per_m=20.0, output_usd_per_m=20.0, ...)
    model_shape("llama-7b").params              # 6_738_415_616, computed from the shape

Errors are UserErrors without a YAML path; the cost model adds the path (`finetune.hardware.gpu: ...`).
"""
from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from replicate import files
from replicate.errors import UserError


def budgets_dir() -> Path:
    """$REPLICATE_BUDGETS, else the budgets/ that ships with the program (checkout or wheel)."""
    env = os.environ.get("REPLICATE_BUDGETS")
    return Path(env) if env else files.shipped("budgets")


@functools.cache
def _table(name: str) -> dict:
    path = budgets_dir() / name
    if not path.is_file():
        raise UserError(f"{path}: missing budget table (set REPLICATE_BUDGETS to the budgets/ folder)")
    data = files.read_yaml(path, "missing budget table", fast=True)
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping")
    return data


def _known(keys) -> str:
    return ", ".join(sorted(keys))


# ---------------------------------------------------------------------------------------------
# Hardware


@dataclass(frozen=True)
class Device:
    key: str
    name: str
    peak_bf16_tflops: float
    memory_gb: float
    hbm_gb_per_s: float
    link_gb_per_s: float
    inter_node_gb_per_s: float
    host_link_gb_per_s: float
    gpus_per_node: int
    defaults: dict = field(default_factory=dict)  # per-device efficiencies (CPU), see hardware.yaml
    sm_count: int = 0  # streaming multiprocessors (GEMM wave quantisation); 0 = not a GPU
    peak_fp32_tflops: float | None = None  # CPUs: the fp32 peak, for a processor without native bf16
    defaults_fp32: dict = field(default_factory=dict)  # CPUs: efficiencies measured computing in fp32
    dtype: str = "bfloat16"  # what the stage computes in on this device (in_precision)

    def in_precision(self, dtype: str) -> Device:
        """This device computing in `dtype`. A CPU entry that knows its fp32 speed (peak_fp32_tflops,
        defaults_fp32) swaps them in for float32; a GPU computes in bf16 whatever is asked."""
        if dtype != "float32" or self.peak_fp32_tflops is None:
            return self
        return replace(self, dtype="float32", defaults={**self.defaults, **self.defaults_fp32})

    @property
    def bytes_per_value(self) -> float:
        """Bytes of one weight or KV-cache value as the engine holds it: 2 in bf16, 4 in fp32."""
        return 4.0 if self.dtype == "float32" else 2.0

    @property
    def peak_flops(self) -> float:
        if self.dtype == "float32" and self.peak_fp32_tflops is not None:
            return self.peak_fp32_tflops * 1e12
        return self.peak_bf16_tflops * 1e12

    @property
    def memory_bytes(self) -> float:
        return self.memory_gb * 1e9

    @property
    def hbm_bytes_per_s(self) -> float:
        return self.hbm_gb_per_s * 1e9


def hardware_keys() -> list[str]:
    return sorted(_table("hardware.yaml"))


@functools.cache
def hardware(key: str) -> Device:
    table = _table("hardware.yaml")
    if key not in table:
        raise UserError(f"unknown GPU {key!r} (known: {_known(table)})")
    e = table[key]
    return Device(
        key=key,
        name=e["name"],
        peak_bf16_tflops=float(e["peak_bf16_tflops"]),
        memory_gb=float(e["memory_gb"]),
        hbm_gb_per_s=float(e["hbm_gb_per_s"]),
        link_gb_per_s=float(e["link_gb_per_s"]),
        inter_node_gb_per_s=float(e["inter_node_gb_per_s"]),
        host_link_gb_per_s=float(e["host_link_gb_per_s"]),
        gpus_per_node=int(e["gpus_per_node"]),
        defaults=dict(e.get("defaults") or {}),
        sm_count=int(e.get("sm_count") or 0),
        peak_fp32_tflops=float(e["peak_fp32_tflops"]) if e.get("peak_fp32_tflops") else None,
        defaults_fp32=dict(e.get("defaults_fp32") or {}),
    )


# How torch names a CUDA device -> the catalog key (checked in order: "A100-SXM4-80GB" before "A100").
DETECTED = (("H200", "h200"), ("H100 PCIE", "h100-pcie"), ("H100", "h100-sxm"), ("A100-SXM4-40GB", "a100-40gb"),
            ("A100-PCIE-40GB", "a100-40gb"), ("A100", "a100-80gb"), ("L4", "l4"), ("A10G", "a10g"), ("A10", "a10"),
            ("RTX 4090", "rtx-4090"), ("V100", "v100"))


def detected_key(device: str) -> str | None:
    """The catalog key of a device as the meter names it (`meter.device_name()`): `cpu: ...` ->
    cpu, `NVIDIA H200` -> h200; None for a device the catalog does not list."""
    if device.startswith("cpu"):
        return "cpu"
    import re

    up = device.upper()  # a whole token: "L4" must not match an L40S
    return next((key for pattern, key in DETECTED if re.search(rf"(?<![A-Z0-9]){re.escape(pattern)}(?![A-Z0-9])", up)),
                None)


def priced_device(declared: str, device: str, year: int, spot: bool = False) -> tuple[str, float, str | None]:
    """(key priced, dollars per device-hour, warning or None): a run is priced as the device it
    really ran on. When that differs from the YAML's `gpu`, the warning says so in one line; a
    device the catalog does not know is priced as declared, and the warning says that too."""
    key = detected_key(device)
    if key is None or key == declared:
        note = None if key == declared else (f"hardware.gpu is {declared!r} but this runs on {device!r}, which "
                                             f"budgets/hardware.yaml does not list: priced as {declared}")
        return declared, usd_per_device_hour(declared, year, spot), note
    try:
        usd = usd_per_device_hour(key, year, spot)
    except UserError:
        return declared, usd_per_device_hour(declared, year, spot), (
            f"hardware.gpu is {declared!r} but this runs on {device!r} ({key}), which has no {year} price: "
            f"priced as {declared}")
    return key, usd, (f"hardware.gpu is {declared!r} but this runs on {device!r}: priced as {key} "
                      f"(${usd:g}/device-hour, {year}); set hardware.gpu: {key} to estimate it too")


# ---------------------------------------------------------------------------------------------
# Prices


@functools.cache
def price_years() -> tuple[int, ...]:
    years = []
    for p in budgets_dir().glob("prices-*.yaml"):
        try:
            years.append(int(p.stem.split("-", 1)[1]))
        except ValueError:
            continue
    return tuple(sorted(years))


def newest_price_year() -> int:
    """The newest dated price table: what `--prices` means when neither it nor a pipeline names a year."""
    years = price_years()
    if not years:
        raise UserError(f"{budgets_dir()}: no prices-YEAR.yaml table (set REPLICATE_BUDGETS to the budgets/ folder)")
    return years[-1]


def prices(year: int) -> dict:
    if year not in price_years():
        raise UserError(f"no price table for {year} (known: {', '.join(map(str, price_years()))})")
    return _table(f"prices-{year}.yaml")


def usd_per_device_hour(gpu_key: str, year: int, spot: bool = False) -> float:
    """Rental price of one device for one hour in `year` (on-demand, or spot)."""
    hardware(gpu_key)  # unknown GPU -> its own clearer error
    table = prices(year).get("gpu", {})
    if gpu_key not in table:
        raise UserError(f"no {year} price for GPU {gpu_key!r} (priced that year: {_known(table)})")
    return float(table[gpu_key]["spot" if spot else "on_demand"])


@dataclass(frozen=True)
class ApiPrice:
    model: str  # the model actually priced (a retired model is priced as its replacement)
    input_usd_per_m: float
    output_usd_per_m: float
    note: str = ""

    def usd(self, prompt_tokens: float, output_tokens: float) -> float:
        return (prompt_tokens * self.input_usd_per_m + output_tokens * self.output_usd_per_m) / 1e6


def _api_key(model: str) -> str:
    return model.strip().lower()


def has_api_price(model: str, year: int) -> bool:
    try:
        api_price(model, year)
        return True
    except UserError:
        return False


def api_price(model: str, year: int) -> ApiPrice:
    """USD per 1M input/output tokens of a hosted model in `year`.

    A model retired before `year` (e.g. text-davinci-003, retired 2024-01-04) is priced as the
    replacement its last table names, and the note says so.
    """
    key = _api_key(model)
    table = prices(year).get("api", {})
    if key in table:
        e = table[key]
        return ApiPrice(key, float(e["input"]), float(e["output"]))
    for y in reversed(price_years()):  # newest table that still lists it
        e = prices(y).get("api", {}).get(key)
        if e and e.get("replacement") and y < year:
            repl = _api_key(e["replacement"])
            if repl in table:
                r = table[repl]
                note = f"{key} retired {e.get('retired', 'after ' + str(y))}; priced as {repl}"
                return ApiPrice(repl, float(r["input"]), float(r["output"]), note)
    raise UserError(f"no {year} API price for {model!r} (priced that year: {_known(table)})")


def api_usd(model: str, year: int, prompt_tokens: float, output_tokens: float) -> float:
    """Dollars of API tokens; 0 for a model without a price that year (a local OpenAI-compatible server)."""
    if not has_api_price(model, year):
        return 0.0
    return api_price(model, year).usd(prompt_tokens, output_tokens)


# ---------------------------------------------------------------------------------------------
# Model shapes


@dataclass(frozen=True)
class ModelShape:
    name: str
    vocab: int
    d_model: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    d_ff: int
    mlp: str = "gated"  # gated (3 matrices) | plain (2 matrices)
    tied: bool = False
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    norm: str = "rms"  # rms (d weights) | layer (d weights + d biases)
    norms_per_layer: int = 2
    qk_norm: bool = False
    lm_head_bias: bool = False
    context: int = 2048
    published_params: int | None = None

    @functools.cached_property
    def params(self) -> int:
        return count_params(self)

    @property
    def attn_dim(self) -> int:
        """Width of the attention (heads x head_dim); differs from d_model for e.g. Gemma."""
        return self.heads * self.head_dim

    def kv_bytes_per_token(self, bytes_per_value: float = 2.0) -> float:
        # K and V, every layer, kv_heads x head_dim values each (GQA shares them across heads).
        return 2 * self.layers * self.kv_heads * self.head_dim * bytes_per_value


def count_params(s: ModelShape) -> int:
    """Parameters from the shape. E.g. llama-7b: 2 x 32000 x 4096 embeddings + 32 layers x
    (4 x 4096^2 attention + 3 x 4096 x 11008 MLP + 2 x 4096 norms) + 4096 = 6,738,415,616."""
    d, hd = s.d_model, s.head_dim
    norm = d if s.norm == "rms" else 2 * d
    attn = d * s.heads * hd + 2 * d * s.kv_heads * hd + s.heads * hd * d
    if s.qkv_bias:
        attn += s.heads * hd + 2 * s.kv_heads * hd
    if s.out_bias:
        attn += d
    mlp = (3 if s.mlp == "gated" else 2) * d * s.d_ff
    if s.mlp_bias:
        mlp += s.d_ff + d
    layer = attn + mlp + s.norms_per_layer * norm + (2 * hd if s.qk_norm else 0)
    embed = s.vocab * d * (1 if s.tied else 2) + (s.vocab if s.lm_head_bias else 0)
    return embed + s.layers * layer + norm


@functools.cache
def _shape_index() -> dict[str, str]:
    """lower-case name or alias -> catalog name."""
    index = {}
    for name, e in _table("models.yaml").items():
        index[name.lower()] = name
        for alias in e.get("aliases", []) or []:
            index[str(alias).lower()] = name
    return index


def model_names() -> list[str]:
    return sorted(_table("models.yaml"))


def _from_catalog(name: str) -> ModelShape:
    e = dict(_table("models.yaml")[name])
    for k in ("aliases", "source"):
        e.pop(k, None)
    e.setdefault("head_dim", e["d_model"] // e["heads"])
    return ModelShape(name=name, **e)


def shape_from_hf_config(cfg: dict, name: str) -> ModelShape:
    """ModelShape from an HF config.json. Family quirks are visible here, one branch each."""
    if "text_config" in cfg:  # multimodal wrappers (gemma3) keep the LM in text_config
        cfg = {**cfg["text_config"], "model_type": cfg["text_config"].get("model_type", cfg.get("model_type"))}
    mt = str(cfg.get("model_type", ""))
    if mt == "gptj":
        d = cfg["n_embd"]
        return ModelShape(name, cfg["vocab_size"], d, cfg["n_layer"], cfg["n_head"], cfg["n_head"], d // cfg["n_head"],
                          cfg.get("n_inner") or 4 * d, mlp="plain", mlp_bias=True, norm="layer", norms_per_layer=1,
                          lm_head_bias=True, context=cfg.get("n_positions", 2048))
    try:
        d, heads = cfg["hidden_size"], cfg["num_attention_heads"]
        common = {"vocab": cfg["vocab_size"], "d_model": d, "layers": cfg["num_hidden_layers"], "heads": heads,
                      "kv_heads": cfg.get("num_key_value_heads") or heads,
                      "head_dim": cfg.get("head_dim") or d // heads, "d_ff": cfg["intermediate_size"],
                      "tied": bool(cfg.get("tie_word_embeddings", False)),
                      "context": cfg.get("max_position_embeddings", 2048)}
    except KeyError as e:
        raise UserError(f"{name}: config.json lacks {e.args[0]!r}; cannot derive the model shape") from None
    if mt == "gpt_neox":
        return ModelShape(name, mlp="plain", qkv_bias=True, out_bias=True, mlp_bias=True, norm="layer", **common)
    if mt in ("qwen2", "qwen2_moe"):
        return ModelShape(name, qkv_bias=True, **common)
    if mt in ("gemma2", "gemma3_text", "gemma3"):
        return ModelShape(name, norms_per_layer=4, qk_norm=(mt != "gemma2"), **common)
    if mt == "qwen3":
        return ModelShape(name, qk_norm=True, **common)
    # llama, mistral, gemma, phi3, smollm, ...: gated MLP, RMSNorm, no biases
    return ModelShape(name, qkv_bias=bool(cfg.get("attention_bias", False)), **common)


def _hf_cache_config(repo_id: str) -> Path | None:
    """config.json of a hub model already in the local HF cache (never touches the network)."""
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME") or os.path.join(Path.home(), ".cache", "huggingface"), "hub")
    snaps = Path(hub) / ("models--" + repo_id.replace("/", "--")) / "snapshots"
    found = sorted(snaps.glob("*/config.json")) if snaps.is_dir() else []
    return found[-1] if found else None


@functools.cache
def model_shape(ref: str) -> ModelShape:
    """Shape of a model reference: catalog name or alias, packaged:NAME, HF folder, or HF id in the cache."""
    name = ref.removeprefix("packaged:")
    hit = _shape_index().get(name.lower())
    if hit:
        return _from_catalog(hit)
    path = Path(ref).expanduser()
    config = path / "config.json" if path.is_dir() else None
    if config is None and ref.count("/") == 1 and not ref.startswith((".", "/")):
        config = _hf_cache_config(ref)
    if config is None or not config.is_file():
        raise UserError(f"unknown model {ref!r} (known: {_known(_table('models.yaml'))}; "
                        "or give an HF folder with config.json)")
    return shape_from_hf_config(json.loads(config.read_text()), ref)
