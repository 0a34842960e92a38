"""Published ViT-B/16 numbers, shown in the suite's table as reference rows.

They are copied from the papers (the FG-CLIP 2 paper's tables, which match the FG-CLIP v1
README chart), in percent, and were NOT measured by this project: the table marks every
such row "(published)". Columns the papers do not report for a model stay empty.
"""

from __future__ import annotations

#: Where the numbers come from (shown under the table).
SOURCE = "published ViT-B/16 results (FG-CLIP 2 paper tables, as in the FG-CLIP v1 README); not measured here"

#: model -> suite metric -> value in percent
PUBLISHED: dict[str, dict[str, float]] = {
    "CLIP": {
        "fgovd_hard_top1": 12.0,
        "fgovd_medium_top1": 23.1,
        "fgovd_easy_top1": 22.2,
        "fgovd_trivial_top1": 58.5,
        "coco_boxes_top1": 44.2,
        "sharegpt4v_1k_i2t_r1": 78.2,
        "sharegpt4v_1k_t2i_r1": 79.6,
        "dci_i2t_r1": 45.5,
        "dci_t2i_r1": 43.0,
        "coco_5k_i2t_r1": 51.8,
        "coco_5k_t2i_r1": 32.7,
        "imagenet_1k_top1": 68.4,
    },
    "Long-CLIP": {
        "fgovd_hard_top1": 9.2,
        "fgovd_medium_top1": 18.4,
        "fgovd_easy_top1": 16.2,
        "fgovd_trivial_top1": 51.8,
        "coco_boxes_top1": 36.7,
        "sharegpt4v_1k_i2t_r1": 94.7,
        "sharegpt4v_1k_t2i_r1": 93.4,
        "dci_i2t_r1": 51.7,
        "dci_t2i_r1": 57.3,
        "coco_5k_i2t_r1": 57.6,
        "coco_5k_t2i_r1": 40.4,
        "imagenet_1k_top1": 66.8,
    },
    "FineCLIP": {
        "fgovd_hard_top1": 26.8,
        "fgovd_medium_top1": 49.8,
        "fgovd_easy_top1": 50.4,
        "fgovd_trivial_top1": 71.9,
        "coco_boxes_top1": 48.4,
        "sharegpt4v_1k_i2t_r1": 70.6,
        "sharegpt4v_1k_t2i_r1": 73.3,
        "dci_i2t_r1": 35.5,
        "dci_t2i_r1": 34.4,
        "coco_5k_i2t_r1": 54.5,
        "coco_5k_t2i_r1": 40.2,
        "imagenet_1k_top1": 55.7,
    },
    "FG-CLIP": {
        "fgovd_hard_top1": 46.1,
        "fgovd_medium_top1": 66.6,
        "fgovd_easy_top1": 68.7,
        "fgovd_trivial_top1": 83.4,
        "coco_boxes_top1": 52.3,
        "sharegpt4v_1k_i2t_r1": 96.7,
        "sharegpt4v_1k_t2i_r1": 94.9,
        "dci_i2t_r1": 61.8,
        "dci_t2i_r1": 60.6,
        "coco_5k_i2t_r1": 64.1,
        "coco_5k_t2i_r1": 45.4,
        "imagenet_1k_top1": 69.0,
    },
}

#: The table's columns: (header, suite metric), in the paper's order.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("FG-OVD hard", "fgovd_hard_top1"),
    ("FG-OVD medium", "fgovd_medium_top1"),
    ("FG-OVD easy", "fgovd_easy_top1"),
    ("FG-OVD trivial", "fgovd_trivial_top1"),
    ("COCO box top-1", "coco_boxes_top1"),
    ("LVIS box top-1", "lvis_boxes_top1"),
    ("ShareGPT4V-1k I2T", "sharegpt4v_1k_i2t_r1"),
    ("ShareGPT4V-1k T2I", "sharegpt4v_1k_t2i_r1"),
    ("DCI I2T", "dci_i2t_r1"),
    ("DCI T2I", "dci_t2i_r1"),
    ("DOCCI I2T", "docci_i2t_r1"),
    ("DOCCI T2I", "docci_t2i_r1"),
    ("Urban-1k I2T", "urban1k_i2t_r1"),
    ("Urban-1k T2I", "urban1k_t2i_r1"),
    ("COCO 5k I2T R@1", "coco_5k_i2t_r1"),
    ("COCO 5k T2I R@1", "coco_5k_t2i_r1"),
    ("Flickr30k 1k I2T R@1", "flickr30k_1k_i2t_r1"),
    ("Flickr30k 1k T2I R@1", "flickr30k_1k_t2i_r1"),
    ("IN-1K top-1", "imagenet_1k_top1"),
)
