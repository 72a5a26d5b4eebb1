"""Download the images of VOC-LT and COCO-LT: only those the packaged lists name.

* **VOC-LT** (:func:`download_voc_lt`): VOC2012 trainval (the train list) and VOC2007 test. Each archive is
  fetched by pooch (its MD5 checked against the published one, in :data:`VOC_ARCHIVES`) from the mirrors given
  first, then the known hosts, resuming an interrupted download (HTTP Range); then only the listed JPEGs are
  extracted and the archive is deleted (``keep_archives`` keeps it).
* **COCO-LT** (:func:`download_coco_lt`): the 1,909 train2017 + 5,000 val2017 images, one by one from COCO's
  image server, in parallel (bounded), retried with back-off, each decoded before it is written (atomically);
  complete files are skipped, so a rerun resumes. Images no host serves come from the archives (fallback).

A mirror is a base URL that serves the same paths: ``train2017/<name>.jpg`` / ``val2017/<name>.jpg`` for COCO,
the archives' own file names (``VOCtrainval_11-May-2012.tar``) for VOC.
"""
from __future__ import annotations

import logging
import tarfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, Union

from ..errors import DataError
from ..io import atomic_path
from .fetch import NotFound, TransferError, describe_failure, download_resumable, fetch_image, part_path, \
    reachable, with_retries

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
COCO_IMAGE_HOST = "http://images.cocodataset.org"
DOWNLOADS = ".lmpt-downloads"  # under root: archives while they download and extract


@dataclass(frozen=True)
class Archive:
    """One archive: its file name, where it is published, its published checksum (or None) and what it holds."""

    filename: str
    urls: tuple[str, ...]
    known_hash: Optional[str]  # pooch form, "md5:..."; None where none is published
    lists: tuple[str, ...]  # packaged list files whose images it holds
    approx_bytes: int  # for the disk report only (approximate)


# MD5s as published with the VOC devkits (the same values torchvision and many other projects check).
VOC_ARCHIVES = (
    Archive("VOCtrainval_11-May-2012.tar",
            ("http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
             "https://pjreddie.com/media/files/VOCtrainval_11-May-2012.tar"),
            "md5:6cd6e144f989b92b3379bac3b3de84fd", ("voc_lt_train.txt",), 2_000_000_000),
    Archive("VOCtest_06-Nov-2007.tar",
            ("http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtest_06-Nov-2007.tar",
             "https://pjreddie.com/media/files/VOCtest_06-Nov-2007.tar"),
            "md5:b6e924de25625d8de591ea690078ad9f", ("voc_lt_test.txt",), 450_000_000),
)
# COCO publishes no checksums for its zips: a fallback archive is checked by the zip's own CRCs and by decoding.
COCO_ARCHIVES = (
    Archive("train2017.zip", (f"{COCO_IMAGE_HOST}/zips/train2017.zip",), None, ("coco_lt_train.txt",),
            18_000_000_000),
    Archive("val2017.zip", (f"{COCO_IMAGE_HOST}/zips/val2017.zip",), None, ("coco_lt_test.txt",), 800_000_000),
)
LISTS = {"voc-lt": ("voc_lt", ("voc_lt_train.txt", "voc_lt_test.txt")),
         "coco-lt": ("coco_lt", ("coco_lt_train.txt", "coco_lt_test.txt"))}


@dataclass
class DownloadReport:
    """What a download did: files and bytes fetched, files already there, archives, time, what failed."""

    name: str
    root: Path
    wanted: int = 0
    present: int = 0  # already complete before this run
    fetched: int = 0
    bytes_fetched: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def format(self) -> str:
        mb = self.bytes_fetched / 1e6
        rate = f", {mb / self.seconds:.2f} MB/s" if self.seconds > 0 and self.bytes_fetched else ""
        lines = [f"{self.name}: {self.wanted} images wanted under {self.root}: {self.present} already there, "
                 f"{self.fetched} fetched ({self.bytes_fetched:,} bytes in {self.seconds:.1f} s{rate})"]
        lines += [f"  {n}" for n in self.notes]
        if self.failed:
            lines.append(f"  {len(self.failed)} image(s) could not be downloaded, e.g. "
                         + "; ".join(f"{p}: {r}" for p, r in self.failed[:3]))
        return "\n".join(lines)


def listed_images(name: str, limit: Optional[int] = None) -> dict[str, list[str]]:
    """The relative image paths each packaged list of ``name`` names (the first ``limit`` of each: tests)."""
    from .benchmarks import _read_resource

    folder, files = LISTS[name]
    out = {}
    for fname in files:
        rows = [ln.split()[0] for ln in _read_resource(folder, fname).splitlines() if ln.strip()]
        out[fname] = rows[:limit] if limit is not None else rows
    return out


def _missing(root: Path, rels: Iterable[str]) -> list[str]:
    return [r for r in rels if not (root / r).is_file()]


def _archive_urls(archive: Archive, mirrors: Sequence[str]) -> list[str]:
    return [f"{m.rstrip('/')}/{archive.filename}" for m in mirrors] + list(archive.urls)


def fetch_archive(archive: Archive, folder: Path, mirrors: Sequence[str] = (), retries: int = 4,
                  backoff: float = 1.0, show_progress: bool = True) -> tuple[Path, int]:
    """Download ``archive`` into ``folder`` (pooch: cache, checksum), trying the mirrors first, each with
    resumable retries. Returns (path, bytes transferred). DataError naming every URL tried when none worked."""
    import pooch

    pooch.get_logger().setLevel(logging.WARNING)  # its "Downloading data from" lines: we print our own report
    tried: list[str] = []
    transferred = 0
    for url in _archive_urls(archive, mirrors):
        part = part_path(folder / archive.filename)

        def downloader(u: str, output_file: str, pooch_obj: object, check_only: bool = False) -> None:
            nonlocal transferred

            had = part.stat().st_size if part.exists() else 0

            def once() -> int:
                return download_resumable(u, Path(output_file), part=part, show_progress=show_progress)

            try:
                with_retries(once, retries, backoff, what=u)
            finally:  # every byte this run added to the part (or to the finished file), resumed attempts included
                done = Path(output_file).stat().st_size if Path(output_file).exists() and not part.exists() else 0
                transferred += max(0, (part.stat().st_size if part.exists() else done) - had)

        try:
            path = pooch.retrieve(url, known_hash=archive.known_hash, fname=archive.filename, path=folder,
                                  downloader=downloader, progressbar=False)
            return Path(path), transferred
        except ValueError as exc:  # pooch: checksum mismatch (the bad file is already deleted)
            tried.append(f"{url}: {' '.join(str(exc).split())[:160]}")
        except (TransferError, NotFound) as exc:
            tried.append(describe_failure(exc))
        logger.info("archive %s: %s", archive.filename, tried[-1])
    raise DataError(f"could not download {archive.filename}; tried: {' | '.join(tried)}. Add a host that serves "
                    f"it with --mirror URL (tried first), or put the file in {folder} yourself"
                    + (f" (checksum {archive.known_hash})" if archive.known_hash else "") + " and run again.")


def extract_listed(archive_path: Path, root: Path, wanted: set[str]) -> tuple[int, int, int]:
    """Write the members of a tar or zip archive whose path is in ``wanted`` under ``root`` (atomically, skipping
    files already there). Returns (files written, bytes written, bytes of the images not extracted)."""
    written = nbytes = skipped_bytes = 0
    try:
        if zipfile.is_zipfile(archive_path):
            with zipfile.ZipFile(archive_path) as zf:
                for info in zf.infolist():
                    rel = info.filename.lstrip("./")
                    if rel not in wanted:
                        skipped_bytes += info.file_size if rel.lower().endswith(".jpg") else 0
                    elif not (root / rel).is_file():
                        nbytes += _write(root / rel, zf.read(info))
                        written += 1
        else:
            with tarfile.open(archive_path, "r:*") as tf:
                for member in tf:
                    rel = member.name.lstrip("./")
                    if not member.isfile():
                        continue
                    if rel not in wanted:
                        skipped_bytes += member.size if rel.lower().endswith(".jpg") else 0
                    elif not (root / rel).is_file():
                        fh = tf.extractfile(member)
                        nbytes += _write(root / rel, fh.read() if fh is not None else b"")
                        written += 1
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise DataError(f"archive {archive_path} is damaged ({type(exc).__name__}: {exc}); delete it and run "
                        "the download again") from None
    return written, nbytes, skipped_bytes


def _write(dest: Path, data: bytes) -> int:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return len(data)


def _via_archives(archives: Sequence[Archive], root: Path, report: DownloadReport, lists: dict[str, list[str]],
                  mirrors: Sequence[str], keep_archives: bool, show_progress: bool, backoff: float = 1.0) -> None:
    folder = root / DOWNLOADS
    for archive in archives:
        wanted = [r for lst in archive.lists for r in lists.get(lst, [])]
        missing = _missing(root, wanted)
        if not missing:
            report.notes.append(f"{archive.filename}: not needed (all {len(wanted)} images are there)")
            continue
        logger.warning("%d image(s) missing: fetching %s (about %.1f GB) for them", len(missing), archive.filename,
                       archive.approx_bytes / 1e9)
        path, transferred = fetch_archive(archive, folder, mirrors, backoff=backoff, show_progress=show_progress)
        report.bytes_fetched += transferred
        size = path.stat().st_size
        written, nbytes, skipped = extract_listed(path, root, set(missing))
        report.fetched += written
        note = (f"{archive.filename} ({size:,} bytes, checksum "
                f"{'verified: ' + archive.known_hash if archive.known_hash else 'none published; archive CRCs read'})"
                f": extracted the {written} listed images ({nbytes:,} bytes), left out {skipped:,} bytes of "
                "images no list names")
        if not keep_archives:
            path.unlink()
            note += f"; archive deleted: {size - nbytes:,} bytes of disk saved"
        report.notes.append(note)
    if not keep_archives and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def download_voc_lt(root: PathLike, mirrors: Sequence[str] = (), keep_archives: bool = False,
                    limit: Optional[int] = None, backoff: float = 1.0, show_progress: bool = True) -> DownloadReport:
    """Put the VOC-LT images under ``root/VOCdevkit/`` (see module docstring). ``limit``: first N per list (tests);
    ``backoff``: the first wait (seconds) before a retry, doubled each time."""
    root = Path(root).expanduser()
    start = time.perf_counter()
    lists = listed_images("voc-lt", limit)
    every = [r for rows in lists.values() for r in rows]
    report = DownloadReport("voc-lt", root, wanted=len(set(every)))
    report.present = report.wanted - len(set(_missing(root, set(every))))
    _via_archives(VOC_ARCHIVES, root, report, lists, mirrors, keep_archives, show_progress, backoff)
    report.seconds = time.perf_counter() - start
    return report


def download_coco_lt(root: PathLike, mirrors: Sequence[str] = (), workers: int = 16, retries: int = 4,
                     backoff: float = 0.5, archives: bool = True, keep_archives: bool = False,
                     limit: Optional[int] = None, show_progress: bool = True,
                     stop_after: Optional[int] = None) -> DownloadReport:
    """Put the COCO-LT images under ``root/train2017/`` and ``root/val2017/`` (see module docstring).

    ``workers`` bounds the parallel transfers; ``retries``/``backoff``: per image and host. ``archives``: fetch
    the zips for images no host served. ``limit``: the first N of each list; ``stop_after``: raise
    KeyboardInterrupt after N new files (both for tests: a subset, a kill in the middle).
    """
    from ..progress import progress

    root = Path(root).expanduser()
    start = time.perf_counter()
    lists = listed_images("coco-lt", limit)
    every = sorted({r for rows in lists.values() for r in rows})
    todo = _missing(root, every)
    report = DownloadReport("coco-lt", root, wanted=len(every), present=len(every) - len(todo))
    hosts = [m.rstrip("/") for m in mirrors] + [COCO_IMAGE_HOST]
    if todo:  # a host that gives no HTTP answer at all is dropped at once, not tried for each of 6,909 images
        down = [h for h in hosts if not reachable(f"{h}/{todo[0]}", min(retries, 2), backoff)]
        if down:
            report.notes.append(f"unreachable, skipped: {', '.join(down)}")
        hosts = [h for h in hosts if h not in down]
        if not hosts:
            report.failed = [(rel, "no image host reachable") for rel in todo]
            todo = []
    bar = progress(len(todo), "downloading images", unit="img", enabled=show_progress)

    def one(rel: str) -> int:
        return fetch_image([f"{h}/{rel}" for h in hosts], root / rel, retries=retries, backoff=backoff)

    with bar:
        for attempt in range(2):  # a second round for the transient failures (the hosts may have recovered)
            failures = _fetch_parallel(one, todo, workers, report, bar, stop_after)
            todo = [rel for rel, exc in failures if isinstance(exc, TransferError)]
            report.failed = [(rel, describe_failure(exc)) for rel, exc in failures]
            if not todo or attempt == 1:
                break
            logger.info("%d image(s) failed for now; one more round for them", len(todo))
            bar.update(-len(todo))
    if report.failed:
        report.notes.append(f"{len(report.failed)} image(s) not served by {', '.join(hosts)}")
        if archives:
            before = report.fetched
            _via_archives(COCO_ARCHIVES, root, report, lists, mirrors, keep_archives, show_progress, backoff)
            still = set(_missing(root, [r for r, _ in report.failed]))
            report.notes.append(f"archives fallback: {report.fetched - before} image(s) extracted")
            report.failed = [(r, why) for r, why in report.failed if r in still]
    report.seconds = time.perf_counter() - start
    return report


def _fetch_parallel(one: Callable[[str], int], todo: Sequence[str], workers: int, report: DownloadReport,
                    bar: Any, stop_after: Optional[int]) -> list[tuple[str, BaseException]]:
    """Run ``one`` over ``todo`` in at most ``workers`` threads, counting into ``report``; the failures."""
    failures: list[tuple[str, BaseException]] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(one, rel): rel for rel in todo}
        try:
            for fut in as_completed(futures):
                try:
                    report.bytes_fetched += fut.result()
                    report.fetched += 1
                except (TransferError, NotFound, OSError) as exc:
                    failures.append((futures[fut], exc))
                bar.update(1)
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(MB=f"{report.bytes_fetched / 1e6:.1f}")
                if stop_after is not None and report.fetched >= stop_after:
                    raise KeyboardInterrupt
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return failures


DOWNLOADERS = {"voc-lt": download_voc_lt, "coco-lt": download_coco_lt}
