"""The baselines scripts/bench.py sets the job against, each as its own process, timed whole.

    python scripts/bench_baselines.py tutorial LISTING MODEL WEIGHTS --workers N
    spark-submit --master local[N] scripts/bench_baselines.py databricks INPUT_DIR OUTPUT MODEL WEIGHTS
    spark-submit --master local[N] scripts/bench_baselines.py predict-batch-udf INPUT_DIR OUTPUT MODEL WEIGHTS

Each is written as its source publishes it, on the same images and the same weights file as the
job, with plain torchvision and nothing from this project:
- tutorial: the Dask tutorial this job replaces (per-image delayed preprocessing, batches of 80,
  the model rebuilt and its weights reloaded for every batch, no normalisation, a 250 px crop,
  the probability of row 0 for every row);
- databricks: Databricks' reference batch-inference notebook (binaryFile DataFrame, broadcast
  state dict, iterator pandas UDF building the model once per task, DataLoader of 64);
- predict-batch-udf: Spark's own API for it, `pyspark.ml.functions.predict_batch_udf` (Spark
  3.4+), as its documentation shows it: a pandas UDF turns the binaryFile bytes into the
  preprocessed tensor, flattened into an array column (the weights' own transforms), and
  `predict_batch_udf` runs the model, built once per Python worker by `make_predict_fn`, on
  batches of 64 of those arrays (`input_tensor_shapes`), returning the top-1 class and its
  probability. The pixels (3 x 224 x 224 floats, 602 KB an image) cross Arrow between the two
  UDFs; the job sends only paths in and small rows out.
The two Spark ones write Parquet (path, prediction) to OUTPUT, so that a test can check them; they
take the session (`main` starts and stops it) so that the tests can run them on theirs.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Iterator

import pandas as pd
import torch


def tutorial(files: list[str], model_name: str, weights: str, workers: int) -> None:
    """The Dask tutorial, as published: delayed preprocessing per image, batches of 80, and for
    every batch a new model whose weights are loaded again; top-1 and the probability of row 0."""
    import dask
    import torchvision
    from PIL import Image
    from torchvision import transforms

    @dask.delayed
    def preprocess(path):
        transform = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(250), transforms.ToTensor()])
        with open(path, "rb") as handle:
            image = Image.open(io.BytesIO(handle.read())).convert("RGB")
        return transform(image), path

    @dask.delayed
    def reformat(batch):
        return {"tensors": torch.stack([item[0] for item in batch]), "names": [item[1] for item in batch]}

    @dask.delayed
    def run_batch(item):
        model = torchvision.models.get_model(model_name, weights=None)
        model.load_state_dict(torch.load(weights, weights_only=True))
        model.eval()
        with torch.no_grad():
            pred_batch = model(item["tensors"])
            values, indices = torch.max(pred_batch, 1)
            prob = torch.nn.functional.softmax(pred_batch, dim=1)[0] * 100  # the tutorial's row-0 bug
        return [(name, int(i), float(prob[int(i)])) for name, i in zip(item["names"], indices)]

    tensors = [preprocess(path) for path in files]
    batches = [reformat(tensors[i:i + 80]) for i in range(0, len(tensors), 80)]
    results = dask.compute(*[run_batch(batch) for batch in batches], scheduler="threads", num_workers=workers)
    if sum(len(r) for r in results) != len(files):
        raise RuntimeError("the tutorial lost images")


def databricks(spark, input_dir: str, output: str, model_name: str, weights: str) -> None:
    """Databricks' reference pattern: binaryFile DataFrame, broadcast state dict, iterator pandas
    UDF building the model once per task, DataLoader(batch_size=64) over the bytes."""
    import torchvision
    from PIL import Image
    from pyspark.sql.functions import col, pandas_udf
    from pyspark.sql.types import ArrayType, FloatType
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "64")
    state = torch.load(weights, weights_only=True)
    bc_model_state = spark.sparkContext.broadcast(state)
    df = (spark.read.format("binaryFile").option("pathGlobFilter", "*.jpg")
          .option("recursiveFileLookup", "true").load(input_dir))

    class ImageDataset(Dataset):
        def __init__(self, contents):
            self.contents = contents

        def __len__(self):
            return len(self.contents)

        def __getitem__(self, index):
            transform = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
            return transform(Image.open(io.BytesIO(self.contents[index])).convert("RGB"))

    @pandas_udf(ArrayType(FloatType()))
    def predict_batch_udf(content_series_iter: Iterator[pd.Series]) -> Iterator[pd.Series]:
        model = torchvision.models.get_model(model_name, weights=None)
        model.load_state_dict(bc_model_state.value)
        model.eval()
        for content_series in content_series_iter:
            loader = DataLoader(ImageDataset(list(content_series)), batch_size=64)
            predictions = []
            with torch.no_grad():
                for image_batch in loader:
                    probs = torch.softmax(model(image_batch), dim=1)
                    top = probs.max(dim=1)
                    predictions += [[float(i), float(p)] for i, p in zip(top.indices, top.values)]
            yield pd.Series(predictions)

    df.select(col("path"), predict_batch_udf(col("content")).alias("prediction")).write.mode("overwrite").parquet(output)


def predict_batch_udf(spark, input_dir: str, output: str, model_name: str, weights: str) -> None:
    """Spark's own `predict_batch_udf`: preprocessed tensors as array columns, the model built once
    per Python worker by `make_predict_fn`, batches of 64 (`input_tensor_shapes` [3, 224, 224])."""
    import numpy as np
    import torchvision
    from PIL import Image
    from pyspark.ml.functions import predict_batch_udf as spark_predict_batch_udf
    from pyspark.sql.functions import col, pandas_udf
    from pyspark.sql.types import ArrayType, FloatType, IntegerType, StructField, StructType

    df = (spark.read.format("binaryFile").option("pathGlobFilter", "*.jpg")
          .option("recursiveFileLookup", "true").load(input_dir))
    transform = torchvision.models.get_model_weights(model_name).DEFAULT.transforms()

    @pandas_udf(ArrayType(FloatType()))
    def preprocess(contents: pd.Series) -> pd.Series:
        return pd.Series([transform(Image.open(io.BytesIO(content)).convert("RGB")).numpy().ravel()
                          for content in contents])

    def make_predict_fn():
        model = torchvision.models.get_model(model_name, weights=None)
        model.load_state_dict(torch.load(weights, weights_only=True))
        model.eval()

        def predict(inputs: np.ndarray) -> dict[str, np.ndarray]:
            with torch.inference_mode():
                top = torch.softmax(model(torch.from_numpy(inputs)), dim=1).max(dim=1)
            return {"pred_index": top.indices.int().numpy(), "pred_prob": top.values.numpy()}

        return predict

    classify = spark_predict_batch_udf(
        make_predict_fn,
        return_type=StructType([StructField("pred_index", IntegerType()), StructField("pred_prob", FloatType())]),
        batch_size=64, input_tensor_shapes=[[3, 224, 224]])
    (df.select(col("path"), classify(preprocess(col("content"))).alias("prediction"))
     .write.mode("overwrite").parquet(output))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    baselines = parser.add_subparsers(dest="baseline", required=True)
    dask_one = baselines.add_parser("tutorial", help="the Dask tutorial (plain python)")
    dask_one.add_argument("listing", help="a text file: one image path per line")
    dask_one.add_argument("--workers", type=int, required=True, help="Dask threads (the machine's cores)")
    for name in ("databricks", "predict-batch-udf"):
        spark_one = baselines.add_parser(name, help="a Spark pattern (under spark-submit)")
        spark_one.add_argument("input_dir")
        spark_one.add_argument("output")
    for sub in baselines.choices.values():
        sub.add_argument("model")
        sub.add_argument("weights")
    args = parser.parse_args()
    if args.baseline == "tutorial":
        tutorial(Path(args.listing).read_text().splitlines(), args.model, args.weights, args.workers)
        return 0
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.appName(f"baseline-{args.baseline}").getOrCreate()
    pattern = databricks if args.baseline == "databricks" else predict_batch_udf
    pattern(spark, args.input_dir, args.output, args.model, args.weights)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
