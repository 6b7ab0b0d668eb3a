"""img2dataset-style tars of synthetic samples, with the captions where a user's run puts them."""

import io
import json
import tarfile


def write_img2dataset_tar(path, records, txt="org_caption", json_fields=("re_caption",), drop=()):
    """KEY.png, KEY.txt (the `txt` caption) and KEY.json (url, key, sha256 and `json_fields`).

    `drop`: (key, member or json field) pairs left out, to make incomplete samples."""
    with tarfile.open(path, "w") as tar:
        for r in records:
            meta = {"url": r["url"], "key": r["key"], "status": "success"}
            meta.update({f: r[f] for f in json_fields if (r["key"], f) not in drop})
            members = [("png", r["image"]), ("txt", r[txt].encode()), ("json", json.dumps(meta).encode())]
            for ext, payload in members:
                if (r["key"], ext) in drop:
                    continue
                info = tarfile.TarInfo(f"{r['key']}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
