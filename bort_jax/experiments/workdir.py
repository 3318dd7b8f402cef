"""The one guard for output folders: names, lock, overwrite rules, writes.

Training runs, the frontier, the demo and the examples write only through
a :class:`RunFolder`:

- :func:`check_path` refuses, before anything is written, a path orbax
  cannot checkpoint into (it reads ``[``, ``]`` and ``\\`` as glob or escape
  characters, so checkpoints would not restore or would land elsewhere, and
  a component such as ``gs:`` as a cloud URL's scheme) and
  an output folder that cannot be written (read-only, full, not a folder).
- :meth:`RunFolder.open` holds an exclusive ``fcntl.flock`` on a lock file
  holding the owner's pid: a second process is refused, naming the pid; a
  lock left by a killed process (``kill -9``) is noticed and taken over. The
  owner removes the lock file before releasing it, and a lock counts only on
  the file still at the lock path, so the lock stays exclusive while
  processes come and go; a lock path that is not a regular file is refused.
  Not the ``filelock`` package: its Unix lock leaves the lock file in the
  folder after release, by design (it counts a lock on whichever file is
  at the path, so unlinking it would split waiters over two files); the
  lock here is gone when its run ends (the folder holds what the run
  wrote) and names the pid that holds it. (Its two older faults are
  fixed: ``O_NOFOLLOW`` since 3.20.1, and a refused process no longer
  truncates the file since 3.30.)
- :meth:`RunFolder.clear` removes only the names it is given, and the
  callers first check that the folder is theirs: a training run's
  ``config.json`` parses as a training config; the demo, the examples and
  the frontier leave a marker file, and open their folders by one rule,
  :func:`open_output`.
- :meth:`RunFolder.write_text` and :meth:`RunFolder.atomic` write through
  :func:`atomic_file`, the one atomic writer (the data cache's too): a
  temporary file with a unique name, opened with
  ``O_CREAT | O_EXCL | O_NOFOLLOW``, synced, then ``os.replace``-d: a
  planted symlink is never followed and a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import stat
from pathlib import Path
from typing import Any, Iterator, Sequence

from bort_jax.experiments import errors

#: The lock file each open folder holds (with the owner's pid).
LOCK_NAME = ".bort-jax.lock"
#: The marker that the demo and the examples leave in their folders.
MARKER_NAME = ".bort-jax-output.json"
#: Characters orbax's checkpoint paths cannot take (``[`` ``]`` ``\\``), and
#: the other glob characters, refused in an output path.
UNSAFE_CHARACTERS = "[]\\*?"

_TEMP_SUFFIX = ".tmp"
#: A path component that looks like a URL scheme (``gs:``, ``s3:``): after
#: ``os.path.abspath`` folds ``gs://b`` into ``gs:/b``, orbax (etils,
#: tensorstore) turns it back into ``gs://b`` and writes to a bucket.
_SCHEME_COMPONENT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


class RunDirectoryError(errors.ExperimentError):
  """An output folder cannot be used as asked (name, lock, contents, disk)."""


def _one_line(e: OSError) -> str:
  return e.strerror or str(e).splitlines()[0]


def check_path(path: str | os.PathLike[str]) -> Path:
  """Checks an output path before anything is written; returns it absolute.

  Args:
    path: the output folder (it may not exist yet).

  Returns:
    The absolute path.

  Raises:
    RunDirectoryError: the path holds a character orbax cannot take or a
      folder named like a URL scheme (``gs:``), is not a folder, or its
      folder (or nearest existing parent) is not writable or has no free
      space.

  Examples:
    >>> from bort_jax.experiments.workdir import check_path
    >>> check_path("runs/sweep[lr=0.003]")
    Traceback (most recent call last):
    ...
    bort_jax.experiments.workdir.RunDirectoryError: The output path ...
  """
  text = os.fspath(path)
  if not text:
    raise RunDirectoryError("The output path is empty; pass a folder name.")
  absolute = Path(os.path.abspath(text))
  bad = sorted({c for c in str(absolute) if c in UNSAFE_CHARACTERS})
  if bad:
    raise RunDirectoryError(
        f"The output path {str(absolute)!r} holds {' '.join(bad)}, which "
        "orbax reads as glob or escape characters (checkpoints would not "
        "restore, or would be written elsewhere); choose a name without "
        f"{' '.join(UNSAFE_CHARACTERS)}, e.g. with _ or = instead.")
  schemes = [p for p in absolute.parts if _SCHEME_COMPONENT.fullmatch(p)]
  if schemes:
    raise RunDirectoryError(
        f"The output path {str(absolute)!r} has a folder named "
        f"{schemes[0]!r}, which orbax reads as a URL scheme (it would write "
        f"to {schemes[0]}//...); choose a name without the trailing ':'.")
  existing = absolute
  while not existing.exists():
    if existing.parent == existing:
      break
    existing = existing.parent
  if existing == absolute and not absolute.is_dir():
    raise RunDirectoryError(f"{text!r} exists and is not a folder.")
  if not existing.is_dir():
    raise RunDirectoryError(
        f"Cannot create {text!r}: {str(existing)!r} is not a folder.")
  probe = existing / f".bort-jax-probe-{secrets.token_hex(6)}{_TEMP_SUFFIX}"
  try:
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                 0o600)
    try:
      os.write(fd, b"\0")
    finally:
      os.close(fd)
      os.unlink(probe)
    space = os.statvfs(existing)
  except OSError as e:
    raise RunDirectoryError(
        f"Cannot write to {str(existing)!r}: {_one_line(e)}; choose a "
        "writable --out.") from None
  if space.f_bavail * space.f_frsize < 1 << 20:
    raise RunDirectoryError(
        f"Cannot write to {str(existing)!r}: no space left on the device; "
        "free some, or choose another --out.")
  return absolute


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _check_lock_file(lock: Path, mode: int) -> None:
  """Refuses a lock file that is not a regular file (a FIFO, a link, …)."""
  if stat.S_ISREG(mode):
    return
  kind = ("a symbolic link" if stat.S_ISLNK(mode) else
          "a folder" if stat.S_ISDIR(mode) else
          "a FIFO" if stat.S_ISFIFO(mode) else
          "a socket" if stat.S_ISSOCK(mode) else "a device")
  raise RunDirectoryError(
      f"The lock file {str(lock)!r} is {kind}, not a regular file; remove it, "
      "or choose another --out.")


def _lock(folder: Path) -> int:
  """Takes the folder's lock; returns the locked lock file's descriptor.

  The holder unlinks the lock file before it releases it (so a finished run
  leaves no lock file). A process that opened the file before that locks an
  unlinked inode once it is released, and a newcomer creates and locks a new
  file: both would hold the folder. So a lock counts only if the file is
  still the one at the lock path; otherwise it is taken again.
  """
  lock = folder / LOCK_NAME
  while True:
    try:
      _check_lock_file(lock, os.lstat(lock).st_mode)
    except FileNotFoundError:
      pass
    try:
      # O_NONBLOCK: opening a FIFO planted there must not wait for a writer.
      fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                   | os.O_NONBLOCK, 0o644)
    except OSError as e:
      raise RunDirectoryError(
          f"Cannot use {str(folder)!r}: cannot open its lock file "
          f"{str(lock)!r} ({_one_line(e)}); remove it, or choose another "
          "--out.") from None
    try:
      held = os.fstat(fd)
      _check_lock_file(lock, held.st_mode)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        owner = os.pread(fd, 64, 0).decode(errors="replace").strip()
        raise RunDirectoryError(
            f"{str(folder)!r} is in use by another bort-jax process (pid "
            f"{owner or 'unknown'}); wait for it to finish, or choose another "
            "--out.") from None
      try:
        current = os.lstat(lock)
      except FileNotFoundError:
        current = None
      if current is not None and os.path.samestat(current, held):
        return fd
    except BaseException:
      os.close(fd)
      raise
    os.close(fd)  # the previous holder unlinked it: take the new one


class RunFolder:
  """An output folder held under an exclusive lock until :meth:`close`.

  Use :meth:`open`, as a context manager.

  Attributes:
    path: the folder's absolute path.
    created: whether :meth:`open` created it.
    notes: messages for the user (e.g. a stale lock was cleared).
  """

  def __init__(self, path: Path, lock_fd: int, created: bool,
               notes: list[str]):
    self.path, self._lock_fd, self.created, self.notes = (
        path, lock_fd, created, notes)

  @classmethod
  def open(cls, path: str | os.PathLike[str]) -> "RunFolder":
    """Checks the path (:func:`check_path`), creates the folder, locks it.

    Args:
      path: the output folder.

    Returns:
      The locked :class:`RunFolder`.

    Raises:
      RunDirectoryError: as :func:`check_path`, or another live process
        holds the folder.

    Examples:
      >>> import os, tempfile
      >>> from bort_jax.experiments.workdir import RunFolder
      >>> with RunFolder.open(os.path.join(tempfile.mkdtemp(), "run")) as f:
      ...   f.write_text("notes.txt", "hello")
      ...   sorted(f.entries())
      ['notes.txt']
    """
    absolute = check_path(path)
    created = not absolute.exists()
    try:
      absolute.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      raise RunDirectoryError(
          f"Cannot use {str(absolute)!r}: {_one_line(e)}.") from None
    fd = _lock(absolute)
    notes = []
    try:
      previous = os.pread(fd, 64, 0).decode(errors="replace").strip()
      if previous.isdigit() and int(previous) != os.getpid():
        state = ("running without the lock" if _pid_alive(int(previous))
                 else "no longer running")
        notes.append(f"cleared a stale lock of pid {previous} ({state}) in "
                     f"{str(absolute)!r}")
      os.ftruncate(fd, 0)
      os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as e:
      os.close(fd)
      raise RunDirectoryError(
          f"Cannot use {str(absolute)!r}: {_one_line(e)}.") from None
    except BaseException:
      os.close(fd)
      raise
    return cls(absolute, fd, created, notes)

  def __enter__(self) -> "RunFolder":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self, *, remove_if_empty: bool = False) -> None:
    """Releases the lock (and removes the folder if asked and empty)."""
    if self._lock_fd is None:
      return
    fd, self._lock_fd = self._lock_fd, None
    try:
      # Unlinked while still held: a process waiting on this file then sees
      # that it is gone (see _lock) instead of taking a lock nobody else sees.
      with contextlib.suppress(OSError):
        if os.path.samestat(os.lstat(self.path / LOCK_NAME), os.fstat(fd)):
          os.unlink(self.path / LOCK_NAME)
    finally:
      os.close(fd)
    if remove_if_empty and self.created:
      with contextlib.suppress(OSError):
        self.path.rmdir()

  def entries(self) -> list[str]:
    """The folder's names, without the lock file."""
    return [n for n in os.listdir(self.path) if n != LOCK_NAME]

  def read_text(self, name: str) -> str | None:
    """A file's text (symlinks not followed), or ``None`` if absent."""
    try:
      fd = os.open(self.path / name, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
      return None
    except OSError as e:
      raise RunDirectoryError(
          f"Cannot read {str(self.path / name)!r}: {_one_line(e)}.") from None
    with os.fdopen(fd, encoding="utf-8", errors="replace") as f:
      return f.read()

  def clear(self, names: Sequence[str]) -> None:
    """Removes the given names (and our stale temp files), nothing else.

    Symlinks are removed, never followed.
    """
    for name in self.entries():
      stale_temp = name.startswith(".") and name.endswith(_TEMP_SUFFIX) and (
          name[1:].split(".tmp-")[0] in names)
      if name not in names and not stale_temp:
        continue
      path = self.path / name
      try:
        if path.is_dir() and not path.is_symlink():
          shutil.rmtree(path)
        else:
          path.unlink()
      except OSError as e:
        raise RunDirectoryError(
            f"Cannot remove {str(path)!r}: {_one_line(e)}.") from None

  @contextlib.contextmanager
  def atomic(self, name: str, mode: str = "w") -> Iterator[Any]:
    """:func:`atomic_file` for ``name`` in the folder.

    Args:
      name: the file's name in the folder.
      mode: ``"w"`` (text) or ``"wb"`` (bytes).

    Yields:
      The temporary file.

    Raises:
      RunDirectoryError: the file cannot be written (e.g. the disk is full).
    """
    try:
      with atomic_file(self.path / name, mode) as f:
        yield f
    except OSError as e:
      raise RunDirectoryError(
          f"Cannot write {str(self.path / name)!r}: {_one_line(e)}.") from None

  def holds(self, kind: str) -> bool:
    """Whether the folder carries ``kind``'s marker (:meth:`mark`)."""
    return marker_kind(self.path) == kind

  def mark(self, kind: str) -> None:
    """Leaves ``kind``'s marker, by which :meth:`holds` knows the folder."""
    self.write_json(MARKER_NAME, {"kind": kind})

  def write_text(self, name: str, text: str) -> None:
    """Writes ``name`` atomically (see :meth:`atomic`)."""
    with self.atomic(name) as f:
      f.write(text)

  def write_json(self, name: str, obj: Any) -> None:
    """Writes strict JSON (``NaN`` and infinities become ``null``)."""
    self.write_text(name, json.dumps(strict_json(obj), indent=2,
                                     allow_nan=False) + "\n")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "w"
                ) -> Iterator[Any]:
  """A new file object that replaces ``path`` when the block succeeds.

  The one atomic writer of the application (run folders, the demo, the
  frontier, the data cache): the block writes a temporary file with a
  unique name beside ``path`` (``.<name>.tmp-<random>.tmp``), opened
  ``O_CREAT | O_EXCL | O_NOFOLLOW`` so that a planted symlink is never
  followed; it is flushed to disk (``fsync``) and moved over ``path`` with
  ``os.replace``, so a reader sees the old file or the whole new one. When
  the block fails, the temporary file is removed and ``path`` is unchanged.

  Args:
    path: the file to write; its folder must exist.
    mode: ``"w"`` (UTF-8 text) or ``"wb"`` (bytes).

  Yields:
    The temporary file.

  Raises:
    OSError: it cannot be written (e.g. the disk is full).

  Examples:
    >>> import pathlib, tempfile
    >>> from bort_jax.experiments.workdir import atomic_file
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "notes.txt"
    >>> with atomic_file(path) as f:
    ...   _ = f.write("hello")
    >>> path.read_text(), sorted(p.name for p in path.parent.iterdir())
    ('hello', ['notes.txt'])
  """
  path = Path(path)
  temp = path.with_name(
      f".{path.name}.tmp-{secrets.token_hex(8)}{_TEMP_SUFFIX}")
  flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
  # 0o666: the umask gives the usual permissions.
  fd = os.open(temp, flags, 0o666)
  try:
    kwargs = {} if "b" in mode else {"encoding": "utf-8", "newline": ""}
    with os.fdopen(fd, mode, **kwargs) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(temp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.unlink(temp)
    raise


def strict_json(obj: Any) -> Any:
  """``obj`` with every non-finite float replaced by ``None``.

  Examples:
    >>> from bort_jax.experiments.workdir import strict_json
    >>> strict_json({"loss": float("nan"), "acc": [0.5, float("inf")]})
    {'loss': None, 'acc': [0.5, None]}
  """
  if isinstance(obj, float):
    return obj if obj == obj and abs(obj) != float("inf") else None
  if isinstance(obj, dict):
    return {k: strict_json(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [strict_json(v) for v in obj]
  return obj


def output_above(path: str | os.PathLike[str]) -> tuple[Path, str] | None:
  """The marked output (demo, frontier, example) that ``path`` lies inside.

  Such an output keeps the runs under it as its own records (the
  frontier's ``runs.json`` lists each point's figures): a training run
  written into one of them by hand would leave that record stale.

  Args:
    path: a folder (it may not exist yet).

  Returns:
    ``(folder, kind)`` of the nearest folder above ``path`` holding a marker
    (:meth:`RunFolder.mark`), above the path as written or above where
    its symlinks lead, or ``None``. A marker that is not a regular file or
    not a marker's JSON is not one.

  Examples:
    >>> import tempfile, pathlib
    >>> from bort_jax.experiments.workdir import open_output, output_above
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "sweep"
    >>> with open_output(out, kind="frontier", files=()):
    ...   pass
    >>> output_above(out / "points" / "a_seed0")[1]
    'frontier'
    >>> output_above(out) is None
    True
  """
  lexical = Path(os.path.abspath(path)).parents
  real = Path(os.path.realpath(path)).parents  # a symlink may hide one
  for folder in [*lexical, *(p for p in real if p not in lexical)]:
    kind = marker_kind(folder)
    if kind is not None:
      return folder, kind
  return None


def marker_kind(folder: Path) -> str | None:
  """The kind of the marker (:meth:`RunFolder.mark`) in ``folder``, or
  ``None``: none, not a regular file (never followed, never waited on), or
  not a marker's JSON."""
  try:
    fd = os.open(folder / MARKER_NAME,
                 os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
  except OSError:
    return None
  with os.fdopen(fd, encoding="utf-8", errors="replace") as f:
    try:
      marker = json.loads(f.read(4096)) if stat.S_ISREG(
          os.fstat(fd).st_mode) else None
    except (OSError, ValueError):
      return None
  kind = marker.get("kind") if isinstance(marker, dict) else None
  return kind if isinstance(kind, str) and marker == {"kind": kind} else None


def open_output(path: str | os.PathLike[str], *, kind: str,
                files: Sequence[str], overwrite: bool = False,
                resume: bool = False) -> RunFolder:
  """Opens the output folder of the demo, an example or the frontier.

  The one rule of every writer that is not a training run (a training run
  is recognised by its ``config.json``, see
  :func:`bort_jax.experiments.train_folder.open_run`): an absent or empty
  folder (or one holding only this ``kind``'s marker, what a run that
  failed before writing leaves) is used as it is; a non-empty one only if
  it holds this
  ``kind``'s marker (:meth:`RunFolder.holds`), and then

  - with ``resume``, as it is: the writer continues what it holds (the
    frontier, the authors' protocol);
  - with ``overwrite``, after removing ``files`` (and the marker), every
    other file kept;
  - with neither, not at all.

  Args:
    path: the output folder.
    kind: what writes it (``"demo"``, ``"frontier"``, …).
    files: the names it writes (what ``overwrite`` removes).
    overwrite: replace the files of an earlier output of the same kind.
    resume: continue an earlier output of the same kind.

  Returns:
    The locked :class:`RunFolder`, marked as ``kind``'s.

  Raises:
    RunDirectoryError: the folder is refused (see above, and :meth:`open`).

  Examples:
    >>> import tempfile, pathlib
    >>> from bort_jax.experiments.workdir import open_output
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "sweep"
    >>> with open_output(out, kind="sweep", files=(), resume=True) as f:
    ...   f.write_text("runs.json", "[]")
    >>> with open_output(out, kind="sweep", files=(), resume=True) as f:
    ...   f.read_text("runs.json")
    '[]'
    >>> open_output(out, kind="demo", files=(), resume=True)
    Traceback (most recent call last):
    ...
    bort_jax.experiments.workdir.RunDirectoryError: ... holds no demo ...
  """
  if resume and overwrite:
    raise RunDirectoryError("Pass either --resume or --overwrite, not both.")
  folder = RunFolder.open(path)
  try:
    where = str(folder.path)
    entries = folder.entries()
    # Its marker alone: a run of this kind that failed before it wrote.
    if entries and not (entries == [MARKER_NAME] and folder.holds(kind)):
      if not folder.holds(kind):
        raise RunDirectoryError(
            (f"--overwrite refused: {where!r} holds no earlier {kind} output"
             if overwrite else f"{where!r} is not empty and holds no {kind}")
            + f" (no {MARKER_NAME} of kind {kind!r}), so nothing in it is "
            "changed; choose another --out.")
      if overwrite:
        folder.clear(list(files) + [MARKER_NAME])
      elif not resume:
        raise RunDirectoryError(
            f"Output folder {where!r} already exists and is not empty. Pass "
            f"--overwrite to replace the files of an earlier {kind} in it "
            "(other files are kept), or choose another --out.")
    folder.mark(kind)
  except BaseException:
    folder.close(remove_if_empty=True)
    raise
  return folder


def open_script_output(path: str | os.PathLike[str], *, kind: str,
                       files: Sequence[str], overwrite: bool = False,
                       resume: bool = False) -> RunFolder:
  """:func:`open_output` for a script (the examples): a refused folder ends
  the script with its one line, ``<kind>: error: …``, and exit status 1.

  Examples:
    >>> import tempfile, pathlib
    >>> from bort_jax.experiments.workdir import open_script_output
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "study"
    >>> with open_script_output(out, kind="study", files=("a.txt",),
    ...                         overwrite=False) as folder:
    ...   folder.write_text("a.txt", "done")
    >>> try:
    ...   open_script_output(out, kind="study", files=("a.txt",),
    ...                      overwrite=False)
    ... except SystemExit as e:
    ...   print(str(e).split(":")[:2])
    ['study', ' error']
  """
  try:
    return open_output(path, kind=kind, files=files, overwrite=overwrite,
                       resume=resume)
  except RunDirectoryError as e:
    raise SystemExit(f"{kind}: error: {e}") from None

