"""The HDF5 result store: every result pyanalyzer computes, cached under a content key.

A result is keyed by the model file's sha256, the method name and the sha256 of the canonical
JSON of the method's parameters (:class:`Key`). The store is a folder (default
``$PYANALYZER_STORE``, else ``~/.cache/pyanalyzer/store``; see :func:`default_path`) holding one
small HDF5 file per entry, so that a write costs what it writes, whatever the store holds::

    <store>/format.json                 {"format": "pyanalyzer-store", "format_version": 2}
    <store>/entries/<model_sha256>/<method...>/<params_sha256>.h5       one entry
        root attrs: model_sha256, method, params_sha256, parameters (canonical JSON),
                    pyanalyzer_version, created (ISO 8601 UTC), model_file,
                    preprocessing (canonical JSON), extra (canonical JSON)
        /arrays/<name>                  the entry's arrays; names with "/" are sub-groups
    <store>/index.sqlite                listing cache (see below); deleting it loses nothing
    <store>/scratch/<...>/              temporary files of computations (Store.scratch_dir)

A method may contain "/" (``"dissect/partial"``); it then spans several folder levels. Method
segments start with a letter and are never 64 hex digits, so folders and entry files cannot be
confused. Unicode arrays are stored as UTF-8 strings marked with the dataset attr
``pyanalyzer_dtype="str"``.

Entries are immutable once written. A resumable computation stores its progress as an
ordinary entry under :meth:`Key.partial` (method ``"<method>/partial"``) and finally writes the
real key and drops the checkpoint in one :meth:`Store.transaction`; :func:`cached` does all of
that for a computation (and hands it a scratch folder for large temporary files).

Transactions. :meth:`Store.transaction` writes the entries it puts to temp files as the block
runs and, when the block ends normally, renames them into place and then does its removals;
an exception in the block applies nothing and leaves no temp file. The apply step is atomic
per entry, not as a whole: a crash during it can leave some of the changes done, never half an
entry, and because puts come before removals, a checkpoint is removed only after the final
result is in place. Transactions are not isolated from concurrent writers.

Atomicity and concurrency. A writer writes an entry under a temporary name in the entry's own
folder (``.<params>.h5.tmp-<pid>-<hex>.h5``, see :mod:`pyanalyzer._io`), fsyncs it when the
store was opened with ``fsync=True``, and ``os.replace``-s it onto its final name (then fsyncs
the folder). A writer killed at any moment leaves the old version of its entry (or none) plus
an orphan temp file, which the next write into that folder, :meth:`Store.entries` or
:meth:`Store.compact` deletes once its process is gone. Writers of different keys touch
different files and take no lock, so concurrent writers all land; of two writers of the same
key the last rename wins, each version complete. Readers take no lock and never wait: a rename
is atomic and an open file keeps the inode it opened, so each entry is seen complete or not at
all. Removing an entry unlinks its file and prunes the folders it leaves empty (a writer racing
the pruning recreates the folder and retries).

The listing index. :meth:`Store.entries` must not open every entry file, so
``index.sqlite`` (SQLite, WAL, short timeouts) caches each entry's summary under its relative
path with the file's (size, mtime_ns, inode). The file system stays the truth: a listing walks
``entries/`` (names and one ``stat`` per file), reads the attributes only of files the index
does not know or that changed, and drops the rows of files that are gone. Writers never touch
the index, so a writer killed after its rename cannot hide its entry. Where the index cannot be
written (a read-only folder), the listing reads the attributes directly.

Format 1. Earlier versions kept the whole store in ONE HDF5 file (root attrs
``format="pyanalyzer-store"``, ``format_version=1``; entries as groups
``/entries/<model>/<method...>/<params>`` with the attrs above and ``arrays/``). Such a file is
read directly (no lock, nothing written) until the first write, which migrates it: under an
``flock`` on the sidecar ``<store>.lock`` (the lock old writers took, so that they cannot
interleave), every entry is copied with its attrs into its own file of a new folder built
beside the store, and that folder then takes the file's place in one atomic
``renameat2(RENAME_EXCHANGE)`` (or, where the file system lacks it, by renaming the file aside
to ``.<name>.v1-backup`` first; a store path that is then missing is read from that backup and
migrated again). A crash mid-migration leaves the old file intact.

Paths a store refuses (:class:`~pyanalyzer.errors.StoreError`, one line): an empty path, a
device, FIFO or socket (at once, when the :class:`Store` is made); a foreign folder or corrupt
file; and for writing (:meth:`Store.check_writable`, which the first write also runs, and which
a command that will store results calls before it starts) a store folder or format-1 file that
is read-only (a read-only mount, no permission, or no write bit at all, which is refused even
for root rather than rewritten), a missing store whose nearest existing folder is not writable,
and a path through a dangling symlink whose target's folder does not exist (no folders are
made behind it). Reading a read-only store works.

Compression. Arrays over :data:`COMPRESS_MIN_BYTES` are chunked (about 1 MiB a chunk) and
compressed with the codec :data:`CODECS` picks for their dtype and for how well a small sample
of them compresses; random data is stored raw, at disk speed.

Modules: :mod:`._keys` (canonical JSON, keys, entries), :mod:`._hdf5` (entry files, codecs),
:mod:`._fs` (orphans, folder walk, listing index), :mod:`._store` (:class:`Store`),
:mod:`._cache` (:func:`cached`). Import from ``pyanalyzer.store``.
"""

from __future__ import annotations

from pyanalyzer.store._cache import Cached, Checkpoint, Storable, cached
from pyanalyzer.store._hdf5 import CODECS, COMPRESS_MIN_BYTES
from pyanalyzer.store._keys import (
    PARTIAL_SUFFIX,
    STORE_ENV,
    Entry,
    EntryInfo,
    Key,
    canonical_json,
    default_path,
    file_sha256,
    params_digest,
)
from pyanalyzer.store._store import FORMAT, FORMAT_VERSION, MARKER, Store, StoreTransaction

__all__ = [
    "CODECS",
    "COMPRESS_MIN_BYTES",
    "Cached",
    "Checkpoint",
    "Entry",
    "EntryInfo",
    "FORMAT",
    "FORMAT_VERSION",
    "Key",
    "MARKER",
    "PARTIAL_SUFFIX",
    "STORE_ENV",
    "Storable",
    "Store",
    "StoreTransaction",
    "cached",
    "canonical_json",
    "default_path",
    "file_sha256",
    "params_digest",
]
