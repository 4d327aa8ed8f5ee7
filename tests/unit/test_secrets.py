"""secrets.mask: passwords in URIs, secret query parameters and secret environment values become
`***` wherever plaster writes (records, MLflow, logs, errors); everything else stays as it was."""

import collections
import http.server
import io
import json
import logging
import pickle
import sys
import threading

import pytest

from orchestrator import record as records
from orchestrator import secrets
from orchestrator.errors import ConfigError, PlasterError, RegistryError
from orchestrator.secrets import mask, mask_obj

MASKED = [
    ("postgresql+psycopg2://mlflow:hunter2pass@db:5432/mlflow", "postgresql+psycopg2://mlflow:***@db:5432/mlflow"),
    ("mysql://root:Sup3r-secret@mysql.internal/mlflow", "mysql://root:***@mysql.internal/mlflow"),
    ("http://user:pw1234567@mlflow:5000", "http://user:***@mlflow:5000"),
    ("https://ci-bot:ghp_abcdef123456@mlflow.example.com/api", "https://ci-bot:***@mlflow.example.com/api"),
    ("s3://AKIAXXX:secretkey123@minio:9000/bucket", "s3://AKIAXXX:***@minio:9000/bucket"),
    # An AWS secret may hold '/' and '+'; the password runs to the '@' as SQLAlchemy reads it.
    ("s3://AKIAXXX:wJalr/K7MDENG+bPxRfi@bucket/prefix", "s3://AKIAXXX:***@bucket/prefix"),
    ("redis://:r3dis-pass@cache:6379/0", "redis://:***@cache:6379/0"),
    ("error: MLflow at http://plaster:Planted-S3cret-123@127.0.0.1:5000 failed",
     "error: MLflow at http://plaster:***@127.0.0.1:5000 failed"),
    ("'s3://k:abc%2Fdef@b/p?endpoint_override=http://m:9000'", "'s3://k:***@b/p?endpoint_override=http://m:9000'"),
    ("https://b.s3.amazonaws.com/k.onnx?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F20240101"
     "&X-Amz-Date=20240101T000000Z&X-Amz-Security-Token=FwoGZX&X-Amz-Signature=0f1e2d3c",
     "https://b.s3.amazonaws.com/k.onnx?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=***"
     "&X-Amz-Date=20240101T000000Z&X-Amz-Security-Token=***&X-Amz-Signature=***"),
    ("https://acct.blob.core.windows.net/c/f?sv=2022-11-02&sig=AbCd%2Bef",
     "https://acct.blob.core.windows.net/c/f?sv=2022-11-02&sig=***"),
    ("http://h/api?access_token=abc.def&page=2", "http://h/api?access_token=***&page=2"),
    ("db?user=mlflow&password=hunter2&apikey=xyz", "db?user=mlflow&password=***&apikey=***"),
]

UNCHANGED = [
    "sqlite:////home/me/.plaster/mlflow.db",
    "sqlite:///relative/mlflow.db",
    "http://127.0.0.1:5000",
    "http://mlflow.internal:5000/#/experiments/1/runs/abc",
    "https://mlflow.example.com/api/2.0/mlflow/runs/get?run_id=abc123",
    "s3://bucket/prefix?endpoint_override=http://127.0.0.1:9000&region=us-east-1",
    "file:///tmp/mlartifacts/digits",
    "/home/me/.plaster/cycles/digits/20240101-000000-abcdef/record.json",
    "/data/user:group@host",  # a path, not a URI
    "ssh://git@github.com/org/repo.git",  # a user alone is no secret
    "contact mlflow:5000 or ops@example.com",
    "?design=a&keyboard=us&signed=yes",  # names that only contain a secret word
    "PROMOTED v2: accuracy_min.golden: PASS (0.951 >= 0.9)",
    "",
]


@pytest.mark.parametrize("text,want", MASKED)
def test_passwords_in_uris_and_secret_query_parameters_are_masked(text, want):
    assert mask(text) == want
    assert mask(want) == want, "masking twice changes nothing"


@pytest.mark.parametrize("text", UNCHANGED)
def test_text_without_secrets_is_left_as_it_is(text):
    assert mask(text) == text


def test_secret_environment_values_are_masked_wherever_they_appear(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "Planted-Aws-Key-456")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "tok-ray-0123456789")
    monkeypatch.setenv("ACME_WEBHOOK_SECRET", "whsec/Plus+Slash")  # the suffix rule, not the list
    monkeypatch.setenv("MINIO_ROOT_PASSWORD", "abc")  # too short to mask without masking words
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/etc/gcp/key.json")  # a path, not the key
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAPUBLICID")  # an identifier, not a secret
    text = ("key=Planted-Aws-Key-456 token Bearer tok-ray-0123456789 hook whsec/Plus+Slash "
            "in a URI s3://AKIAPUBLICID:whsec%2FPlus%2BSlash@b/p; abc; creds /etc/gcp/key.json")
    assert mask(text) == ("key=*** token Bearer *** hook *** in a URI s3://AKIAPUBLICID:***@b/p; abc; "
                          "creds /etc/gcp/key.json")
    # Read at call time: a variable set later is masked too, one removed is not.
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "dapi-later-set-1")
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    assert mask("dapi-later-set-1 tok-ray-0123456789") == "*** tok-ray-0123456789"


def test_mask_obj_walks_nested_structures_and_keeps_other_values():
    Pair = collections.namedtuple("Pair", "uri n")
    obj = {"tracking_uri": "http://u:pw1234567@h:5000", "n": 3, "ok": True, "none": None, "x": 0.5,
           "stages": [{"error": ("MLflow at mysql://r:Sup3r-secret@m/db down", 7)}, Pair("redis://:r3dis-pass@c", 1)],
           "http://k:key-in-a-key@h": "value"}
    got = mask_obj(obj)
    assert got == {"tracking_uri": "http://u:***@h:5000", "n": 3, "ok": True, "none": None, "x": 0.5,
                   "stages": [{"error": ("MLflow at mysql://r:***@m/db down", 7)}, Pair("redis://:***@c", 1)],
                   "http://k:***@h": "value"}
    assert isinstance(got["stages"][1], Pair) and isinstance(got["stages"][0]["error"], tuple)
    assert obj["tracking_uri"] == "http://u:pw1234567@h:5000", "the original is not touched"


@pytest.fixture
def clean_logging():
    """install() changes process-wide logging state: give it back after the test."""
    factory, hook = logging.getLogRecordFactory(), sys.excepthook
    loggers = [logging.getLogger(n) for n in ("", *secrets.LOGGERS)]
    saved = [(lg, list(lg.filters), list(lg.handlers)) for lg in loggers]
    yield
    logging.setLogRecordFactory(factory)
    sys.excepthook = hook
    for lg, filters, handlers in saved:
        lg.filters = filters
        for h in handlers:
            h.removeFilter(secrets._FILTER)


def _capture(name: str) -> tuple[logging.Logger, io.StringIO]:
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    lg = logging.getLogger(name)
    lg.handlers, lg.propagate = [handler], False
    lg.setLevel(logging.INFO)
    return lg, buf


def test_the_filter_masks_messages_args_and_tracebacks():
    lg, buf = _capture("plaster.test_filter")
    lg.handlers[0].addFilter(secrets.MaskFilter())
    lg.warning("could not copy the cycle to %s: %s", "s3://k:secretkey123@b/p", "denied")
    try:
        raise RuntimeError("API request to http://plaster:Planted-S3cret-123@127.0.0.1:5000/api failed")
    except RuntimeError:
        lg.exception("mirroring failed")
    out = buf.getvalue()
    assert "secretkey123" not in out and "Planted-S3cret-123" not in out
    assert "s3://k:***@b/p: denied" in out and "http://plaster:***@127.0.0.1:5000/api" in out
    assert "Traceback" in out, "the traceback is kept, masked"


def test_install_masks_every_logger_even_with_handlers_set_after_it(clean_logging):
    secrets.install()
    secrets.install()  # idempotent: one factory, one filter each
    assert logging.getLogger("plaster").filters.count(secrets._FILTER) == 1
    # runtime.py gives Ray's loggers their own file handler after the workspace installed masking,
    # and records of a child logger never pass the parent logger's filters: still masked.
    lg, buf = _capture("ray.train._internal.test")
    lg.warning("storage %s", "s3://AKIAXXX:secretkey123@minio:9000/bucket")
    mlflow_lg, mlflow_buf = _capture("mlflow.store.test")
    mlflow_lg.warning("API request to %s failed", "http://user:pw1234567@mlflow:5000/api/2.0")
    assert buf.getvalue() == "ray.train._internal.test storage s3://AKIAXXX:***@minio:9000/bucket\n"
    assert mlflow_buf.getvalue() == "mlflow.store.test API request to http://user:***@mlflow:5000/api/2.0 failed\n"


def test_an_uncaught_error_prints_its_traceback_masked(clean_logging, capsys):
    secrets.install()
    try:
        raise ValueError("cannot open mysql://root:Sup3r-secret@db/mlflow")
    except ValueError:
        sys.excepthook(*sys.exc_info())
    err = capsys.readouterr().err
    assert "Sup3r-secret" not in err and "ValueError: cannot open mysql://root:***@db/mlflow" in err


def test_errors_are_masked_when_made_and_stay_picklable():
    e = RegistryError("MLflow at http://plaster:Planted-S3cret-123@127.0.0.1:5000 failed to read digits@champion")
    assert "Planted-S3cret-123" not in str(e) and "Planted-S3cret-123" not in repr(e)
    assert e.args == ("MLflow at http://plaster:***@127.0.0.1:5000 failed to read digits@champion",)
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is RegistryError and str(back) == str(e)
    assert isinstance(PlasterError("x"), Exception) and ConfigError("no uri").args == ("no uri",)


def test_storage_errors_name_the_store_without_its_credentials(tmp_path):
    from orchestrator.storage import Storage

    store = Storage("s3://AKIAXXX:secretkey123@plaster-it/prod?no_such_option=1", tmp_path)
    assert store.describe("cycles/x") == "s3://plaster-it/prod/cycles/x"
    with pytest.raises(ConfigError) as caught:
        store._open()  # pyarrow refuses the option; the message quotes the URI
    assert "secretkey123" not in str(caught.value) and "'s3://AKIAXXX:***@plaster-it/prod?no_such" in str(caught.value)


def test_a_saved_record_is_masked_on_disk_only(home, monkeypatch):
    from orchestrator.workspace import Workspace

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "Planted-Aws-Key-456")
    ws = Workspace.from_env()
    rec = {"id": "c1", "pipeline": "digits", "tracking_uri": "http://plaster:Planted-S3cret-123@127.0.0.1:5000",
           "error": {"message": "denied with key Planted-Aws-Key-456"}, "stages": {}, "path": home / "x"}
    text = records.save(ws, rec).read_text()
    assert "Planted" not in text
    on_disk = json.loads(text)
    assert on_disk["tracking_uri"] == "http://plaster:***@127.0.0.1:5000"
    assert on_disk["error"]["message"] == "denied with key ***" and on_disk["path"] == str(home / "x")
    assert rec["tracking_uri"] == "http://plaster:Planted-S3cret-123@127.0.0.1:5000", "the cycle keeps its URI"


def test_a_ledger_entry_is_masked(home):
    from orchestrator import ledger
    from orchestrator.workspace import Workspace

    ws = Workspace.from_env()
    entry = ledger.record(ws, "digits", "champion", "2", "1", ledger.ROLLBACK,
                          "v2 failed on http://ops:pw1234567@grafana:3000/d/x", who="me")
    assert entry["reason"] == "v2 failed on http://ops:***@grafana:3000/d/x"
    assert "pw1234567" not in ledger.path(ws, "digits").read_text()
    assert ledger.load(ws, "digits")[-1]["reason"] == entry["reason"]


def test_mlflow_params_tags_and_logged_text_files_are_masked(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from orchestrator.registry import MlflowRegistry

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "Planted-Aws-Key-456")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    reg = MlflowRegistry(uri, tmp_path / "art")
    run_id = reg.start_run("digits", "r1", {"plaster.source": "s3://k:secretkey123@b/p"})
    reg.log_params(run_id, {"cfg.storage": {"uri": "s3://k:secretkey123@b/p", "shared": False},
                            "long": "x" * 5985 + " http://u:pw1234567@h"})  # 6000 masked
    reg.set_tags(run_id, {"plaster.reasons": "key Planted-Aws-Key-456 refused"})
    folder = tmp_path / "scorecard"
    folder.mkdir()
    (folder / "scorecard.json").write_text(json.dumps({"where": "http://u:pw1234567@h:5000"}))
    (folder / "weights.bin").write_bytes(b"\x00\xffPlanted-Aws-Key-456")  # binary: uploaded as it is
    reg.log_artifacts(run_id, folder, "scorecard")
    note = tmp_path / "note.md"
    note.write_text("# from mysql://root:Sup3r-secret@db/mlflow\n")
    reg.log_file(run_id, note, None)

    data = MlflowClient(tracking_uri=uri).get_run(run_id).data
    assert data.params["cfg.storage"] == "{'uri': 's3://k:***@b/p', 'shared': False}"
    assert "pw1234567" not in data.params["long"] and data.params["long"].endswith("http://u:***@h")
    assert data.tags["plaster.reasons"] == "key *** refused" and data.tags["plaster.source"] == "s3://k:***@b/p"
    stored = tmp_path / "art" / "digits"
    assert json.loads(next(stored.rglob("scorecard.json")).read_text()) == {"where": "http://u:***@h:5000"}
    assert next(stored.rglob("note.md")).read_text() == "# from mysql://root:***@db/mlflow\n"
    assert next(stored.rglob("weights.bin")).read_bytes() == b"\x00\xffPlanted-Aws-Key-456"
    assert "pw1234567" in (folder / "scorecard.json").read_text(), "the local file stays as its writer left it"


def test_read_aliases_sends_the_uri_userinfo_as_basic_auth():
    from orchestrator.registry import read_aliases

    seen = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen["auth"], seen["path"] = self.headers.get("Authorization"), self.path
            body = json.dumps({"registered_model": {"aliases": [{"alias": "champion", "version": "3"}]}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        assert read_aliases(f"http://plaster:Planted%40S3cret@127.0.0.1:{port}", "digits") == {"champion": "3"}
    finally:
        server.shutdown()
    import base64

    assert seen["auth"] == "Basic " + base64.b64encode(b"plaster:Planted@S3cret").decode()
    assert seen["path"].startswith("/api/2.0/mlflow/registered-models/get?name=digits")
