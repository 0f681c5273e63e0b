"""Output and input schemas, declared once for the lister, the UDF, the writer and the tests.

Column names follow one word per concept: `wnid` (WordNet id, the ground truth), `label`
(human-readable name), `image_id` (file stem), `pred_*` (the model's answer).
"""

from __future__ import annotations

from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
)

# What the driver lists: one row per image object.
IMAGES_SCHEMA = StructType(
    [
        StructField("path", StringType(), False),
        StructField("image_id", StringType(), False),
        StructField("wnid", StringType(), True),
        StructField("label", StringType(), True),
        StructField("size_bytes", LongType(), True),
    ]
)

# What the scoring UDF returns for each image (the run-wide constants are added by the driver).
SCORED_SCHEMA = StructType(
    [
        StructField("image_id", StringType(), False),
        StructField("path", StringType(), False),
        StructField("wnid", StringType(), True),
        StructField("label", StringType(), True),
        StructField("pred_index", IntegerType(), True),
        StructField("pred_wnid", StringType(), True),
        StructField("pred_label", StringType(), True),
        StructField("pred_prob", FloatType(), True),
        StructField("top_k_indices", ArrayType(IntegerType(), False), True),
        StructField("top_k_probs", ArrayType(FloatType(), False), True),
        StructField("correct", BooleanType(), True),
        StructField("top5_correct", BooleanType(), True),
        StructField("error", StringType(), True),
        StructField("error_kind", StringType(), True),
    ]
)

RUN_COLUMNS = ("model", "weights_sha256", "run_id")

PREDICTIONS_SCHEMA = StructType(
    SCORED_SCHEMA.fields + [StructField(name, StringType(), False) for name in RUN_COLUMNS]
)

CONFUSION_TYPE = StructType(
    [
        StructField("wnid", StringType(), True),
        StructField("label", StringType(), True),
        StructField("count", LongType(), False),
    ]
)

PER_CLASS_SCHEMA = StructType(
    [
        StructField("wnid", StringType(), True),
        StructField("label", StringType(), True),
        StructField("n_images", LongType(), False),
        StructField("n_scored", LongType(), False),
        StructField("n_errors", LongType(), False),
        StructField("top1_accuracy", DoubleType(), True),
        StructField("top5_accuracy", DoubleType(), True),
        StructField("mean_pred_prob", DoubleType(), True),
        StructField("most_confused_with", CONFUSION_TYPE, True),
    ]
)

# Error kinds an error row can carry (see udfs/errors.py for how exceptions map to them).
ERROR_KINDS = (
    "not_found",
    "access_denied",
    "too_large",
    "unsupported_format",
    "decode_error",
    "read_error",
)
