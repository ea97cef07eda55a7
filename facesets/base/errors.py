"""Every error facesets raises on purpose, in one tree.

    FacesetsError                  base: a fatal problem the user can act on (exit code 1)
    ├── ConfigError                bad option values or environment
    ├── ModelPackError             a model pack (faces or CLIP) is missing, unreadable or of an unknown layout
    ├── ProviderError              no usable onnxruntime execution provider
    ├── PathMappingError           a path cannot be mapped between Linux and Windows forms
    ├── QueueError                 queue.json is missing, malformed or of an unknown version
    ├── StateError                 the index state or the CLIP store cannot be used
    ├── DatabaseError              the database cannot be reached or used
    │   ├── SchemaError            the database schema is older or newer than this code
    │   └── PersonError            a person, face or name given on the command line does not fit the database
    ├── CacheError                 a face cache cannot be used
    │   ├── CacheCorruptError      the file is not a readable facesets cache (never overwritten)
    │   ├── CacheVersionError      the cache's schema is newer or older than this code reads
    │   └── CacheModelMismatchError  the cache was made by another model pack
    ├── FaceSetError               facesets_swap_ready/ or a cluster plan cannot be used (bad manifest, ...)
    ├── SchedulerError             the Dask scheduler of a distributed embed cannot be reached or went away
    │                              (exit code 2: what came back is flushed, the same command resumes)
    ├── WorkerRefusedError         a Dask worker's model pack is not the driver's (embeddings never mix)
    └── ImmichError                the Immich server cannot be used (wrong URL, bad answer)
        ├── ImmichAuthError        the API key was rejected, or belongs to another user than expected
        └── ImmichUnavailableError the server stopped answering mid-run (exit code 2: run the same command again)

    ImageLoadError                 one image could not be decoded: recorded and counted, never fatal

Each error's message says what went wrong, with the path or value, and how to fix it where we know.
"""

from __future__ import annotations


class FacesetsError(Exception):
    """A fatal error with a message meant for the user."""

    exit_code = 1


class ConfigError(FacesetsError):
    """An option or environment variable has a value we cannot use."""


class ModelPackError(FacesetsError):
    """A model pack is missing, unreadable or not of a known layout."""


class ProviderError(FacesetsError):
    """No requested execution provider is available in this onnxruntime."""


class PathMappingError(FacesetsError):
    """A path has no form on the other operating system."""


class QueueError(FacesetsError):
    """queue.json cannot be read or written."""


class StateError(FacesetsError):
    """The index state or the CLIP store cannot be used."""


class DatabaseError(FacesetsError):
    """The database cannot be reached or used."""


class SchemaError(DatabaseError):
    """The database schema is older or newer than this code."""


class PersonError(DatabaseError):
    """A person, face or name given on the command line does not exist, is ambiguous or is taken."""


class CacheError(FacesetsError):
    """A face cache cannot be used."""


class CacheCorruptError(CacheError):
    """The file is not a readable facesets cache."""


class CacheVersionError(CacheError):
    """The cache's schema version is not one this code reads."""


class CacheModelMismatchError(CacheError):
    """The cache was made by a different model pack than the one in use."""


class FaceSetError(FacesetsError):
    """The face-set folder, one of its manifests, or a cluster plan cannot be used."""


class SchedulerError(FacesetsError):
    """The Dask scheduler cannot be reached, or went away mid-run; what came back is in the cache."""

    exit_code = 2


class WorkerRefusedError(FacesetsError):
    """A Dask worker cannot embed for this cache: another model pack, none, or no usable provider."""


class ImmichError(FacesetsError):
    """The Immich server cannot be used: unreachable at the start, not an Immich API, or a malformed answer."""


class ImmichAuthError(ImmichError):
    """The API key was rejected (401/403), or it belongs to another user than the one named."""


class ImmichUnavailableError(ImmichError):
    """The server stopped answering mid-run; progress is saved and the same command resumes."""

    exit_code = 2


class ImageLoadError(Exception):
    """One image could not be loaded. Per-item: the embed stage records the reason and goes on. A ``transient``
    failure (out of memory) is no property of the image: it is counted, not recorded, and retried next run."""

    def __init__(self, reason: str, transient: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient


OUT_OF_MEMORY = "out of memory (not recorded: retried on the next run)"


def is_out_of_memory(exc: BaseException) -> bool:
    """A MemoryError, or OpenCV's or onnxruntime's way of saying the same."""
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or "insufficient memory" in text or "failed to allocate" in text
