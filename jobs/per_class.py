"""Per-class accuracy from the predictions, computed with Spark aggregations.

One row per true class (`wnid`, `label`); for folders without a wnid the class is the folder
label and the accuracy columns are null. `most_confused_with` is the wrong prediction made
most often for the class (ties broken by the lower class index), null when there is none.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from udfs.schema import PER_CLASS_SCHEMA

CLASS_KEY = ("wnid", "label")


def per_class_accuracy(predictions: DataFrame) -> DataFrame:
    counts = predictions.groupBy(*CLASS_KEY).agg(
        F.count(F.lit(1)).alias("n_images"),
        F.sum(F.when(F.col("error").isNotNull(), 1).otherwise(0)).alias("n_errors"),
        F.avg(F.col("correct").cast("double")).alias("top1_accuracy"),
        F.avg(F.col("top5_correct").cast("double")).alias("top5_accuracy"),
        F.avg(F.col("pred_prob").cast("double")).alias("mean_pred_prob"),
    )
    confusions = (
        predictions.where(F.col("correct") == F.lit(False))
        .groupBy(*CLASS_KEY, "pred_index", "pred_wnid", "pred_label")
        .count()
    )
    ranked = Window.partitionBy(*CLASS_KEY).orderBy(F.col("count").desc(), F.col("pred_index").asc())
    top_confusion = (
        confusions.withColumn("rank", F.row_number().over(ranked))
        .where(F.col("rank") == 1)
        .select(
            F.col("wnid").alias("c_wnid"),
            F.col("label").alias("c_label"),
            F.struct(
                F.col("pred_wnid").alias("wnid"), F.col("pred_label").alias("label"), F.col("count")
            ).alias("most_confused_with"),
        )
    )
    joined = counts.join(
        top_confusion,
        counts["wnid"].eqNullSafe(top_confusion["c_wnid"]) & counts["label"].eqNullSafe(top_confusion["c_label"]),
        "left",
    )
    table = joined.select(
        "wnid",
        "label",
        "n_images",
        (F.col("n_images") - F.col("n_errors")).alias("n_scored"),
        "n_errors",
        "top1_accuracy",
        "top5_accuracy",
        "mean_pred_prob",
        "most_confused_with",
    )
    typed = table.select([F.col(f.name).cast(f.dataType).alias(f.name) for f in PER_CLASS_SCHEMA.fields])
    # One row per class (at most a few thousand): one sorted partition, written as one file. A
    # global orderBy would cost a sampling job of its own for its range partitioning.
    return typed.coalesce(1).sortWithinPartitions(F.col("wnid").asc_nulls_last(), F.col("label"))


def overall_counts(predictions: DataFrame) -> dict:
    """Run-wide totals for the summary and for `jobs.outputs.check_one_row_per_image` (`paths`:
    distinct paths), in one pass over the written predictions, and the errors by kind."""
    row = predictions.agg(
        F.count(F.lit(1)).alias("images"),
        F.count_distinct("path").alias("paths"),
        F.sum(F.when(F.col("error").isNull(), 1).otherwise(0)).alias("scored"),
        F.sum(F.when(F.col("error").isNotNull(), 1).otherwise(0)).alias("errors"),
        F.sum(F.when(F.col("correct").isNotNull(), 1).otherwise(0)).alias("with_truth"),
        F.avg(F.col("correct").cast("double")).alias("top1_accuracy"),
        F.avg(F.col("top5_correct").cast("double")).alias("top5_accuracy"),
    ).first()
    by_kind = {
        r["error_kind"]: r["count"]
        for r in predictions.where(F.col("error_kind").isNotNull()).groupBy("error_kind").count().collect()
    }
    totals = row.asDict()
    totals["errors_by_kind"] = dict(sorted(by_kind.items()))
    return totals
