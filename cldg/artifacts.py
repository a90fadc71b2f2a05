"""Versioned artifact directories: the contract between stages (see DESIGN.md, "Artifacts").

    WORKDIR/<stage>/<fingerprint>/          a complete artifact (manifest.json written last)
    WORKDIR/<stage>/<fingerprint>.partial/  work in progress; checkpoints live here
    WORKDIR/<stage>/.<fingerprint>.lock     flock(2) lock: one writer per artifact
    WORKDIR/<stage>/latest                  symlink to the newest complete artifact (replaced atomically)
    WORKDIR/.verified.json                  the files whose sha256 was checked, by (size, mtime, ctime, inode)

A stage does:

    store = ArtifactStore(common.workdir)
    pairs = store.resolve_input("prepare", cfg.pairs_dir, PREPARE_SCHEMA)
    with store.begin("index", SCHEMA, config=fingerprint_config(cfg) | {"seed": seed},
                     inputs={"prepare": pairs}, force=common.force) as run:
        if run.existing:                       # same fingerprint already complete: skip
            return run.existing
        ... write files into run.dir (resume from what is there) ...
        return run.commit(rows={...}, timings={...}, extra={...})

Verification: every input a stage resolves (`resolve_input`, `Artifact.load`) has its files checked
against the sha256 in its manifest before the stage reads them; a mismatch is one line naming the file
(`CorruptArtifactError`, exit 2) and the stage writes nothing. A file is hashed once: the result is
remembered in WORKDIR/.verified.json under its size, mtime, ctime and inode, so any later write to it
(which moves mtime/ctime) makes the next reader hash it again. `cldg status --verify` rehashes everything.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cldg import __version__
from cldg.errors import ArtifactLockedError, CldgError, CorruptArtifactError, DiskFullError, MissingArtifactError
from cldg.filestat import stat_key, written_before
from cldg.stages import maker as stage_maker

MANIFEST = "manifest.json"
RUN_RECORD = ".run.json"  # in .partial/: the run's stage, config and inputs, while it runs (StageRun._record_run)
BOOKKEEPING = (".inputs.json", RUN_RECORD)  # files a .partial holds from its start: not work to resume


def is_bookkeeping(name: str) -> bool:
    """A .partial's own records, or one's temp file a crash left (".run.json.host.123"): not work to resume."""
    return name.endswith(".lock") or name in BOOKKEEPING or name.startswith(tuple(b + "." for b in BOOKKEEPING))


def _temp_name(path: Path) -> Path:
    """A temp file beside `path` that no other process writes, on this machine or another sharing the disk."""
    return path.with_name(f"{path.name}.{socket.gethostname()}.{os.getpid()}")
VERIFIED_CACHE = ".verified.json"

def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def compute_fingerprint(stage: str, schema: int, config: dict[str, Any], inputs: dict[str, str]) -> str:
    """Hash of everything that determines the output: stage, schema, config, input fingerprints."""
    blob = json.dumps({"stage": stage, "schema": schema, "config": config, "inputs": inputs},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_id(art: "Artifact") -> str:
    """What one build of an artifact holds: a digest of its manifest without the creation time, timings, version
    and input paths (so a byte-identical rebuild, or a copied workdir, is the same build; a rebuild with other
    numbers, under the same fingerprint, is another: StageRun.stale_inputs). A file that records timings (a
    trainer's metrics.json keeps its train_seconds) makes every rebuild of that stage another build."""
    m = {k: v for k, v in art.manifest.items() if k not in ("created", "timings", "cldg_version", "inputs")}
    m["inputs"] = {k: {"fingerprint": v.get("fingerprint"), "build": v.get("build")}
                   for k, v in (art.manifest.get("inputs") or {}).items() if isinstance(v, dict)}
    return hashlib.sha256(json.dumps(m, sort_keys=True, default=str).encode()).hexdigest()[:16]


# -- the verification cache ------------------------------------------------------------------------------
class VerifiedCache:
    """WORKDIR/.verified.json: {"<stage>/<fp>/<file>": [size, mtime_ns, ctime_ns, inode, sha256, checked_ns]}.

    Read without a lock (it is replaced atomically), updated under an flock. It is only a cache: a
    workdir that cannot be written (read-only, disk full) just hashes again next time."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.path = self.root / VERIFIED_CACHE

    def load(self) -> dict[str, list]:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def trusted(self, entries: dict[str, list], key: str, st: os.stat_result, sha256: str) -> bool:
        e = entries.get(key)
        if not isinstance(e, list) or len(e) != 6:
            return False
        return e[:4] == stat_key(st) and e[4] == sha256 and written_before(st.st_mtime_ns, e[5])

    def update(self, new: dict[str, list], drop_prefix: str | None = None) -> None:
        if not new and drop_prefix is None:
            return
        try:
            with open(self.root / ".verified.lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                entries = self.load()
                if drop_prefix is not None:
                    entries = {k: v for k, v in entries.items() if not k.startswith(drop_prefix)}
                entries.update(new)
                # forget artifacts that are gone
                live = {_artifact_key(k) for k in entries}
                gone = {d for d in live if not (self.root / d).is_dir()}
                entries = {k: v for k, v in entries.items() if _artifact_key(k) not in gone}
                tmp = self.path.with_name(f"{VERIFIED_CACHE}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps(entries, separators=(",", ":")))
                os.replace(tmp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                self.path.with_name(f"{VERIFIED_CACHE}.{os.getpid()}.tmp").unlink()


def _artifact_key(key: str) -> str:
    return "/".join(key.split("/")[:2])


def artifact_problems(path: Path, manifest: dict[str, Any], full: bool = False, first_only: bool = False,
                      use_cache: bool = True) -> list[str]:
    """One line per file of the artifact at `path` that is missing or differs from its manifest.

    full=False trusts the verification cache for files unchanged since they were last hashed. The cache
    lives in the workdir, so it is used only for an artifact laid out as WORKDIR/<stage>/<fingerprint>."""
    path = Path(path)
    files = manifest.get("files") or {}
    if not isinstance(files, dict):
        return [f"{path / MANIFEST}: 'files' is not a table of files - rebuild the artifact"]
    stage = str(manifest.get("stage", "?"))
    maker = stage_maker(stage)
    use_cache = use_cache and path.parent.name == stage and path.name == manifest.get("fingerprint")
    cache = VerifiedCache(path.parent.parent) if use_cache else None
    entries = cache.load() if cache is not None and not full else {}
    prefix = f"{path.parent.name}/{path.name}/"
    problems: list[str] = []
    new: dict[str, list] = {}
    for rel, info in sorted(files.items()):
        f = path / rel
        try:
            st = f.stat()
        except OSError:
            problems.append(f"{f}: missing (listed in {path / MANIFEST}) - rebuild it with `{maker} --force`")
        else:
            want = str(info.get("sha256", "")) if isinstance(info, dict) else ""
            size = info.get("bytes") if isinstance(info, dict) else None
            if size is not None and st.st_size != size:
                problems.append(f"{f}: {st.st_size:,} bytes, its {MANIFEST} says {size:,} (changed after "
                                f"'{stage}' wrote it) - rebuild it with `{maker} --force`")
            elif cache is None or full or not cache.trusted(entries, prefix + rel, st, want):
                t0 = time.time_ns()
                digest = sha256_file(f)
                if digest != want:
                    problems.append(f"{f}: sha256 differs from its {MANIFEST} (changed after '{stage}' wrote it) "
                                    f"- rebuild it with `{maker} --force`")
                else:
                    try:
                        after = f.stat()
                    except OSError:
                        after = None
                    if after is not None and stat_key(after) == stat_key(st):
                        new[prefix + rel] = stat_key(st) + [digest, t0]
        if problems and first_only:
            break
    if new and cache is not None:
        cache.update(new)
    return problems


@dataclass
class Artifact:
    """A complete artifact on disk."""

    stage: str
    fingerprint: str
    path: Path
    manifest: dict[str, Any]
    reused: bool = False  # True when a run found this artifact complete and skipped its work

    @property
    def schema(self) -> int:
        return int(self.manifest["schema"])

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest.get("config", {})

    def file(self, name: str) -> Path:
        return self.path / name

    @classmethod
    def load(cls, path: Path, verify: bool = True) -> "Artifact":
        """The complete artifact at `path`; verify: check its files against the manifest's sha256
        (hashing only files changed since their last check)."""
        path = Path(path)
        mpath = path / MANIFEST
        if not mpath.is_file():
            raise MissingArtifactError(f"{path}: not a complete cldg artifact (no {MANIFEST})")
        try:
            manifest = json.loads(mpath.read_text())
            art = cls(str(manifest["stage"]), str(manifest["fingerprint"]), path.resolve(), manifest)
            int(manifest["schema"])
        except (ValueError, UnicodeDecodeError, KeyError, TypeError) as exc:
            raise MissingArtifactError(f"{mpath}: unreadable manifest ({type(exc).__name__}: {exc})") from None
        except OSError as exc:
            raise MissingArtifactError(f"{mpath}: cannot read ({exc.strerror})") from None
        if verify:
            art.verify()
        return art

    def verify(self, full: bool = False) -> None:
        """Raise CorruptArtifactError (one line naming the file) if a file differs from the manifest."""
        problems = artifact_problems(self.path, self.manifest, full=full, first_only=True)
        if problems:
            raise CorruptArtifactError(problems[0])


class StageRun:
    """One attempt at producing an artifact; use through `ArtifactStore.begin` as a context manager."""

    def __init__(self, store: "ArtifactStore", stage: str, schema: int, config: dict[str, Any],
                 inputs: dict[str, Artifact], force: bool, exclusive: bool = True, follower: bool = False):
        self.store, self.stage, self.schema, self.config = store, stage, schema, config
        self.exclusive = exclusive and not follower  # False: the stage takes finer locks itself (one per mining shard)
        # a DDP rank other than 0: it opens what rank 0 settled and writes nothing into the .partial, so rank 0 may
        # drop a .partial it left unstarted without another rank re-creating it a moment later
        self.follower = follower
        self.inputs = inputs
        self.input_builds = {k: build_id(a) for k, a in sorted(inputs.items())}  # what this run is made from
        self.fingerprint = compute_fingerprint(stage, schema, config,
                                               {k: a.fingerprint for k, a in sorted(inputs.items())})
        self.stage_dir = store.root / stage
        self.final = self.stage_dir / self.fingerprint
        self.dir = self.stage_dir / f"{self.fingerprint}.partial"
        self.lock_path = self.stage_dir / f".{self.fingerprint}.lock"
        self.force = force
        self.existing: Artifact | None = None
        self._said_stale = False
        self.resumed = False  # an interrupted run of this artifact had left work in .partial/
        self._lock_fh = None
        self._t0 = time.time()

    def _reuse(self) -> "StageRun":
        self.existing = Artifact.load(self.final)  # verified: a corrupt artifact is not silently reused
        self.existing.reused = True
        self.store.set_latest(self.stage, self.final)
        return self

    def stale_inputs(self) -> list[str]:
        """The inputs rebuilt since the complete artifact of this fingerprint was made from them.

        A fingerprint names a config and its inputs' fingerprints, not code: an input deleted and rebuilt by
        changed code (a bug fix) keeps its fingerprint but holds other numbers, and what was made from the old
        one must not be reused. Each artifact records the build of every input (`build_id`: a digest of what the
        input holds); an artifact from before that record is taken as current."""
        try:
            recorded = json.loads((self.final / MANIFEST).read_text()).get("inputs") or {}
        except (OSError, ValueError):
            return []
        return [k for k, build in self.input_builds.items()
                if isinstance(recorded.get(k), dict) and recorded[k].get("build") not in (None, build)]

    def _reusable(self) -> bool:
        """A complete artifact of this fingerprint exists, no --force, and it was made from the inputs' current
        builds (said once when it was not)."""
        if not (self.final / MANIFEST).is_file() or self.force:
            return False
        stale = self.stale_inputs()
        if stale and not self._said_stale:
            from cldg.progress import console

            console.print(f"{self.stage}: {self.final} was made from an earlier build of its {', '.join(stale)} "
                          f"input (rebuilt since) - building it again", highlight=False, soft_wrap=True)
            self._said_stale = True
        return not stale

    def _check_partial_inputs(self) -> None:
        """Work left in .partial/ (checkpoints, mined shards, a written manifest) was made from the inputs' builds
        recorded in .partial/.inputs.json: if one was rebuilt since, that work is discarded (exclusive runs, under
        the lock) or refused in one line (workers sharing the partial), never resumed into the new artifact."""
        builds = self.input_builds
        record = self.dir / ".inputs.json"
        try:
            before = json.loads(record.read_text()) if record.is_file() else None
        except (OSError, ValueError):
            before = None
        if before is not None and before != builds:
            changed = ", ".join(k for k in builds if before.get(k) != builds[k])
            if not self.exclusive:
                raise CldgError(f"{self.dir}: holds work made from an earlier build of its {changed} input (rebuilt "
                                f"since) - delete {self.dir} (no worker may be using it) and rerun")
            from cldg.progress import console

            console.print(f"{self.stage}: {self.dir} was made from an earlier build of its {changed} input - "
                          f"starting over", highlight=False, soft_wrap=True)
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        if before != builds:
            tmp = _temp_name(record)
            tmp.write_text(json.dumps(builds))
            os.replace(tmp, record)

    def __enter__(self) -> "StageRun":
        if self.stage_dir.is_dir() and any(self.stage_dir.glob(f".{self.fingerprint}.trash-*")):
            with self._commit_lock():  # a publish killed half-way left resume state behind
                self._clear_leftovers()
        if self._reusable():
            return self._reuse()
        self.stage_dir.mkdir(parents=True, exist_ok=True)
        if self.exclusive:
            self._lock()
            if self._reusable():  # committed while we waited for the lock
                self._unlock()
                return self._reuse()
        if self.follower:
            self._open_as_follower()
            return self
        self._check_partial_inputs()
        if (self.dir / MANIFEST).is_file() and self._finish_interrupted_commit():
            self._unlock()
            return self._reuse()
        if any(not is_bookkeeping(p.name) for p in self.dir.iterdir()) and not any(
                flock_held(p) for p in self.dir.glob(".*.lock")):  # (not a live worker's, in a shared partial)
            self.resumed = True
            from cldg.progress import console

            console.print(f"{self.stage}: found {self.dir} from an interrupted run", highlight=False, soft_wrap=True)
        self._record_run()
        return self

    def _open_as_follower(self) -> None:
        """Read-only: the .partial as rank 0 left it (absent when the workdir is not shared, or when rank 0 has
        already stopped and dropped it), refused in one line if rank 0 recorded other input builds."""
        try:
            before = json.loads((self.dir / ".inputs.json").read_text())
            names = [p.name for p in self.dir.iterdir()]
        except (OSError, ValueError):
            return
        if before != self.input_builds:
            raise CldgError(f"{self.dir}: rank 0 opened it for other builds of its inputs than this rank reads - "
                            "every rank needs the same workdir (a filesystem that every rank sees)")
        self.resumed = any(not is_bookkeeping(n) for n in names)

    def _record_run(self) -> None:
        """.partial/.run.json: what the manifest will say of this run (stage, config, inputs), so that its work
        in progress can be read before it ends (`cldg evaluate --model DIR.partial`, the best checkpoint)."""
        record = {"stage": self.stage, "schema": self.schema, "fingerprint": self.fingerprint, "config": self.config,
                  "inputs": self._manifest_inputs()}
        tmp = _temp_name(self.dir / RUN_RECORD)
        try:
            tmp.write_text(json.dumps(record, indent=2, default=str))
            os.replace(tmp, self.dir / RUN_RECORD)
        except OSError:  # a convenience: a full disk is for the stage's own writes to report
            tmp.unlink(missing_ok=True)

    def _manifest_inputs(self) -> dict[str, dict[str, str]]:
        return {k: {"fingerprint": a.fingerprint, "path": str(a.path), "build": self.input_builds[k]}
                for k, a in self.inputs.items()}

    def _lock(self) -> None:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        fh = os.fdopen(fd, "r+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                info = json.loads(fh.read() or "{}")
                holder = f" (pid {info.get('pid')} on {info.get('host')}, since {info.get('since')})"
            fh.close()
            raise ArtifactLockedError(
                f"{self.stage}/{self.fingerprint}: another cldg process{holder} is writing this artifact (it holds "
                f"{self.lock_path.name}) - wait for it to finish, then rerun: the rerun reuses its result") from None
        with contextlib.suppress(OSError):  # who holds it, for the message above
            fh.truncate(0)
            fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv[:8]}))
            fh.flush()
        self._lock_fh = fh

    def _unlock(self) -> None:
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None and self.exclusive and self.existing is None:
            self._drop_if_unstarted()
        self._unlock()
        if exc is not None and isinstance(exc, Exception) and not isinstance(exc, CldgError) and _disk_full(exc, self.dir):
            raise DiskFullError(
                f"{self.dir}: no space left on the device while writing the '{self.stage}' artifact "
                f"({_free(self.stage_dir)} free now); earlier artifacts and `latest` are untouched - free some space "
                "and rerun the same command") from None

    def _drop_if_unstarted(self) -> None:
        """A run that stopped before writing anything (bad input found inside the stage, no GPU, Ctrl-C at once)
        leaves no .partial/ behind, which `status` would list as an interrupted run. Under the lock; a partial
        holding any work (checkpoints, chunks) is kept for the rerun to resume. Under torchrun too: the other ranks
        open it as followers, which never write into it."""
        if self.dir.is_dir() and all(is_bookkeeping(p.name) for p in self.dir.iterdir()):
            shutil.rmtree(self.dir, ignore_errors=True)

    def _finish_interrupted_commit(self) -> bool:
        """A run killed between writing manifest.json and the rename: finish it if the files match."""
        with self._commit_lock():
            if self._reusable():
                return True
            if not (self.dir / MANIFEST).is_file():
                return False
            try:
                manifest = json.loads((self.dir / MANIFEST).read_text())
                ok = manifest.get("fingerprint") == self.fingerprint and not artifact_problems(
                    self.dir, manifest, full=True, first_only=True, use_cache=False)
            except (OSError, ValueError):
                ok = False
            if not ok:
                (self.dir / MANIFEST).unlink(missing_ok=True)
                return False
            from cldg.progress import console

            console.print(f"{self.stage}: finishing the commit of {self.dir} that an interrupted run had written",
                          highlight=False, soft_wrap=True)
            self._publish(manifest.get("files", {}))
            return True

    def _clear_leftovers(self) -> None:
        """Under the commit lock: remove what a publish killed half-way left (moved-out resume state; the
        old artifact of a --force rebuild once the new one is in place)."""
        for left in self.stage_dir.glob(f".{self.fingerprint}.trash-*"):
            shutil.rmtree(left, ignore_errors=True)
        for left in self.stage_dir.glob(f".{self.fingerprint}.old-*"):
            if (self.final / MANIFEST).is_file() or not (self.dir / MANIFEST).is_file():
                shutil.rmtree(left, ignore_errors=True)

    @contextlib.contextmanager
    def _commit_lock(self):
        self.stage_dir.mkdir(parents=True, exist_ok=True)
        with open(self.stage_dir / f".{self.fingerprint}.commit.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def commit(self, rows: dict[str, int] | None = None, timings: dict[str, float] | None = None,
               extra: dict[str, Any] | None = None, keep: tuple[str, ...] = ()) -> Artifact:
        """Write manifest.json (with sha256 of every file), rename .partial -> final, update latest.

        Files and folders whose names start with '.' or 'resume' are resume state (checkpoints written
        while the stage runs) and are left out of the artifact, unless named in `keep`. When several
        workers may finish at once (non-exclusive runs), the first to commit wins and the others get
        its artifact.
        """
        with self._commit_lock():
            if not self.dir.is_dir() and (self.final / MANIFEST).is_file():
                self.existing = Artifact.load(self.final)
                return self.existing
            return self._commit(rows, timings, extra, keep)

    def _is_resume_state(self, name: str, keep: tuple[str, ...]) -> bool:
        return name not in keep and name != MANIFEST and (name.startswith(".") or name.startswith("resume"))

    def _commit(self, rows, timings, extra, keep) -> Artifact:
        # Order matters for a kill at any moment: the manifest is written (atomically) while the resume
        # state is still there, so a run killed before it resumes, and one killed after it finds a
        # complete manifest in .partial/ and finishes the commit (`_finish_interrupted_commit`).
        files = {}
        stats = {}
        checked = time.time_ns()
        for p in sorted(self.dir.rglob("*")):
            rel = p.relative_to(self.dir)
            if self._is_resume_state(rel.parts[0], keep) or rel.name in (MANIFEST, MANIFEST + ".tmp"):
                continue
            if p.is_file():
                st = p.stat()
                files[str(rel)] = {"sha256": sha256_file(p), "bytes": st.st_size}
                stats[str(rel)] = st
        timings = dict(timings or {})
        timings.setdefault("total_s", round(time.time() - self._t0, 3))
        manifest = {
            "stage": self.stage,
            "schema": self.schema,
            "cldg_version": __version__,
            "fingerprint": self.fingerprint,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "config": self.config,
            "inputs": self._manifest_inputs(),
            "rows": rows or {},
            "timings": timings,
            # floats depend on how many threads summed them (README, Reproducibility): say how many did
            **({"torch_threads": sys.modules["torch"].get_num_threads()} if "torch" in sys.modules else {}),
            "files": files,
            **(extra or {}),
        }
        tmp = self.dir / (MANIFEST + ".tmp")
        with open(tmp, "w") as fh:
            fh.write(json.dumps(manifest, indent=2, sort_keys=False, default=str))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.dir / MANIFEST)
        self._publish(files, stats, checked, keep)
        return self.existing

    def _publish(self, files: dict[str, Any], stats: dict[str, os.stat_result] | None = None,
                 checked: int = 0, keep: tuple[str, ...] = ()) -> None:
        """.partial/ holds a complete manifest: move the resume state out, rename, point `latest` at it.
        Runs under the commit lock, so leftovers of a publish killed half-way can be cleared."""
        self._clear_leftovers()
        trash = self.stage_dir / f".{self.fingerprint}.trash-{os.getpid()}"
        for p in list(self.dir.iterdir()):
            if self._is_resume_state(p.name, keep) or p.name == MANIFEST + ".tmp":
                trash.mkdir(exist_ok=True)
                os.replace(p, trash / p.name)
        if self.final.exists():  # --force: replace the old artifact
            old = self.stage_dir / f".{self.fingerprint}.old-{os.getpid()}"
            os.replace(self.final, old)
            os.replace(self.dir, self.final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.dir, self.final)
        shutil.rmtree(trash, ignore_errors=True)
        self.store.set_latest(self.stage, self.final)
        prefix = f"{self.stage}/{self.fingerprint}/"
        if stats:  # the files were hashed just now: the next reader need not hash them again
            VerifiedCache(self.store.root).update(
                {prefix + rel: stat_key(st) + [files[rel]["sha256"], checked] for rel, st in stats.items()},
                drop_prefix=prefix)
        else:
            VerifiedCache(self.store.root).update({}, drop_prefix=prefix)
        self.existing = Artifact.load(self.final, verify=False)


def flock_held(path: Path) -> bool | None:
    """Does a process hold an flock(2) lock on `path`? Read from /proc/locks, so that asking never takes
    the lock (a probe with LOCK_NB would make a writer starting that instant fail). None: cannot tell."""
    try:
        st = os.stat(path)
        text = Path("/proc/locks").read_text()
    except OSError:
        return None
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in text.splitlines():
        parts = line.split()
        if "FLOCK" in parts and "->" not in parts and want in parts:
            return True
    return False


def _free(path: Path) -> str:
    try:
        st = os.statvfs(path)
        free = st.f_bavail * st.f_frsize
    except OSError:
        return "unknown"
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if free < 1024 or unit == "TiB":
            return f"{free:,.0f} {unit}" if unit == "bytes" else f"{free:,.1f} {unit}"
        free /= 1024
    return "unknown"


def _disk_full(exc: BaseException, where: Path) -> bool:
    """Did `exc` come from a full disk? OSError's errno, the text of wrapped errors (safetensors, torch,
    pyarrow), or a filesystem with (almost) nothing left."""
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(e)
        if "No space left on device" in text or "StorageFull" in text or "os error 28" in text:
            return True
        e = e.__cause__ or e.__context__
    for p in (where, *where.parents):
        if p.exists():
            with contextlib.suppress(OSError):
                st = os.statvfs(p)
                return st.f_bavail * st.f_frsize < (1 << 20)
            break
    return False


class ArtifactStore:
    """The artifacts under one workdir."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def begin(self, stage: str, schema: int, config: dict[str, Any], inputs: dict[str, Artifact] | None = None,
              force: bool = False, exclusive: bool = True, follower: bool = False) -> StageRun:
        return StageRun(self, stage, schema, config, inputs or {}, force, exclusive, follower)

    def set_latest(self, stage: str, final: Path) -> None:
        """Point `latest` at a complete artifact: a new symlink renamed over the old one (atomic)."""
        link = self.root / stage / "latest"
        if link.is_symlink() and os.readlink(link) == final.name:
            return
        tmp = self.root / stage / f".latest.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        os.symlink(final.name, tmp)
        os.replace(tmp, link)

    def latest(self, stage: str, verify: bool = True) -> Artifact | None:
        link = self.root / stage / "latest"
        if not (link / MANIFEST).is_file():
            return None
        return Artifact.load(link, verify=verify)

    def resolve_input(self, stage: str, explicit: Path | None, schema: int, option: str | None = None) -> Artifact:
        """The artifact given by `explicit` (a dir) or else the latest of `stage`, checked for schema
        and verified against its manifest's sha256.

        A missing, incompatible or corrupt artifact is one clear line naming it (or the file) and the
        command that makes it.
        """
        maker = stage_maker(stage)
        if explicit is not None:
            art = Artifact.load(Path(explicit), verify=False)
            where = f"{option or '--' + stage} {explicit}"
        else:
            art = self.latest(stage, verify=False)
            if art is None:
                raise MissingArtifactError(
                    f"no '{stage}' artifact in {self.root} - run `{maker} --workdir {self.root}` first")
            where = str(art.path)
        if art.stage != stage:
            raise MissingArtifactError(f"{where}: is a '{art.stage}' artifact, expected '{stage}'")
        if art.schema != schema:
            raise MissingArtifactError(
                f"{where}: '{stage}' artifact has schema {art.schema}, this cldg needs {schema} - rerun `{maker}`")
        art.verify()
        return art

    def list_artifacts(self) -> list[tuple[str, str, Path, bool, dict[str, Any] | None]]:
        """(stage, fingerprint, path, complete?, manifest) for every artifact dir, complete or partial.

        A directory is a complete artifact when it holds manifest.json, in progress when its name ends
        in .partial; other folders of the workdir (compare/, seeds/, ...) are left out."""
        out = []
        if not self.root.is_dir():
            return out
        for stage_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            latest = (stage_dir / "latest").resolve() if (stage_dir / "latest").exists() else None
            for d in sorted(p for p in stage_dir.iterdir() if p.is_dir() and not p.is_symlink()
                            and not p.name.startswith(".")):
                partial = d.name.endswith(".partial")
                complete = (d / MANIFEST).is_file() and not partial
                if not complete and not partial:
                    continue
                manifest = None
                if complete:
                    try:
                        manifest = json.loads((d / MANIFEST).read_text())
                    except (OSError, ValueError):
                        manifest = {"_unreadable": True}
                    if not isinstance(manifest, dict):
                        manifest = {"_unreadable": True}
                    manifest["_latest"] = latest == d.resolve()
                out.append((stage_dir.name, d.name.removesuffix(".partial"), d, complete, manifest))
        return out
