"""img2dataset-style webdataset tar shards for tests."""

from __future__ import annotations

import io
import json
import pathlib
import tarfile


def write_tar(path: pathlib.Path, samples: list[tuple[str, str, bytes, str]]) -> None:
    """samples: (key, image extension, image bytes, caption); writes KEY.EXT, KEY.txt, KEY.json."""
    with tarfile.open(path, "w") as tar:
        for key, ext, data, caption in samples:
            meta = json.dumps({"key": key, "url": f"http://example.com/{key}.{ext}", "caption": caption})
            for name, payload in ((f"{key}.{ext}", data), (f"{key}.txt", caption.encode()),
                                  (f"{key}.json", meta.encode())):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
