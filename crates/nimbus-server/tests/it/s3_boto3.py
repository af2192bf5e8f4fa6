"""Every S3 operation Nimbus offers, driven by boto3 (a client nobody here wrote) against the
endpoint in NIMBUS_S3_URL with the key in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. Exits non-zero
on the first failed expectation; prints OK at the end. Run by tests/it/s3.rs."""

import hashlib
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

URL = os.environ["NIMBUS_S3_URL"]
STYLE = os.environ.get("NIMBUS_S3_STYLE", "path")


def client(secret=None, style=STYLE):
    return boto3.client(
        "s3",
        endpoint_url=URL,
        region_name="us-east-1",
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=secret or os.environ["AWS_SECRET_ACCESS_KEY"],
        config=Config(signature_version="s3v4", s3={"addressing_style": style},
                      retries={"max_attempts": 1}),
    )


s3 = client()


def fails(code_or_status, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except ClientError as e:
        got = (e.response["Error"].get("Code"), e.response["ResponseMetadata"]["HTTPStatusCode"])
        assert code_or_status in got, f"expected {code_or_status}, got {got}: {e}"
        return got
    raise AssertionError(f"expected {code_or_status}, the call succeeded")


def md5(data):
    return hashlib.md5(data).hexdigest()


B = "boto-bucket"

# Buckets.
s3.create_bucket(Bucket=B)
s3.head_bucket(Bucket=B)
assert B in [b["Name"] for b in s3.list_buckets()["Buckets"]]
assert s3.get_bucket_location(Bucket=B).get("LocationConstraint") in (None, "")
fails(404, s3.head_bucket, Bucket="no-such-bucket")
fails("BucketAlreadyOwnedByYou", s3.create_bucket, Bucket=B)

# Objects: put, get (with Range), head, conditional get.
body = b"hello world from boto3"
put = s3.put_object(Bucket=B, Key="dir/hello.txt", Body=body, ContentType="text/plain",
                    Metadata={"color": "blue"})
assert put["ETag"] == f'"{md5(body)}"', put["ETag"]
got = s3.get_object(Bucket=B, Key="dir/hello.txt")
assert got["Body"].read() == body
assert got["ContentType"] == "text/plain"
assert got["Metadata"] == {"color": "blue"}, got["Metadata"]
part = s3.get_object(Bucket=B, Key="dir/hello.txt", Range="bytes=0-4")
assert part["Body"].read() == b"hello"
assert part["ContentRange"] == f"bytes 0-4/{len(body)}", part["ContentRange"]
assert part["ResponseMetadata"]["HTTPStatusCode"] == 206
head = s3.head_object(Bucket=B, Key="dir/hello.txt")
assert head["ContentLength"] == len(body)
assert head["ETag"] == put["ETag"]
fails(304, s3.get_object, Bucket=B, Key="dir/hello.txt", IfNoneMatch=put["ETag"])
fails("NoSuchKey", s3.get_object, Bucket=B, Key="missing")
fails("InvalidRange", s3.get_object, Bucket=B, Key="dir/hello.txt", Range="bytes=1000-")

# Preconditions: If-Match and If-Unmodified-Since (412), on GET and HEAD.
from datetime import datetime, timezone
PAST, FUTURE = datetime(2001, 1, 1, tzinfo=timezone.utc), datetime(2100, 1, 1, tzinfo=timezone.utc)
assert s3.get_object(Bucket=B, Key="dir/hello.txt", IfMatch=put["ETag"])["Body"].read() == body
fails(412, s3.get_object, Bucket=B, Key="dir/hello.txt", IfMatch='"00000000000000000000000000000000"')
fails(412, s3.head_object, Bucket=B, Key="dir/hello.txt", IfMatch='"00000000000000000000000000000000"')
fails(412, s3.get_object, Bucket=B, Key="dir/hello.txt", IfUnmodifiedSince=PAST)
fails(412, s3.head_object, Bucket=B, Key="dir/hello.txt", IfUnmodifiedSince=PAST)
s3.head_object(Bucket=B, Key="dir/hello.txt", IfUnmodifiedSince=FUTURE)
s3.head_object(Bucket=B, Key="dir/hello.txt", IfMatch=put["ETag"], IfUnmodifiedSince=PAST)

# Content-MD5: checked on PutObject; a mismatch is BadDigest and nothing is stored.
import base64


def b64md5(data):
    return base64.b64encode(hashlib.md5(data).digest()).decode()


s3.put_object(Bucket=B, Key="md5.txt", Body=b"digest", ContentMD5=b64md5(b"digest"))
fails("BadDigest", s3.put_object, Bucket=B, Key="md5-bad.txt", Body=b"digest",
      ContentMD5=b64md5(b"other"))
fails(404, s3.head_object, Bucket=B, Key="md5-bad.txt")
s3.delete_object(Bucket=B, Key="md5.txt")

# Listing: v2 with prefix, delimiter and continuation; v1 with markers.
for k in ["dir/a", "dir/b", "dir/sub/c", "dir/sub/d", "top"]:
    s3.put_object(Bucket=B, Key=k, Body=k.encode())
keys, prefixes = [], []
for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=B, Prefix="dir/", Delimiter="/", PaginationConfig={"PageSize": 2}):
    keys += [o["Key"] for o in page.get("Contents", [])]
    prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
assert keys == ["dir/a", "dir/b", "dir/hello.txt"], keys
assert prefixes == ["dir/sub/"], prefixes
everything = []
for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=B, PaginationConfig={"PageSize": 2}):
    everything += [o["Key"] for o in page.get("Contents", [])]
assert everything == ["dir/a", "dir/b", "dir/hello.txt", "dir/sub/c", "dir/sub/d", "top"], everything
after = s3.list_objects_v2(Bucket=B, StartAfter="dir/sub/c")
assert [o["Key"] for o in after["Contents"]] == ["dir/sub/d", "top"]
v1 = []
v1_prefixes = []
for page in s3.get_paginator("list_objects").paginate(
        Bucket=B, Delimiter="/", PaginationConfig={"PageSize": 1}):
    v1 += [o["Key"] for o in page.get("Contents", [])]
    v1_prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
assert v1 == ["top"], v1
assert v1_prefixes == ["dir/"], v1_prefixes

# Copy (metadata kept, or replaced), delete, delete many.
s3.copy_object(Bucket=B, Key="copy.txt", CopySource={"Bucket": B, "Key": "dir/hello.txt"})
copied = s3.get_object(Bucket=B, Key="copy.txt")
assert copied["Body"].read() == body and copied["Metadata"] == {"color": "blue"}
s3.copy_object(Bucket=B, Key="copy2.txt", CopySource=f"{B}/dir/hello.txt",
               MetadataDirective="REPLACE", ContentType="application/x-test", Metadata={"a": "b"})
replaced = s3.head_object(Bucket=B, Key="copy2.txt")
assert replaced["ContentType"] == "application/x-test" and replaced["Metadata"] == {"a": "b"}
s3.delete_object(Bucket=B, Key="copy2.txt")
fails(404, s3.head_object, Bucket=B, Key="copy2.txt")
deleted = s3.delete_objects(Bucket=B, Delete={"Objects": [{"Key": "dir/a"}, {"Key": "dir/b"}]})
assert sorted(d["Key"] for d in deleted["Deleted"]) == ["dir/a", "dir/b"], deleted
assert "Contents" in s3.list_objects_v2(Bucket=B, Prefix="dir/sub/")

# Multipart above the client's threshold (upload_file splits it): 12 MiB in 5 MiB parts.
big = os.urandom(12 * 1024 * 1024)
with tempfile.NamedTemporaryFile() as f:
    f.write(big)
    f.flush()
    s3.upload_file(f.name, B, "big.bin", Config=TransferConfig(
        multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024))
head = s3.head_object(Bucket=B, Key="big.bin")
assert head["ContentLength"] == len(big)
parts_md5 = [hashlib.md5(big[i:i + 5 * 1024 * 1024]).digest() for i in range(0, len(big), 5 * 1024 * 1024)]
expected = f'"{hashlib.md5(b"".join(parts_md5)).hexdigest()}-{len(parts_md5)}"'
assert head["ETag"] == expected, (head["ETag"], expected)
assert s3.get_object(Bucket=B, Key="big.bin")["Body"].read() == big
tail = s3.get_object(Bucket=B, Key="big.bin", Range="bytes=-100")["Body"].read()
assert tail == big[-100:]

# Multipart by hand: create, upload part, upload part copy, list parts, list uploads, complete.
up = s3.create_multipart_upload(Bucket=B, Key="assembled", ContentType="application/x-parts")
uid = up["UploadId"]
p1 = s3.upload_part(Bucket=B, Key="assembled", UploadId=uid, PartNumber=1, Body=big[:5 * 1024 * 1024])
p2 = s3.upload_part_copy(Bucket=B, Key="assembled", UploadId=uid, PartNumber=2,
                         CopySource={"Bucket": B, "Key": "dir/hello.txt"}, CopySourceRange="bytes=0-4")
listed = s3.list_parts(Bucket=B, Key="assembled", UploadId=uid)
assert [p["PartNumber"] for p in listed["Parts"]] == [1, 2]
uploads = s3.list_multipart_uploads(Bucket=B)
assert [(u["Key"], u["UploadId"]) for u in uploads["Uploads"]] == [("assembled", uid)]
fails(404, s3.head_object, Bucket=B, Key="assembled")
done = s3.complete_multipart_upload(Bucket=B, Key="assembled", UploadId=uid, MultipartUpload={
    "Parts": [{"PartNumber": 1, "ETag": p1["ETag"]},
              {"PartNumber": 2, "ETag": p2["CopyPartResult"]["ETag"]}]})
assert done["ETag"].strip('"').endswith("-2")
assembled = s3.get_object(Bucket=B, Key="assembled")
assert assembled["Body"].read() == big[:5 * 1024 * 1024] + b"hello"
assert assembled["ContentType"] == "application/x-parts"
fails("NoSuchUpload", s3.list_parts, Bucket=B, Key="assembled", UploadId=uid)
# ListMultipartUploads in pages: MaxUploads, then KeyMarker + UploadIdMarker.
ids = [s3.create_multipart_upload(Bucket=B, Key=k)["UploadId"] for k in ["mp/a", "mp/a", "mp/b"]]
seen = []
for page in s3.get_paginator("list_multipart_uploads").paginate(
        Bucket=B, Prefix="mp/", PaginationConfig={"PageSize": 1}):
    assert len(page.get("Uploads", [])) <= 1, page
    seen += [(u["Key"], u["UploadId"]) for u in page.get("Uploads", [])]
assert seen == [("mp/a", ids[0]), ("mp/a", ids[1]), ("mp/b", ids[2])], (seen, ids)
after_a = s3.list_multipart_uploads(Bucket=B, Prefix="mp/", KeyMarker="mp/a")
assert [u["UploadId"] for u in after_a["Uploads"]] == [ids[2]], after_a
first = s3.list_multipart_uploads(Bucket=B, Prefix="mp/", MaxUploads=2)
assert first["IsTruncated"] and first["NextUploadIdMarker"] == ids[1], first
for k, i in zip(["mp/a", "mp/a", "mp/b"], ids):
    s3.abort_multipart_upload(Bucket=B, Key=k, UploadId=i)
# Content-MD5 on UploadPart: a mismatch stores no part.
up = s3.create_multipart_upload(Bucket=B, Key="md5-part")
fails("BadDigest", s3.upload_part, Bucket=B, Key="md5-part", UploadId=up["UploadId"],
      PartNumber=1, Body=b"part", ContentMD5=b64md5(b"not the part"))
assert s3.list_parts(Bucket=B, Key="md5-part", UploadId=up["UploadId"]).get("Parts", []) == []
s3.upload_part(Bucket=B, Key="md5-part", UploadId=up["UploadId"], PartNumber=1, Body=b"part",
               ContentMD5=b64md5(b"part"))
assert len(s3.list_parts(Bucket=B, Key="md5-part", UploadId=up["UploadId"])["Parts"]) == 1
s3.abort_multipart_upload(Bucket=B, Key="md5-part", UploadId=up["UploadId"])
# Abort.
up = s3.create_multipart_upload(Bucket=B, Key="aborted")
s3.upload_part(Bucket=B, Key="aborted", UploadId=up["UploadId"], PartNumber=1, Body=b"x")
s3.abort_multipart_upload(Bucket=B, Key="aborted", UploadId=up["UploadId"])
assert "Uploads" not in s3.list_multipart_uploads(Bucket=B) or \
    s3.list_multipart_uploads(Bucket=B)["Uploads"] == []
fails("InvalidPart", s3.complete_multipart_upload, Bucket=B, Key="aborted2",
      UploadId=s3.create_multipart_upload(Bucket=B, Key="aborted2")["UploadId"],
      MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"00000000000000000000000000000000"'}]})

# Presigned GET and PUT; an expired URL is refused.
url = s3.generate_presigned_url("get_object", Params={"Bucket": B, "Key": "dir/hello.txt"}, ExpiresIn=60)
assert urllib.request.urlopen(url).read() == body
put_url = s3.generate_presigned_url("put_object", Params={"Bucket": B, "Key": "presigned.txt"}, ExpiresIn=60)
req = urllib.request.Request(put_url, data=b"via presigned put", method="PUT")
assert urllib.request.urlopen(req).status == 200
assert s3.get_object(Bucket=B, Key="presigned.txt")["Body"].read() == b"via presigned put"
short = s3.generate_presigned_url("get_object", Params={"Bucket": B, "Key": "dir/hello.txt"}, ExpiresIn=1)
time.sleep(2.5)
try:
    urllib.request.urlopen(short)
    raise AssertionError("an expired presigned URL was accepted")
except urllib.error.HTTPError as e:
    assert e.code == 403, e.code

# Wrong secret: refused.
fails(403, client(secret="wrong" * 8).list_buckets)

# Hostile keys: clear 400s.
for key in ["bad\x00key", "k" * 2048, "../../etc/passwd", "a/./b"]:
    fails(400, s3.put_object, Bucket=B, Key=key, Body=b"x")

# A bucket with objects is not deleted; an empty one is.
fails("BucketNotEmpty", s3.delete_bucket, Bucket=B)
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=B):
    objs = [{"Key": o["Key"]} for o in page.get("Contents", [])]
    if objs:
        s3.delete_objects(Bucket=B, Delete={"Objects": objs})
for u in s3.list_multipart_uploads(Bucket=B).get("Uploads", []):
    s3.abort_multipart_upload(Bucket=B, Key=u["Key"], UploadId=u["UploadId"])
s3.delete_bucket(Bucket=B)
fails(404, s3.head_bucket, Bucket=B)

# Virtual-host style: <bucket>.<domain> names the bucket. The endpoint is http://localhost:<port>
# (the server's domain is `localhost`); names under .localhost are sent to the loopback address
# here, as browsers and systemd-resolved do, whatever this machine's resolver says.
import socket

_getaddrinfo = socket.getaddrinfo


def _loopback_localhost(host, *args, **kwargs):
    if isinstance(host, str) and host.endswith(".localhost"):
        host = "127.0.0.1"
    return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _loopback_localhost
URL = URL.replace("127.0.0.1", "localhost")
vh = client(style="virtual")
vh.create_bucket(Bucket="vhost-bucket")
vh.put_object(Bucket="vhost-bucket", Key="k", Body=b"virtual")
assert s3.get_object(Bucket="vhost-bucket", Key="k")["Body"].read() == b"virtual"
assert vh.get_object(Bucket="vhost-bucket", Key="k")["Body"].read() == b"virtual"

print("OK")
sys.stdout.flush()
