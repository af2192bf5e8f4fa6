"""aws-chunked uploads from boto3. botocore sends a streaming `aws-chunked` body (with a trailing
CRC32 checksum, `x-amz-content-sha256: STREAMING-UNSIGNED-PAYLOAD-TRAILER`) only over TLS; over
plain HTTP it signs the whole payload instead. With NIMBUS_FORCE_CHUNKED=1 the script makes
botocore's checksum code believe the endpoint is https (the scheme is in no signature), so it
takes its TLS path. Puts a 3 MiB object and a 12 MiB multipart upload, reads both back and checks
them byte for byte. Prints OK. Run by tests/it/s3.rs."""

import hashlib
import os
import tempfile
from urllib.parse import urlparse

import boto3
import botocore.httpchecksum
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

URL = os.environ["NIMBUS_S3_URL"]
BUCKET = os.environ["NIMBUS_BUCKET"]

if os.environ.get("NIMBUS_FORCE_CHUNKED") == "1":
    def as_tls(url, *args, **kwargs):
        parsed = urlparse(url, *args, **kwargs)
        return parsed._replace(scheme="https") if url.startswith(URL) else parsed
    botocore.httpchecksum.urlparse = as_tls

s3 = boto3.client("s3", endpoint_url=URL, region_name="us-east-1",
                  config=Config(signature_version="s3v4", retries={"max_attempts": 1},
                                s3={"addressing_style": "path"}))

small = os.urandom(3 * 1024 * 1024 + 17)
put = s3.put_object(Bucket=BUCKET, Key="chunked.bin", Body=small)
assert put["ETag"] == f'"{hashlib.md5(small).hexdigest()}"', put["ETag"]
assert s3.get_object(Bucket=BUCKET, Key="chunked.bin")["Body"].read() == small

big = os.urandom(12 * 1024 * 1024 + 5)
with tempfile.NamedTemporaryFile() as f:
    f.write(big)
    f.flush()
    s3.upload_file(f.name, BUCKET, "chunked-big.bin", Config=TransferConfig(
        multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024))
assert s3.get_object(Bucket=BUCKET, Key="chunked-big.bin")["Body"].read() == big
print("OK", hashlib.md5(small).hexdigest(), len(small), len(big))
