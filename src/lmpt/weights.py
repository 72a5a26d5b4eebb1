"""Pretrained CLIP weights by tag (``openai``, ``laion2b_s34b_b79k``, ...): where they live and how to get them.

A tag is resolved through open_clip's table of pretrained weights to a Hugging Face hub repository (for
OpenAI's: ``timm/resnet50_clip.openai``, ``timm/vit_base_patch16_clip_224.openai``). The safetensors copy
(``open_clip_model.safetensors``: no code runs when it loads) is preferred over the pickled one. Files are
downloaded by ``huggingface_hub`` (its progress bar, its cache: the one open_clip uses, ``$HF_HOME/hub``), and
the file's SHA-256 is checked against the hub's LFS hash (the blob's name). Tags with no hub copy fall back to
open_clip's URL download, which checks the SHA-256 in the URL. Offline (``HF_HUB_OFFLINE=1``, no network, a
blocked host) every failure is one :class:`~lmpt.errors.UserError` that names the file and where to put it.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .errors import ConfigError, UserError

logger = logging.getLogger(__name__)

HUB_FILENAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class WeightsSource:
    """Where the weights of one (architecture, tag) pair can be downloaded from."""

    model: str
    tag: str
    repo: Optional[str]  # Hugging Face hub repository, or None
    filenames: tuple[str, ...]  # in order of preference
    url: Optional[str]  # open_clip's direct URL (OpenAI's CDN for openai), or None

    def hub_url(self, filename: str) -> str:
        return f"{hub_endpoint()}/{self.repo}/resolve/main/{filename}"


def hub_endpoint() -> str:
    """The Hugging Face endpoint huggingface_hub uses (``$HF_ENDPOINT``, by default https://huggingface.co)."""
    from huggingface_hub import constants

    return str(constants.ENDPOINT).rstrip("/")


def hub_cache_dir() -> Path:
    """The folder the hub (and so open_clip) caches downloads in."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def weights_source(model_name: str, tag: str) -> WeightsSource:
    """Look up a pretrained tag in open_clip's table; ConfigError (with the known tags) if there is none."""
    import open_clip

    base = model_name.replace("-quickgelu", "")
    tags = set(open_clip.list_pretrained_tags_by_model(model_name)) | set(
        open_clip.list_pretrained_tags_by_model(base))
    if tag not in tags:
        raise ConfigError(f"'{tag}' is neither a weights file nor a pretrained tag of {model_name} "
                          f"(tags: {', '.join(sorted(tags)) or 'none'}). Pass the path of a weights file.")
    cfg = open_clip.get_pretrained_cfg(model_name, tag) or open_clip.get_pretrained_cfg(base, tag) or {}
    hub = str(cfg.get("hf_hub", "") or "")
    repo, filename = os.path.split(hub) if hub else ("", "")  # open_clip's form: "org/name/" or "org/name/file"
    if filename:
        names: tuple[str, ...] = (filename,)
        if filename.endswith((".bin", ".pth")):
            names = (filename[:-4] + ".safetensors", filename)
    else:
        names = HUB_FILENAMES
    return WeightsSource(model=model_name, tag=tag, repo=repo or None, filenames=names,
                         url=str(cfg.get("url") or "") or None)


def cached_weights(source: WeightsSource) -> Optional[Path]:
    """The file already in the local hub cache, or None (never touches the network)."""
    if not source.repo:
        return None
    from huggingface_hub import try_to_load_from_cache

    for name in source.filenames:
        hit = try_to_load_from_cache(source.repo, name)
        if isinstance(hit, str) and os.path.isfile(hit):
            return Path(hit)
    return None


def _hub_download(repo: str, filename: str) -> str:
    """One file from the hub into its cache (a function of its own so that tests can stand in for the hub)."""
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id=repo, filename=filename)


def _url_download(url: str) -> str:
    from open_clip.pretrained import download_pretrained_from_url

    return download_pretrained_from_url(url)


def verify_hub_file(path: Path) -> None:
    """Check a hub download against its LFS SHA-256 (the name of the blob it links to); a no-op when the blob
    is not named by a SHA-256 (small files kept in git)."""
    blob = Path(os.path.realpath(path))
    if not _SHA256.match(blob.name):
        return
    h = hashlib.sha256()
    with open(blob, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() != blob.name:
        blob.unlink(missing_ok=True)
        raise UserError(f"{path}: SHA-256 {h.hexdigest()[:16]}... does not match the hub's {blob.name[:16]}...; "
                        "the corrupt copy was removed, run the command again to download it anew.")


def _reachable(url: str, timeout: float = 10.0) -> bool:
    """Whether ``url``'s host accepts a TCP connection (a quick test, so no network fails in seconds, not after
    the hub's minute of retries)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def _offline_message(source: WeightsSource, why: str) -> str:
    first = source.filenames[0]
    where = source.hub_url(first) if source.repo else source.url
    other = f" (or OpenAI's original, {source.url})" if source.repo and source.url else ""
    return (f"could not download the {source.tag} weights of {source.model} ({why}). Download {where}{other} "
            f"and either pass model.pretrained=/path/to/that/file, or run `lmpt weights fetch "
            f"{source.model} --tag {source.tag}` on a machine with internet access and copy its cache folder "
            f"({hub_cache_dir()}) to the same place on this one.")


def fetch_weights(model_name: str, tag: str = "openai", download: bool = True) -> Path:
    """The local file of a pretrained tag: from the cache, else downloaded (safetensors first) and verified.

    ``download=False`` looks in the cache only. Raises ConfigError for an unknown tag and one-line UserError
    when the file cannot be had (offline, no network, blocked host, not found), naming the file and its URL.
    """
    source = weights_source(model_name, tag)
    hit = cached_weights(source)
    if hit is not None:
        return hit
    if not download:
        raise UserError(_offline_message(source, "downloads are off and it is not in the local cache"))
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise UserError(_offline_message(source, "HF_HUB_OFFLINE=1 and it is not in the local cache"))
    why = "no hub copy"
    if source.repo and not _reachable(hub_endpoint()):
        why = f"cannot connect to {hub_endpoint()}"
    elif source.repo:
        for name in source.filenames:
            try:
                path = Path(_hub_download(source.repo, name))
            except Exception as exc:  # not found, network down, host blocked: try the next name, then say why
                why = _short_reason(exc)
                logger.info("hub download of %s/%s failed: %s", source.repo, name, why)
                if _is_missing(exc):
                    continue
                break
            verify_hub_file(path)
            logger.info("weights %s %s: %s", source.model, source.tag, path)
            return path
    if source.url and not _reachable(source.url):
        why = f"{why}; cannot connect to {source.url.split('/')[2]}"
    elif source.url:
        try:
            return Path(_url_download(source.url))
        except Exception as exc:
            why = f"{why}; {source.url}: {_short_reason(exc)}"
    raise UserError(_offline_message(source, why))


def _is_missing(exc: Exception) -> bool:
    from huggingface_hub.errors import EntryNotFoundError

    return isinstance(exc, EntryNotFoundError) and not isinstance(exc, FileNotFoundError)


def _short_reason(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}"
