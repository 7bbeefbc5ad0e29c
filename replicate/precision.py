"""Which floating-point precision to compute in: the one decision every stage follows on a CPU.

A processor with native bf16 (AVX-512 BF16 or AMX) multiplies bf16 matrices ~3.5x faster than
fp32; one without it (AVX2 only) emulates bf16 and is ~50-100x SLOWER than fp32. So on a CPU the
dtype is measured, not assumed:

    cpu_precision()   a short probe (one thread: a 512x576 by 576x1536 matmul, the packaged
                      teacher's MLP at 512 tokens, in fp32 and in bf16); bf16 only when it is the
                      faster of the two. Cached per machine in ~/.cache/replicate/precision.json,
                      keyed by the processor, its flags, torch and the ISA limits in the environment.
    resolve(asked)    a setting of the user's ("bfloat16", "float32", ...) always wins; "auto"/None
                      takes the probe on a CPU, bf16 (else fp16) on a CUDA GPU.

Why a probe and not the CPU's feature flags: the flags say what the silicon has, not what torch
and oneDNN will use. With ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 (how this project
emulates a processor without AVX-512) the flags still list avx512_bf16 while bf16 matmuls run at
0.8 GFLOP/s against 82 in fp32 (docs/benchmarks.md, "Precision"). `planned_dtype` (the cost
model's guess, which must not import torch) reads the cached probe and falls back to the flags.

Every stage prints the decision once and writes it to its ledger line (`precision`).
"""
from __future__ import annotations

import datetime as dt
import functools
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from replicate import files

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86; on Arm, `bf16` in the Features line
ISA_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "REPLICATE_CPU_DTYPE")
PROBE = (512, 576, 1536)  # m, k, n: 512 tokens through SmolLM2-135M's up-projection (576 -> 1536)
DTYPES = ("bfloat16", "float16", "float32")
_announced: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Precision:
    dtype: str  # "bfloat16" | "float32" | "float16" (torch's names)
    reason: str

    @property
    def bf16(self) -> bool:
        return self.dtype == "bfloat16"

    def as_ledger(self) -> dict:
        return {"dtype": self.dtype, "reason": self.reason}


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def flags_say_bf16(flags: set[str] | None = None) -> bool:
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in NATIVE_BF16_FLAGS) or (platform.machine() == "aarch64" and "bf16" in flags)


def _cache_path() -> Path:
    from replicate.weights import cache_dir

    return cache_dir() / "precision.json"


def machine_key() -> str:
    """What the probe's answer depends on (torch's version apart, stored in the entry): the
    processor, its vector and bf16 flags, and the ISA limits set in the environment."""
    from replicate.meter import cpu_name

    flags = sorted(f for f in cpu_flags() if "bf16" in f or f.startswith(("avx512f", "amx", "avx2")))
    env = ",".join(f"{k}={os.environ[k]}" for k in ISA_ENV[:2] if os.environ.get(k))
    return f"{cpu_name()} | {' '.join(flags)} | {env or 'no ISA limit'}"


def _cached() -> dict:
    try:
        cache = files.read_json(_cache_path(), "") if _cache_path().is_file() else {}
    except Exception:  # noqa: BLE001 - a damaged cache is only a cache: probe again
        return {}
    return cache if isinstance(cache, dict) else {}


def probe_gflops() -> dict[str, float]:
    """GFLOP/s of the probe matmul in fp32 and bf16, one thread, best of a few repeats."""
    import torch

    m, k, n = PROBE
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the per-core speed, whatever else the machine is doing
    try:
        gen = torch.Generator().manual_seed(0)
        a32, b32 = torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)
        out = {}
        for name in ("float32", "bfloat16"):
            a, b = a32.to(getattr(torch, name)), b32.to(getattr(torch, name))
            a @ b  # warm-up: oneDNN picks and caches its kernel
            best, deadline = float("inf"), time.perf_counter() + 0.25
            while True:  # repeats until 0.25 s passed (one call is enough when bf16 is emulated)
                t = time.perf_counter()
                a @ b
                best = min(best, time.perf_counter() - t)
                if time.perf_counter() > deadline:
                    break
            out[name] = 2 * m * k * n / best / 1e9
        return out
    finally:
        torch.set_num_threads(threads)


def _decide(g: dict[str, float], where: str) -> Precision:
    dtype = "bfloat16" if g["bfloat16"] > g["float32"] else "float32"
    why = "faster" if dtype == "bfloat16" else "slower: no native bf16"
    return Precision(dtype, f"bf16 matmul {g['bfloat16']:.1f} GFLOP/s vs fp32 {g['float32']:.1f} on one core "
                            f"({why}; probe {where})")


@functools.cache
def cpu_precision() -> Precision:
    """The CPU's precision: REPLICATE_CPU_DTYPE when set, else the cached probe, else a new probe."""
    forced = os.environ.get("REPLICATE_CPU_DTYPE")
    if forced:
        return resolve(forced, source="REPLICATE_CPU_DTYPE")
    import torch

    key, cache = machine_key(), _cached()
    hit = cache.get(key)
    if isinstance(hit, dict) and hit.get("torch") == torch.__version__ and {"float32", "bfloat16"} <= set(hit):
        return _decide(hit, f"of {hit.get('measured_at', '?')}, cached")
    g = probe_gflops()
    cache[key] = {**{k: round(v, 2) for k, v in g.items()}, "torch": torch.__version__,
                  "measured_at": dt.date.today().isoformat()}
    try:
        files.write_json(_cache_path(), cache)
    except OSError:
        pass  # a read-only cache: decide anyway, probe again next time
    return _decide(g, "just now")


def resolve(asked: str | None, *, cuda: bool | None = None, source: str = "the pipeline") -> Precision:
    """The dtype to compute in. `asked`: a setting ("auto"/None = decide); `cuda`: where the model
    runs (None = a CUDA device when torch sees one)."""
    if asked and asked != "auto":
        if asked not in DTYPES:
            from replicate.errors import UserError

            raise UserError(f"dtype {asked!r}: expected auto, {', '.join(DTYPES)}")
        return Precision(asked, f"set by {source}")
    if cuda is None:
        cuda = "torch" in sys.modules and sys.modules["torch"].cuda.is_available()
    if cuda:
        import torch

        if torch.cuda.is_bf16_supported():
            return Precision("bfloat16", "CUDA GPU with bf16")
        return Precision("float16", "CUDA GPU without bf16")
    return cpu_precision()


def planned_dtype(asked: str | None = None) -> Precision:
    """The CPU precision a run on THIS machine will use, without importing torch (for estimates):
    a setting, else the cached probe, else the processor's feature flags."""
    if asked and asked != "auto":
        return resolve(asked)
    forced = os.environ.get("REPLICATE_CPU_DTYPE")
    if forced:
        return resolve(forced, source="REPLICATE_CPU_DTYPE")
    hit = _cached().get(machine_key())
    if isinstance(hit, dict) and {"float32", "bfloat16"} <= set(hit):
        return _decide(hit, f"of {hit.get('measured_at', '?')}, cached")
    native = flags_say_bf16()
    return Precision("bfloat16" if native else "float32",
                     f"the processor's flags {'list' if native else 'lack'} avx512_bf16/amx_bf16 (no probe cached)")


def announce(p: Precision, what: str) -> None:
    """Print the decision once per process and purpose, on stderr."""
    if (what, p.dtype) in _announced:
        return
    _announced.add((what, p.dtype))
    print(f"precision: {what} in {p.dtype} ({p.reason})", file=sys.stderr, flush=True)
