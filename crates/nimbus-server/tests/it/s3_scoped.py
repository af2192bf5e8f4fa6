"""S3 access scoping, driven by boto3: a `public` key (NIMBUS_PUBLIC_KEY / NIMBUS_PUBLIC_SECRET)
obeys the buckets' access settings (bucket `pub` is public-read, `priv` private); the per-key
rate limit answers SlowDown to the public key while the service key (AWS_ACCESS_KEY_ID) keeps
working. Prints OK at the end. Run by tests/it/s3.rs."""

import os

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

URL = os.environ["NIMBUS_S3_URL"]


def client(key, secret):
    return boto3.client("s3", endpoint_url=URL, region_name="us-east-1",
                        aws_access_key_id=key, aws_secret_access_key=secret,
                        config=Config(signature_version="s3v4", retries={"max_attempts": 1},
                                      s3={"addressing_style": "path"}))


def code(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except ClientError as e:
        return e.response["Error"].get("Code")
    return "ok"


public = client(os.environ["NIMBUS_PUBLIC_KEY"], os.environ["NIMBUS_PUBLIC_SECRET"])
service = client(os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])

assert public.get_object(Bucket="pub", Key="hello.txt")["Body"].read() == b"public bytes"
assert [o["Key"] for o in public.list_objects_v2(Bucket="pub")["Contents"]] == ["hello.txt"]
assert code(public.head_bucket, Bucket="pub") == "ok"
for fn, kwargs in [
    (public.get_object, {"Bucket": "priv", "Key": "secret.txt"}),
    (public.put_object, {"Bucket": "pub", "Key": "new.txt", "Body": b"x"}),
    (public.delete_object, {"Bucket": "pub", "Key": "hello.txt"}),
    (public.list_buckets, {}),
]:
    got = code(fn, **kwargs)
    assert got == "AccessDenied", (fn.__name__, got)
assert code(public.head_bucket, Bucket="priv") in ("403", "AccessDenied")
assert code(public.create_multipart_upload, Bucket="pub", Key="m") == "AccessDenied"
assert service.get_object(Bucket="pub", Key="hello.txt")["Body"].read() == b"public bytes"

# The rate limit: the public key's budget runs out, the service key's is its own.
# 80 GetObjects from 16 threads at once: far over 10 per second.
from concurrent.futures import ThreadPoolExecutor
with ThreadPoolExecutor(16) as pool:
    codes = list(pool.map(lambda _: code(public.get_object, Bucket="pub", Key="hello.txt"),
                          range(80)))
assert codes.count("SlowDown") >= 20, codes
assert set(codes) <= {"ok", "SlowDown"}, set(codes)
assert code(service.head_object, Bucket="pub", Key="hello.txt") == "ok"
print("OK", codes.count("SlowDown"))
