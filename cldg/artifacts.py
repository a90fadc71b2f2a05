"""Versioned artifact directories: the contract between stages (see DESIGN.md, "Artifacts").

    WORKDIR/<stage>/<fingerprint>/          a complete artifact (manifest.json written last)
    WORKDIR/<stage>/<fingerprint>.partial/  work in progress; checkpoints live here; a lock keeps
                                            two runs out
    WORKDIR/<stage>/latest                  symlink to the newest complete artifact

A stage does:

    store = ArtifactStore(common.workdir)
    pairs = store.resolve_input("prepare", cfg.pairs_dir, PREPARE_SCHEMA)
    with store.begin("index", SCHEMA, config=fingerprint_config(cfg) | {"seed": seed},
                     inputs={"prepare": pairs}, force=common.force) as run:
        if run.existing:                       # same fingerprint already complete: skip
            return run.existing
        ... write files into run.dir (resume from what is there) ...
        return run.commit(rows={...}, timings={...}, extra={...})
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cldg import __version__
from cldg.errors import CldgError, MissingArtifactError

MANIFEST = "manifest.json"

# The command that makes each stage's artifact, for error messages.
MAKER = {
    "prepare": "cldg prepare",
    "index": "cldg index",
    "matcher": "cldg train-matcher",
    "samples": "cldg mine-samples",
    "reference": "cldg pretrain",
    "contrastive": "cldg contrastive-train",
    "eval": "cldg evaluate",
}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
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
    def load(cls, path: Path) -> "Artifact":
        path = Path(path)
        mpath = path / MANIFEST
        if not mpath.is_file():
            raise MissingArtifactError(f"{path}: not a complete cldg artifact (no {MANIFEST})")
        try:
            manifest = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise MissingArtifactError(f"{mpath}: unreadable manifest ({exc})") from None
        return cls(manifest["stage"], manifest["fingerprint"], path.resolve(), manifest)


class StageRun:
    """One attempt at producing an artifact; use through `ArtifactStore.begin` as a context manager."""

    def __init__(self, store: "ArtifactStore", stage: str, schema: int, config: dict[str, Any],
                 inputs: dict[str, Artifact], force: bool, exclusive: bool = True):
        self.store, self.stage, self.schema, self.config = store, stage, schema, config
        self.exclusive = exclusive  # False: the stage takes finer locks itself (e.g. one per mining shard)
        self.inputs = inputs
        self.fingerprint = compute_fingerprint(stage, schema, config,
                                               {k: a.fingerprint for k, a in sorted(inputs.items())})
        self.stage_dir = store.root / stage
        self.final = self.stage_dir / self.fingerprint
        self.dir = self.stage_dir / f"{self.fingerprint}.partial"
        self.force = force
        self.existing: Artifact | None = None
        self._lock_fh = None
        self._t0 = time.time()

    def __enter__(self) -> "StageRun":
        if (self.final / MANIFEST).is_file() and not self.force:
            self.existing = Artifact.load(self.final)
            self.existing.reused = True
            self.store.set_latest(self.stage, self.final)
            return self
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.exclusive:
            return self
        self._lock_fh = open(self.dir / ".lock", "w")
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_fh.close()
            self._lock_fh = None
            raise CldgError(f"{self.dir}: another cldg run is writing this artifact (lock held)") from None
        return self

    def __exit__(self, *exc) -> None:
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    def commit(self, rows: dict[str, int] | None = None, timings: dict[str, float] | None = None,
               extra: dict[str, Any] | None = None, keep: tuple[str, ...] = ()) -> Artifact:
        """Write manifest.json (with sha256 of every file), rename .partial -> final, update latest.

        Files and folders whose names start with '.' or 'resume' are resume state (checkpoints written
        while the stage runs) and are removed before hashing, unless named in `keep`. When several
        workers may finish at once (non-exclusive runs), the first to commit wins and the others get
        its artifact.
        """
        commit_lock = open(self.stage_dir / f".{self.fingerprint}.commit.lock", "w")
        fcntl.flock(commit_lock, fcntl.LOCK_EX)
        try:
            if not self.dir.is_dir() and (self.final / MANIFEST).is_file():
                self.existing = Artifact.load(self.final)
                return self.existing
            return self._commit(rows, timings, extra, keep)
        finally:
            fcntl.flock(commit_lock, fcntl.LOCK_UN)
            commit_lock.close()

    def _commit(self, rows, timings, extra, keep) -> Artifact:
        for p in list(self.dir.iterdir()):
            if p.name == ".lock" or p.name in keep:
                continue
            if p.name.startswith(".") or p.name.startswith("resume"):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        files = {}
        for p in sorted(self.dir.rglob("*")):
            if p.is_file() and p.name != ".lock":
                files[str(p.relative_to(self.dir))] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        timings = dict(timings or {})
        timings.setdefault("total_s", round(time.time() - self._t0, 3))
        manifest = {
            "stage": self.stage,
            "schema": self.schema,
            "cldg_version": __version__,
            "fingerprint": self.fingerprint,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "config": self.config,
            "inputs": {k: {"fingerprint": a.fingerprint, "path": str(a.path)} for k, a in self.inputs.items()},
            "rows": rows or {},
            "timings": timings,
            "files": files,
            **(extra or {}),
        }
        tmp = self.dir / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False, default=str))
        os.replace(tmp, self.dir / MANIFEST)
        (self.dir / ".lock").unlink(missing_ok=True)
        if self.final.exists():  # --force: replace the old artifact
            trash = self.stage_dir / f".{self.fingerprint}.old-{os.getpid()}"
            os.replace(self.final, trash)
            os.replace(self.dir, self.final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(self.dir, self.final)
        self.store.set_latest(self.stage, self.final)
        self.existing = Artifact.load(self.final)
        return self.existing


class ArtifactStore:
    """The artifacts under one workdir."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def begin(self, stage: str, schema: int, config: dict[str, Any], inputs: dict[str, Artifact] | None = None,
              force: bool = False, exclusive: bool = True) -> StageRun:
        return StageRun(self, stage, schema, config, inputs or {}, force, exclusive)

    def set_latest(self, stage: str, final: Path) -> None:
        link = self.root / stage / "latest"
        tmp = self.root / stage / f".latest.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        os.symlink(final.name, tmp)
        os.replace(tmp, link)

    def latest(self, stage: str) -> Artifact | None:
        link = self.root / stage / "latest"
        if not (link / MANIFEST).is_file():
            return None
        return Artifact.load(link)

    def resolve_input(self, stage: str, explicit: Path | None, schema: int, option: str | None = None) -> Artifact:
        """The artifact given by `explicit` (a dir) or else the latest of `stage`, checked for schema.

        A missing or incompatible artifact is one clear line naming it and the command that makes it.
        """
        maker = MAKER.get(stage, f"cldg {stage}")
        if explicit is not None:
            art = Artifact.load(Path(explicit))
            where = f"{option or '--' + stage} {explicit}"
        else:
            art = self.latest(stage)
            if art is None:
                raise MissingArtifactError(
                    f"no '{stage}' artifact in {self.root} - run `{maker} --workdir {self.root}` first")
            where = str(art.path)
        if art.stage != stage:
            raise MissingArtifactError(f"{where}: is a '{art.stage}' artifact, expected '{stage}'")
        if art.schema != schema:
            raise MissingArtifactError(
                f"{where}: '{stage}' artifact has schema {art.schema}, this cldg needs {schema} - rerun `{maker}`")
        return art

    def list_artifacts(self) -> list[tuple[str, str, Path, bool, dict[str, Any] | None]]:
        """(stage, fingerprint, path, complete?, manifest) for every artifact dir, complete or partial."""
        out = []
        if not self.root.is_dir():
            return out
        for stage_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            latest = (stage_dir / "latest").resolve() if (stage_dir / "latest").exists() else None
            for d in sorted(p for p in stage_dir.iterdir() if p.is_dir() and not p.is_symlink()
                            and not p.name.startswith(".")):
                complete = (d / MANIFEST).is_file() and not d.name.endswith(".partial")
                manifest = json.loads((d / MANIFEST).read_text()) if complete else None
                if manifest is not None:
                    manifest["_latest"] = latest == d.resolve()
                out.append((stage_dir.name, d.name.removesuffix(".partial"), d, complete, manifest))
        return out
