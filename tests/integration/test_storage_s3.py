"""storage.uri on S3: a real S3-compatible server (moto in server mode) on 127.0.0.1, a real cycle,
and pyarrow's S3 filesystem in between; no mock of any client."""

import json
import re

import pytest

from orchestrator import api
from orchestrator.storage import Storage

pytestmark = pytest.mark.integration


@pytest.fixture
def s3_uri(s3_server):
    host, port = s3_server
    # Credentials in the URI reach Ray Train's workers with the filesystem; moto accepts any.
    uri = f"s3://test:test@plaster-it/prod?endpoint_override=http://{host}:{port}&region=us-east-1"
    import pyarrow.fs as pafs

    fs, _ = pafs.FileSystem.from_uri(uri + "&allow_bucket_creation=true")
    fs.create_dir("plaster-it")
    return uri


def test_a_cycle_keeps_checkpoints_engines_and_its_record_in_s3(home, digits, s3_uri):
    yaml_file = digits / "pipeline.yaml"
    # Engines built as parallel Ray tasks: the tasks, in their own processes, write to the bucket too.
    # Two Ray Train workers, so the checkpoints come from worker processes.
    text = (re.sub(r"workers: auto.*", "workers: 2", yaml_file.read_text())
            .replace("epochs: 30", "epochs: 4\n  checkpoint_every: 2")
            .replace("build:\n", "build:\n  parallel: true\n"))
    yaml_file.write_text(text + f'\nstorage:\n  uri: "{s3_uri}"\n')
    api.simulate(digits, shards=4)
    rec = api.run_cycle(digits)
    assert rec["decision"] in ("PROMOTED", "REJECTED") and not rec.get("storage_errors")

    store = Storage(s3_uri, home)
    files = store.list("")
    cycle = f"cycles/digits/{rec['id']}"
    assert {f"{cycle}/record.json", f"{cycle}/checkpoint/weights.pt", f"{cycle}/variants/fp32.onnx"} <= set(files)
    # Ray Train's workers wrote their checkpoints (epochs 1 and 3) straight to the bucket.
    checkpoints = {f.split("/")[2] for f in files
                   if f.startswith(f"ray/digits-{rec['id']}/checkpoint_") and f.endswith("/state.pt")}
    assert len(checkpoints) == 2, files
    stored = store.get_file(f"{cycle}/record.json", home / "from-s3.json")
    assert stored and json.loads((home / "from-s3.json").read_text())["decision"] == rec["decision"]
    assert "test:test" not in store.describe("x"), "credentials never reach a message"

    # Another machine of the same hardware gets the engine from the bucket instead of building it.
    from orchestrator.artifacts import Variant, sha256_file
    from orchestrator.engines import backend
    from orchestrator.stages.build import BuildSpec, build_engine

    built = rec["stages"]["build"]["output"]["candidate"]
    assert {e["precision"] for e in built} == {"fp32", "fp16", "int8"}
    for e in built:
        assert f"engines/{e['cache_key'][:24]}/{e['precision']}.ort.onnx" in files
    engine = next(e for e in built if e["precision"] == "fp32")
    variant_file = home / "cycles" / "digits" / rec["id"] / "variants" / "fp32.onnx"
    other = BuildSpec(str(home / "other-machine-cache"), (1, 8, 8), 256, 64)
    fetched = build_engine(other, Storage(s3_uri, home), backend("onnxruntime"),
                           Variant("fp32", str(variant_file), sha256_file(variant_file)))
    assert fetched.cached and fetched.sha256 == engine["sha256"] and fetched.path.startswith(other.cache)
