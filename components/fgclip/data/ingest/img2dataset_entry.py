"""The img2dataset call, run by img2dataset's own interpreter (its environment pins
webdataset<0.3 and pandas<3, which clash with ours), never imported by fgclip.

    <img2dataset env>/bin/python img2dataset_entry.py SETTINGS.json

SETTINGS.json holds the keyword arguments of `img2dataset.download`. Only the standard
library and img2dataset may be imported here. The guard below matters: img2dataset starts
its download processes with `spawn`, which imports this file again in each of them.
"""

import json
import sys


def main(settings_file: str) -> int:
    with open(settings_file, encoding="utf-8") as handle:
        settings = json.load(handle)
    from img2dataset import download  # installed only in img2dataset's environment

    download(**settings)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
