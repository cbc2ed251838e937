"""Python programs shipped in a ConfigMap as zip applications.

The backup programs are standard-library Python run by the official ``python`` image from a
ConfigMap's mount. As text they were a large part of each chart, and the charts of the EKS
profile travel inside one CloudFormation template, which may not exceed 1,000,000 bytes
(AWS CloudFormation User Guide, "CloudFormation quotas": template body size in an S3 object).
A zip application is the same programs, compressed about 4 times (deflate): ``python3 FILE``
runs the ``__main__.py`` of a zip file, with the zip first on ``sys.path``, so the modules
beside it import as they do beside a script (Python docs, "zipapp"; "Command line":
``<script>`` may be "a zipfile containing a ``__main__.py`` file").

The archive is deterministic (entries sorted, a fixed time stamp, fixed permissions): the same
sources give the same bytes, so an unchanged program changes no template and restarts no pod.
"""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

RENDERERS = Path(__file__).parent
#: The earliest time a zip entry can carry: no build's clock leaks into the archive.
FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def zipapp(main: str, modules: Sequence[str] = ()) -> bytes:
    """A zip application running the module file ``main`` (a file of this package) with the
    module files ``modules`` importable beside it."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        entries = {"__main__.py": main, **{name: name for name in modules}}
        for entry in sorted(entries):
            info = zipfile.ZipInfo(entry, date_time=FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o100444 << 16  # a regular file, read-only
            archive.writestr(info, (RENDERERS / entries[entry]).read_bytes(), compresslevel=9)
    return buffer.getvalue()


def binary_data(programs: Mapping[str, bytes]) -> dict[str, str]:
    """A ConfigMap's ``binaryData``: each file base64-encoded."""
    return {name: base64.b64encode(content).decode() for name, content in programs.items()}


def digest_text(programs: Mapping[str, bytes]) -> str:
    """Text standing for ``programs`` in a pod template's config digest."""
    return "".join(f"{name}:{hashlib.sha256(content).hexdigest()}\n" for name, content in sorted(programs.items()))


def sources(archive: bytes | str) -> dict[str, str]:
    """What a zip application holds, entry name to text (``archive`` as bytes, or base64 as in
    a ConfigMap's ``binaryData``): for reading a rendered program back."""
    raw = base64.b64decode(archive) if isinstance(archive, str) else archive
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        return {name: zf.read(name).decode() for name in zf.namelist()}
