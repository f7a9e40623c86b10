"""Runtime support for archc's generated Triton kernels (copied into each generated package).

- `bcast(shape, a, b)`: the (inner, size) pair that indexes an operand broadcast along axes [a, b).
- `Tuned`: a kernel launched with one block-size config per shape. By default the config is a rule
  of thumb (`gemm_default`, `row_default`, `attention_default`: no benchmarking, so the first call
  costs one compile per kernel, as Inductor's default mode does). With `ARCHC_AUTOTUNE=1` in the
  environment, `triton.autotune` benchmarks the kernel's configs on the first launch of each shape
  and the choice is kept in a small JSON file keyed by GPU name, kernel (name and source hash) and
  shape, so the next process launches it without tuning; a kept choice is used in either mode. `ARCHC_TUNE_CACHE` names the file (an absolute path; default
  `$XDG_CACHE_HOME/archc/triton-tune.json`, or `~/.cache/archc/triton-tune.json`), read only when
  it and its folder belong to the current user and others cannot write them. Under
  `TRITON_INTERPRET=1` (CPU) nothing is tuned: the kernel runs with its interpreter config.

Needs torch and triton only.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import stat
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import triton

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# Rows up to this many elements are normalized from registers in one pass; longer rows in chunks.
MAX_SINGLE_ROW = 16384
INTERPRET_CHUNK = 256  # the chunk the CPU interpreter uses for longer rows


def _configs(rows: list[tuple[int, ...]], names: tuple[str, ...]) -> list[triton.Config]:
    return [triton.Config(dict(zip(names, r[:-2])), num_stages=r[-2], num_warps=r[-1]) for r in rows]


# (BLOCK_M, BLOCK_N, BLOCK_K, stages, warps): Triton's matmul tutorial set, plus wide-K tiles for fp16/bf16.
GEMM_CONFIGS = _configs([(128, 256, 64, 3, 8), (64, 256, 32, 4, 4), (128, 128, 32, 4, 4), (128, 64, 32, 4, 4),
                         (64, 128, 32, 4, 4), (128, 32, 32, 4, 4), (64, 32, 32, 5, 2), (32, 64, 32, 5, 2),
                         (128, 128, 64, 4, 8), (64, 64, 64, 4, 4)], ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
# (BLOCK_N, stages, warps): a row that fits one block keeps BLOCK_N = next_pow2(N); longer rows use chunks.
ROW_CONFIGS = _configs([(1 << p, 1, w) for p in range(4, 15) for w in (1, 2, 4, 8, 16)], ("BLOCK_N",))
ROW_CHUNKS = (1024, 2048, 4096)
# (BLOCK_M, BLOCK_N, stages, warps)
ATTENTION_CONFIGS = _configs([(64, 64, 2, 4), (128, 64, 2, 4), (128, 64, 3, 8), (64, 32, 2, 4), (128, 128, 2, 8)],
                             ("BLOCK_M", "BLOCK_N"))


def autotuning() -> bool:
    """Whether a launch with no kept config benchmarks the configs (ARCHC_AUTOTUNE=1), read at launch."""
    return os.environ.get("ARCHC_AUTOTUNE") == "1"


def _config(block: dict[str, int], stages: int, warps: int) -> triton.Config:
    return triton.Config(block, num_stages=stages, num_warps=warps)


def gemm_default(key: tuple[Any, ...]) -> triton.Config:
    """A tile for (M, N, K, dtype) without benchmarking, one of GEMM_CONFIGS: 128x128x64 for 16-bit
    inputs with both sides >= 128, 128x64x32 for fp32 (its shared memory fits an A100 too), and a
    32x64 tile when the product is short in M or N."""
    m, n, _, dtype = key
    if m < 64 or n < 64:
        return _config({"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 32}, 5, 2)
    if dtype in (torch.float16, torch.bfloat16) and m >= 128 and n >= 128:
        return _config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64}, 4, 8)
    return _config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32}, 4, 4)


def row_default(key: tuple[Any, ...]) -> triton.Config:
    """A row config for (N, dtype), one that `prune_rows` keeps: one block of next_pow2(N) (at least 16) with a
    warp per 256 elements (1-16), or 2048-element chunks with 8 warps for rows longer than MAX_SINGLE_ROW."""
    n = max(16, next_pow2(key[0]))
    if n > MAX_SINGLE_ROW:
        return _config({"BLOCK_N": 2048}, 1, 8)
    return _config({"BLOCK_N": n}, 1, min(16, max(1, n // 256)))


def attention_default(key: tuple[Any, ...]) -> triton.Config:
    """64 queries x 64 keys per step, 4 warps, 2 stages: the first of ATTENTION_CONFIGS."""
    return _config({"BLOCK_M": 64, "BLOCK_N": 64}, 2, 4)


def prune_rows(configs: list[triton.Config], args: dict[str, Any]) -> list[triton.Config]:
    """Row configs that fit N: exactly next_pow2(N) wide in one pass, or a chunk size for long rows;
    few warps for short rows."""
    n = next_pow2(args["N"])
    if args.get("SINGLE"):
        return [c for c in configs if c.kwargs["BLOCK_N"] == n and c.num_warps * 32 <= max(n, 32)] or configs[:1]
    return [c for c in configs if c.kwargs["BLOCK_N"] in ROW_CHUNKS and c.num_warps >= 4]


def bcast(shape: Sequence[int], a: int, b: int) -> tuple[int, int]:
    """(inner, size) of an operand that varies along axes [a, b) of `shape`: element i of the
    region reads element (i // inner) % size of the operand."""
    return max(math.prod(shape[b:]), 1), max(math.prod(shape[a:b]), 1)


def next_pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def precision(t: torch.Tensor) -> str:
    """tl.dot's input precision for fp32: TF32 only where torch itself allows it."""
    if t.dtype == torch.float32 and t.is_cuda and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def device_name(t: torch.Tensor) -> str:
    return torch.cuda.get_device_name(t.device) if t.is_cuda else "cpu"


class TuneCache:
    """Chosen configs on disk: {"<gpu>|<kernel>@<hash>|<shape>|<dtype>": {kwargs, num_warps, num_stages}}.

    The file is read only when it and its folder pass the checks of archc/cachefs.py (copied here:
    this file is copied into each generated package and must stay self-contained; keep the two in
    step): a regular file, not a symbolic link, owned by the current user and not writable by group
    or others, in a folder likewise. It is written atomically (a 0600 temporary file, then
    os.replace) in a folder created 0700. Entries that are not {"kwargs": {name: int}, "num_warps":
    int, "num_stages": int} are dropped, and `Tuned` launches only a config of its own list."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path else _default_path()
        self._data: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._warned = False

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            print(f"archc: {message}", file=sys.stderr)

    def _load(self) -> dict[str, Any]:
        if self._data is None:
            self._data = {}
            try:
                if self.path.parent.exists():
                    _check_owner(os.stat(self.path.parent), self.path.parent)
                raw = _read_private(self.path)
                loaded = json.loads(raw) if raw is not None else {}
            except _Refused as err:
                self._warn(f"ignoring the autotune cache: {err}")
                return self._data
            except (OSError, ValueError):
                return self._data
            if isinstance(loaded, dict):
                self._data = {k: v for k, v in loaded.items() if isinstance(k, str) and _valid_entry(v)}
        return self._data

    def get(self, key: str, allowed: Sequence[triton.Config] | None = None) -> triton.Config | None:
        """The config kept for `key`; None if there is none or (given `allowed`) it is not one of them."""
        entry = self._load().get(key)
        if entry is None:
            return None
        config = triton.Config(dict(entry["kwargs"]), num_warps=entry["num_warps"], num_stages=entry["num_stages"])
        if allowed is not None and _signature(config) not in {_signature(c) for c in allowed}:
            return None
        return config

    def put(self, key: str, config: triton.Config) -> None:
        with self._lock:
            data = self._load()
            data[key] = {"kwargs": dict(config.kwargs), "num_warps": config.num_warps,
                         "num_stages": config.num_stages}
            try:
                _private_dir(self.path.parent)
                fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".tune.", suffix=".json")  # 0600
                try:
                    with os.fdopen(fd, "w") as f:
                        json.dump(data, f, indent=1, sort_keys=True)
                    os.replace(tmp, self.path)
                except BaseException:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
                    raise
            except _Refused as err:  # keep the choice for this process only
                self._warn(f"not writing the autotune cache: {err}")
            except OSError:  # a read-only home: keep the choice for this process only
                pass


def _default_path() -> Path:
    """$ARCHC_TUNE_CACHE when absolute, else <cache home>/archc/triton-tune.json (the cache home is
    $XDG_CACHE_HOME when absolute, else ~/.cache): a relative path is ignored."""
    named = os.environ.get("ARCHC_TUNE_CACHE", "")
    if os.path.isabs(named):
        return Path(named)
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "archc" / "triton-tune.json"


def _valid_entry(entry: Any) -> bool:
    def small_int(v: Any) -> bool:
        return type(v) is int and 0 <= v <= 1 << 20

    return (isinstance(entry, dict) and set(entry) == {"kwargs", "num_warps", "num_stages"}
            and isinstance(entry["kwargs"], dict)
            and all(isinstance(k, str) and small_int(v) for k, v in entry["kwargs"].items())
            and small_int(entry["num_warps"]) and entry["num_warps"] > 0 and small_int(entry["num_stages"]))


def _signature(config: triton.Config) -> tuple[Any, ...]:
    return tuple(sorted(config.kwargs.items())), config.num_warps, config.num_stages


class _Refused(Exception):
    pass


def _check_owner(st: os.stat_result, path: Path) -> None:
    me = os.geteuid()
    if st.st_uid != me:
        raise _Refused(f"{path} is owned by uid {st.st_uid}, not by the current user (uid {me})")
    if st.st_mode & 0o022:
        raise _Refused(f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})")


def _private_dir(path: Path) -> None:
    """Create `path` (and missing parents) 0700; _Refused unless ours and closed to others."""
    missing = []
    for p in (path, *path.parents):
        if os.path.lexists(p):
            break
        missing.append(p)
    for p in reversed(missing):
        try:
            os.mkdir(p, 0o700)  # the umask can only take bits away
        except FileExistsError:
            pass
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise _Refused(f"{path} is not a folder")
    _check_owner(st, path)


def _read_private(path: Path) -> bytes | None:
    """The bytes of `path`, checked on the open descriptor (never through a symbolic link); None if absent."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError:
        if os.path.islink(path):
            raise _Refused(f"{path} is a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _Refused(f"{path} is not a regular file")
        _check_owner(st, path)
        if st.st_size > 16 << 20:
            raise OSError(f"{path} is larger than 16 MiB")
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    finally:
        os.close(fd)


CACHE = TuneCache()


class Tuned:
    """`kernel` with a config per shape. `tuned[grid](*args, key=(...), interpret={...}, **kwargs)`
    launches it with the kept config for (GPU, kernel, key); on a miss, with `default(key)`, or
    (ARCHC_AUTOTUNE=1) after tuning once with triton.autotune, keeping the choice. Under the CPU
    interpreter it runs with the `interpret` block sizes.

    `prune(configs, args)` drops configs that do not fit the launch (a row longer than a block)."""

    def __init__(self, kernel: Any, configs: list[triton.Config], key: list[str],
                 default: Callable[[tuple[Any, ...]], triton.Config],
                 prune: Callable[[list[triton.Config], dict[str, Any]], list[triton.Config]] | None = None) -> None:
        self.kernel, self.configs, self.prune, self.default = kernel, configs, prune, default
        fn = getattr(kernel, "fn", kernel)
        source = inspect.getsource(fn) if callable(fn) else repr(fn)
        self.name = f"{getattr(fn, '__name__', 'kernel')}@{hashlib.sha256(source.encode()).hexdigest()[:12]}"
        early = (lambda cfgs, nargs, **kw: self.prune(cfgs, {**nargs, **kw})) if prune else None
        self.autotuner = triton.autotune(configs=configs, key=key,
                                         prune_configs_by={"early_config_prune": early} if early else None)(kernel)

    def __getitem__(self, grid: Any) -> Callable[..., None]:
        def launch(*args: Any, key: tuple[Any, ...], interpret: dict[str, Any], **kwargs: Any) -> None:
            if INTERPRET:
                self.kernel[grid](*args, **kwargs, **interpret)
                return
            device = next((a for a in args if isinstance(a, torch.Tensor)), None)
            name = device_name(device) if device is not None else "?"
            cache_key = f"{name}|{self.name}|{','.join(map(str, key))}"
            config = CACHE.get(cache_key, self.configs)
            if config is None and autotuning():
                self.autotuner[grid](*args, **kwargs)
                CACHE.put(cache_key, self.autotuner.best_config)
                return
            if config is None:
                config = self.default(key)
            self.kernel[grid](*args, **kwargs, **config.kwargs, num_warps=config.num_warps,
                              num_stages=config.num_stages)

        return launch


__all__ = ["CACHE", "INTERPRET", "MAX_SINGLE_ROW", "TuneCache", "Tuned", "attention_default", "autotuning", "bcast",
           "device_name", "gemm_default", "next_pow2", "precision", "row_default"]
