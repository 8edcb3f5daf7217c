"""A plain S3 client for scripts/bench-s3-client.sh: moves one file to or from S3 with boto3's
managed transfer (multipart upload, ranged parallel download), with the part size and the
concurrency the benchmark gives it. Not a test.

    python bench_boto3.py put FILE KEY PART_BYTES CONCURRENCY
    python bench_boto3.py get KEY FILE PART_BYTES CONCURRENCY

Prints the transfer's wall seconds and CPU seconds (user + system, all threads), without
the interpreter's start and boto3's import, so the baseline is the transfer alone.

The endpoint, bucket and region come from VMREG_TEST_S3_ENDPOINT, VMREG_TEST_S3_BUCKET and
VMREG_TEST_S3_REGION, the credentials from the usual AWS_* variables.
"""

import os
import resource
import sys
import time

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config


def main() -> None:
    op, src, dst, part, concurrency = sys.argv[1:6]
    part, concurrency = int(part), int(concurrency)
    s3 = boto3.client(
        "s3",
        endpoint_url=os.environ["VMREG_TEST_S3_ENDPOINT"],
        region_name=os.environ["VMREG_TEST_S3_REGION"],
        config=Config(
            s3={"addressing_style": "path"},
            # One connection per transfer thread, as the vmreg client keeps one per range.
            max_pool_connections=concurrency,
        ),
    )
    transfer = TransferConfig(
        multipart_threshold=part,
        multipart_chunksize=part,
        max_concurrency=concurrency,
        use_threads=True,
    )
    bucket = os.environ["VMREG_TEST_S3_BUCKET"]
    t0, c0 = time.monotonic(), cpu_seconds()
    if op == "put":
        s3.upload_file(src, bucket, dst, Config=transfer)
    elif op == "get":
        s3.download_file(bucket, src, dst, Config=transfer)
    else:
        sys.exit(f"bench_boto3: unknown operation {op!r}")
    print(f"{time.monotonic() - t0:.4f} {cpu_seconds() - c0:.4f}")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
