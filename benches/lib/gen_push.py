#!/usr/bin/env python3
"""OCI layouts for push.sh: one single-platform image per blob file.

  gen_push.py --out DIR BLOB_FILE...

For the i-th blob (1-based) writes DIR/img<i>/, an `oci:` layout skopeo can
read, tag v1: a manifest whose one layer is the blob (hard-linked, never
copied; media type application/vnd.oci.image.layer.v1.tar -- skopeo does not
look inside a layer when copying with --preserve-digests) and a small config
naming it.  Same shape and writer as compare.sh's blob1g image
(gen_images.big_blob_image), so digests are reproducible.  Prints nothing;
writes DIR/push.json: [{layout, tag, blob_digest, blob_size,
manifest_digest, config_digest}, ...] in argument order.

Python 3.11, stdlib only.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_images  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("blobs", nargs="+")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    images = []
    for i, blob in enumerate(a.blobs, 1):
        info = gen_images.big_blob_image(a.out, f"img{i}", blob, f"bench/push-img{i}")
        with open(os.path.join(info["layout"], "blobs", "sha256", info["manifest_digest"].split(":", 1)[1]), "rb") as f:
            info["config_digest"] = json.load(f)["config"]["digest"]
        # The manifest copy big_blob_image writes for nginx is not needed here.
        os.remove(info.pop("manifest_file"))
        images.append(info)
    with open(os.path.join(a.out, "push.json"), "w") as f:
        json.dump(images, f, indent=2)


if __name__ == "__main__":
    main()
