"""FineHARD import and export: the published FG-CLIP stage-2 annotations <-> this
project's image shards and per-stage annotation records.

    fgclip finehard import --annotations FILE [FILE ...] --image-root DIR --out DIR --shard-size N
        -> DIR/images/NNNNN.{tar,parquet}   (KEY.jpg as read, KEY.txt = short_caption,
                                             KEY.json = size, f_path, layout)
           DIR/captions|regions|negatives/NNNNN.{jsonl,rejects.jsonl,manifest.json}
    fgclip finehard export --images DIR --captions DIR --regions DIR --negatives DIR --out FILE

A FineHARD file is a JSON array or JSON lines (told apart by content). Record i of the
input (counting across files, rejected records included) becomes key `<prefix><i:09d>`
in shard i // shard_size, so keys and shards do not move when one record goes bad.

Import then export gives back records equal to the input, key order included: fields the
contract does not name are kept in a layout (see fgclip.core.join). A bad record (not an
object, a missing or mistyped field, empty text, a bbox outside [0, 1] or degenerate,
an image missing, unsafe, corrupt or not a JPEG) becomes a Reject in the captions
rejects file and is counted; the import goes on.

The annotation folders are written by stage.run_stage, so their manifests and
fingerprints are the ones every other stage writes. Images are copied byte for byte,
never re-encoded: non-JPEG images are rejected rather than silently recompressed.
"""
