"""Over the project's stored-bytes quota, boto3 gets an S3 error (code QuotaExceeded, HTTP 403)
on PutObject, UploadPart, CompleteMultipartUpload and CopyObject, not a retry storm; reads and
deletes work, and a delete makes room. The project's quota is 1000 bytes. Run by tests/it/s3.rs."""

import os

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

s3 = boto3.client(
    "s3",
    endpoint_url=os.environ["NIMBUS_S3_URL"],
    region_name="us-east-1",
    config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                  retries={"max_attempts": 3, "mode": "standard"}),
)
attempts = []
s3.meta.events.register("before-send.s3.*", lambda request, **_: attempts.append(request.url))


def refused(fn, **kwargs):
    before = len(attempts)
    try:
        fn(**kwargs)
    except ClientError as e:
        err = e.response["Error"]
        status = e.response["ResponseMetadata"]["HTTPStatusCode"]
        assert (err.get("Code"), status) == ("QuotaExceeded", 403), (err, status)
        assert "stored_bytes" in err.get("Message", "") and "deleted" in err["Message"], err
        assert len(attempts) - before == 1, f"retried: {attempts[before:]}"
        return
    raise AssertionError(f"{fn.__name__} succeeded over the quota")


B = "quota-bucket"
s3.create_bucket(Bucket=B)
# A multipart upload started (and a part stored) while there was room.
up = s3.create_multipart_upload(Bucket=B, Key="multi")["UploadId"]
part = s3.upload_part(Bucket=B, Key="multi", UploadId=up, PartNumber=1, Body=b"p" * 10)
s3.put_object(Bucket=B, Key="fill", Body=b"f" * 1000)  # reaches the quota and finishes

refused(s3.put_object, Bucket=B, Key="more", Body=b"x")
refused(s3.upload_part, Bucket=B, Key="multi", UploadId=up, PartNumber=2, Body=b"y")
refused(s3.complete_multipart_upload, Bucket=B, Key="multi", UploadId=up,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
refused(s3.copy_object, Bucket=B, Key="copy", CopySource={"Bucket": B, "Key": "fill"})

assert s3.get_object(Bucket=B, Key="fill")["Body"].read() == b"f" * 1000, "reads work"
s3.delete_object(Bucket=B, Key="fill")
s3.put_object(Bucket=B, Key="more", Body=b"x")
s3.complete_multipart_upload(Bucket=B, Key="multi", UploadId=up,
                             MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
print("OK")
