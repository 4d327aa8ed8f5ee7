"""Real parts for integration tests: a local Ray started once per session, MLflow on SQLite
per test, and an `mlflow server` on 127.0.0.1 for the tests that go over HTTP."""


import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session", autouse=True)
def ray_session(tmp_path_factory):
    import ray

    from orchestrator.runtime import ensure_ray
    from orchestrator.workspace import Workspace

    ensure_ray(Workspace(tmp_path_factory.mktemp("ray-home")))
    yield
    ray.shutdown()


from servers import _free_port, mlflow_server_at  # noqa: E402,F401  (other modules import them from here too)


@pytest.fixture
def mlflow_server(tmp_path):
    with mlflow_server_at(tmp_path) as url:
        yield url


@pytest.fixture
def s3_server(monkeypatch):
    """A real S3-compatible server (moto in server mode) on 127.0.0.1: (host, port)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never wait on a cloud metadata service
    yield server.get_host_and_port()
    server.stop()

